//! The OpenAI wire format: request bodies (parsed with the failing field's path in the error),
//! their validation, response and stream-chunk bodies, and OpenAI's error JSON.
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// An error as OpenAI sends it: an HTTP status and `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for 503 (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400 `invalid_request_error` naming the field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: (!param.is_empty()).then_some(param),
            code: None,
            retry_after: None,
        }
    }
    /// 404 for a model this server does not serve.
    pub fn unknown_model(name: &str, have: &[String]) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{name}` does not exist. This server serves: {}",
                have.join(", ")
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }
    /// 401 for a missing or wrong bearer token.
    pub fn unauthorized(message: &str) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }
    /// 503 with `Retry-After` when the generation queue is full.
    pub fn overloaded(message: String) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
            kind: "server_error",
            param: None,
            code: Some("overloaded"),
            retry_after: Some(1),
        }
    }
    /// 500.
    pub fn internal(message: String) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }
    /// Any status with a message (404 routes, 405, 413).
    pub fn status(status: StatusCode, message: String) -> Self {
        ApiError {
            status,
            message,
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// `stop`: a string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens` in chat requests.
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Our extension (EasyLM serves with top_k 50).
    pub top_k: Option<u64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// One chat message. `content` may be a string or a list of `{type: "text", text}` parts.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// Read from the same body by [`parse_with_sampling`] (not flattened: serde's `flatten`
    /// would lose the failing field's path).
    #[serde(skip)]
    pub sampling: Sampling,
}

/// `prompt`: a string, a list with one string, or token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    /// Read from the same body by [`parse_with_sampling`].
    #[serde(skip)]
    pub sampling: Sampling,
    #[serde(default)]
    pub echo: bool,
}

/// `POST /v1/moderations`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModerationRequest {
    pub input: ModerationInput,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModerationInput {
    One(String),
    Many(Vec<String>),
}

/// Parses a JSON body; a type error names the field's path (`messages[0].content`).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "",
            "the request body is empty; send JSON",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(path_error)
}

/// A request type that carries [`Sampling`] fields beside its own.
pub trait WithSampling: serde::de::DeserializeOwned {
    fn set_sampling(&mut self, s: Sampling);
}

impl WithSampling for ChatRequest {
    fn set_sampling(&mut self, s: Sampling) {
        self.sampling = s;
    }
}

impl WithSampling for CompletionRequest {
    fn set_sampling(&mut self, s: Sampling) {
        self.sampling = s;
    }
}

/// Parses a request and its sampling fields from one body, naming the failing field.
pub fn parse_with_sampling<T: WithSampling>(body: &[u8]) -> Result<T, ApiError> {
    let v: Value = parse(body)?;
    if !v.is_object() {
        return Err(ApiError::invalid(
            "",
            "the request body must be a JSON object",
        ));
    }
    let mut t: T = serde_path_to_error::deserialize(&v).map_err(path_error)?;
    let s: Sampling = serde_path_to_error::deserialize(&v).map_err(path_error)?;
    t.set_sampling(s);
    Ok(t)
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = inner.to_string();
    // serde's "missing field `x`" is reported at the parent path.
    let param = if let Some(f) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        if path == "." {
            f.to_string()
        } else {
            format!("{path}.{f}")
        }
    } else if path == "." {
        String::new()
    } else {
        path
    };
    let what = if inner.is_syntax() || inner.is_eof() {
        format!("the request body is not valid JSON: {msg}")
    } else if param.is_empty() {
        format!("invalid request body: {msg}")
    } else {
        format!("invalid value for `{param}`: {msg}")
    };
    ApiError::invalid(param, what)
}

/// Sampling settings after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOPS: usize = 4;

impl Sampling {
    /// Validates every field, naming the first bad one. `default_temperature` is OpenAI's 1.0.
    pub fn check(&self) -> Result<Checked, ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(
                "n",
                format!("n must be 1 (this server returns one choice per request), got {n}"),
            ));
        }
        let max_tokens = match (self.max_tokens, self.max_completion_tokens) {
            (Some(a), _) | (None, Some(a)) => {
                if a == 0 {
                    let field = if self.max_tokens.is_some() {
                        "max_tokens"
                    } else {
                        "max_completion_tokens"
                    };
                    return Err(ApiError::invalid(
                        field,
                        format!("{field} must be at least 1"),
                    ));
                }
                Some(a as usize)
            }
            (None, None) => None,
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                "stop",
                format!("at most {MAX_STOPS} stop sequences, got {}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "a stop sequence is empty"));
        }
        let seed = self.seed.map(|s| s as u64);
        Ok(Checked {
            max_tokens,
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k: self.top_k.unwrap_or(0) as usize,
            stop,
            seed,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

impl Message {
    /// The message's text (a string, or its text parts joined).
    pub fn text(&self, i: usize) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(s)) => Ok(s.clone()),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for (j, p) in parts.iter().enumerate() {
                    if p.kind != "text" {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}].type"),
                            format!("only text content is supported, got `{}`", p.kind),
                        ));
                    }
                    s.push_str(p.text.as_deref().unwrap_or(""));
                }
                Ok(s)
            }
        }
    }
}

/// Token counts of a response.
pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_name_the_field() {
        let e = parse_with_sampling::<ChatRequest>(
            br#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
        let e = parse_with_sampling::<ChatRequest>(
            br#"{"model":"m","messages":[], "temperature":"hot"}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"), "{e:?}");
        let e = parse_with_sampling::<ChatRequest>(br#"{"messages":[]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"), "{e:?}");
        let e = parse_with_sampling::<ChatRequest>(br#"{"model": "m", "#).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{e:?}");
    }

    #[test]
    fn sampling_ranges_are_checked() {
        let bad = |s: Sampling, field: &str| {
            assert_eq!(s.check().unwrap_err().param.as_deref(), Some(field));
        };
        bad(
            Sampling {
                n: Some(2),
                ..Default::default()
            },
            "n",
        );
        bad(
            Sampling {
                temperature: Some(2.5),
                ..Default::default()
            },
            "temperature",
        );
        bad(
            Sampling {
                top_p: Some(0.0),
                ..Default::default()
            },
            "top_p",
        );
        bad(
            Sampling {
                max_tokens: Some(0),
                ..Default::default()
            },
            "max_tokens",
        );
        bad(
            Sampling {
                stop: Some(Stop::Many(vec!["a".into(); 5])),
                ..Default::default()
            },
            "stop",
        );
        let ok = Sampling {
            stop: Some(Stop::One("\n".into())),
            n: Some(1),
            ..Default::default()
        }
        .check()
        .unwrap();
        assert_eq!(ok.stop, vec!["\n".to_string()]);
        assert_eq!(ok.temperature, 1.0);
    }
}
