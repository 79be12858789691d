//! EasyLM's `fields` interpreter (`EasyLM/data.py`, `TextProcessor.__call__`), so that data
//! exported with an original EasyLM spec gives identical tokens.
//!
//! Rules, as in EasyLM:
//! - the spec is split on `,` into fields; a field in `[...]` has loss mask 0, otherwise 1;
//! - `<|bos|>`, `<|eos|>` and `<|N|>` (a literal id) are one special token each;
//! - any other field is a `+`-separated list of keys of the example, whose texts are joined with
//!   `subfield_separator` (default `' '`) and tokenised on their own, with no BOS/EOS;
//! - `prepend_text` goes before the text of field 0 only (and only when field 0 is text);
//! - `add_bos_token` (default true) puts a BOS with mask 0 first; `add_eos_token` (default true)
//!   puts an EOS with mask 1 last.
//!
//! `{key}` fields (base64 raw tokens) are not supported and make the example unrenderable.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::conversation::{Preference, Role, Turn};
use crate::{KoalaFormat, Piece, Special, Unrenderable};

/// An EasyLM `text_processor` configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldsSpec {
    /// The fields spec, for example `[marker_user+human_0+marker_gpt],gpt_1,<|eos|>`.
    pub fields: String,
    /// When non-empty, read the spec from this key of each example instead (EasyLM's
    /// `fields_from_example`; the Koala data uses `fields`).
    pub fields_from_example: String,
    pub subfield_separator: String,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
    pub prepend_text: String,
}

impl Default for FieldsSpec {
    fn default() -> Self {
        FieldsSpec {
            fields: String::new(),
            fields_from_example: String::new(),
            subfield_separator: " ".into(),
            add_bos_token: true,
            add_eos_token: true,
            prepend_text: String::new(),
        }
    }
}

impl FieldsSpec {
    /// Interprets the spec on one example (a JSON object of text fields).
    pub fn render(&self, example: &Map<String, Value>) -> Result<Vec<Piece>, Unrenderable> {
        let spec: &str = if self.fields_from_example.is_empty() {
            &self.fields
        } else {
            example
                .get(&self.fields_from_example)
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Unrenderable::new(
                        "missing_field",
                        format!(
                            "no string key `{}` in the example",
                            self.fields_from_example
                        ),
                    )
                })?
        };
        if spec.is_empty() {
            return Err(Unrenderable::new("missing_field", "empty fields spec"));
        }
        let mut out = Vec::new();
        if self.add_bos_token {
            out.push(Piece::Special {
                token: Special::Bos,
                loss: false,
            });
        }
        for (i, field) in spec.split(',').enumerate() {
            let (field, loss) = match field.strip_prefix('[').and_then(|f| f.strip_suffix(']')) {
                Some(inner) => (inner, false),
                None => (field, true),
            };
            if let Some(name) = field.strip_prefix("<|").and_then(|f| f.strip_suffix("|>")) {
                let token = match name {
                    "bos" => Special::Bos,
                    "eos" => Special::Eos,
                    n => Special::Id(n.parse().map_err(|_| {
                        Unrenderable::new("bad_fields_spec", format!("`<|{n}|>` is not a token id"))
                    })?),
                };
                out.push(Piece::Special { token, loss });
            } else if field.starts_with('{') && field.ends_with('}') {
                return Err(Unrenderable::new(
                    "bad_fields_spec",
                    format!("base64 raw-token field `{field}` is not supported"),
                ));
            } else {
                let mut text = String::new();
                if i == 0 {
                    text.push_str(&self.prepend_text);
                }
                for (k, key) in field.split('+').enumerate() {
                    if k > 0 {
                        text.push_str(&self.subfield_separator);
                    }
                    let v = example.get(key).and_then(Value::as_str).ok_or_else(|| {
                        Unrenderable::new(
                            "missing_field",
                            format!("no string key `{key}` in the example"),
                        )
                    })?;
                    text.push_str(v);
                }
                out.push(Piece::Text { text, loss });
            }
        }
        if self.add_eos_token {
            out.push(Piece::Special {
                token: Special::Eos,
                loss: true,
            });
        }
        Ok(out)
    }
}

/// Exports turns as the Koala data pipeline's JSONL record (`marker_*`, `human_K`, `gpt_K` /
/// `gpt_bad_K`, `system_K`, `fields`), K being the turn's position, with the same field layout as
/// the curation stage's export: a user turn answered by the next turn is
/// `[marker_user+human_K+marker_gpt(_bad)]`, an unanswered one `[marker_user+human_K]`, an assistant
/// turn with no user turn before it gets `[marker_gpt(_bad)]`, a system turn `[system_K]`.
pub fn koala_example(turns: &[Turn], f: &KoalaFormat) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("marker_user".into(), f.user_marker.clone().into());
    m.insert("marker_gpt".into(), f.gpt_marker.clone().into());
    m.insert("marker_gpt_bad".into(), f.gpt_bad_marker.clone().into());
    let marker_key = |t: &Turn| match t.preference {
        Preference::Negative => "marker_gpt_bad",
        _ => "marker_gpt",
    };
    let mut fields: Vec<String> = Vec::new();
    for (i, t) in turns.iter().enumerate() {
        match t.role {
            Role::System => {
                let key = format!("system_{i}");
                m.insert(key.clone(), t.text.clone().into());
                fields.push(format!("[{key}]"));
            }
            Role::User => {
                let key = format!("human_{i}");
                m.insert(key.clone(), t.text.clone().into());
                match turns.get(i + 1).filter(|n| n.role == Role::Assistant) {
                    Some(next) => fields.push(format!("[marker_user+{key}+{}]", marker_key(next))),
                    None => fields.push(format!("[marker_user+{key}]")),
                }
            }
            Role::Assistant => {
                let data = match t.preference {
                    Preference::Negative => "gpt_bad",
                    _ => "gpt",
                };
                let key = format!("{data}_{i}");
                m.insert(key.clone(), t.text.clone().into());
                if i == 0 || turns[i - 1].role != Role::User {
                    fields.push(format!("[{}]", marker_key(t)));
                }
                fields.push(key);
                fields.push("<|eos|>".into());
            }
        }
    }
    m.insert("fields".into(), fields.join(",").into());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render_text;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// The example of EasyLM's docs/dataset.md: `[question+prompt],answer`.
    #[test]
    fn docs_example() {
        let ex = obj(json!({
            "question": "Would ice float on water?",
            "prompt": "Think step by step.",
            "answer": "The density of ice is 0.92 g/cm3, and the density of water is 1.0 g/cm3. So ice will float on water.",
        }));
        let spec = FieldsSpec {
            fields: "[question+prompt],answer".into(),
            ..FieldsSpec::default()
        };
        let p = spec.render(&ex).unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Special {
                    token: Special::Bos,
                    loss: false
                },
                Piece::prompt("Would ice float on water? Think step by step."),
                Piece::target(
                    "The density of ice is 0.92 g/cm3, and the density of water is 1.0 g/cm3. So ice will float on water."
                ),
                Piece::Special {
                    token: Special::Eos,
                    loss: true
                },
            ]
        );
    }

    #[test]
    fn specials_ids_and_prepend_only_on_field_zero() {
        let ex = obj(json!({"a": "x", "b": "y"}));
        let spec = FieldsSpec {
            fields: "a,[<|bos|>],<|7|>,[b+a],<|eos|>".into(),
            add_bos_token: false,
            add_eos_token: false,
            prepend_text: "P: ".into(),
            subfield_separator: "-".into(),
            ..FieldsSpec::default()
        };
        let p = spec.render(&ex).unwrap();
        assert_eq!(
            p,
            vec![
                Piece::target("P: x"),
                Piece::Special {
                    token: Special::Bos,
                    loss: false
                },
                Piece::Special {
                    token: Special::Id(7),
                    loss: true
                },
                Piece::prompt("y-x"),
                Piece::Special {
                    token: Special::Eos,
                    loss: true
                },
            ]
        );
        // prepend_text does not go on a special field 0, nor on a later field.
        let spec = FieldsSpec {
            fields: "<|eos|>,a".into(),
            ..spec
        };
        assert_eq!(spec.render(&ex).unwrap()[1], Piece::target("x"));
    }

    #[test]
    fn missing_key_and_base64_are_unrenderable() {
        let ex = obj(json!({"a": "x"}));
        let spec = FieldsSpec {
            fields: "a,zz".into(),
            ..FieldsSpec::default()
        };
        assert_eq!(spec.render(&ex).unwrap_err().reason, "missing_field");
        let spec = FieldsSpec {
            fields: "{a}".into(),
            ..FieldsSpec::default()
        };
        assert_eq!(spec.render(&ex).unwrap_err().reason, "bad_fields_spec");
    }

    /// The record layout of koala_data_pipeline (`create_hf_data_v2.py`), read back through
    /// `fields_from_example`, renders the same bytes as the Koala format.
    #[test]
    fn koala_export_round_trips_through_fields() {
        let turns = [
            Turn::user("Hi"),
            Turn::assistant("Hello!"),
            Turn::user("Bye"),
            Turn::assistant_with("Whatever.", Preference::Negative),
        ];
        let odd = [
            Turn::system("Be brief."),
            Turn::user("a"),
            Turn::user("b"),
            Turn::assistant("c"),
            Turn::assistant_with("d", Preference::Negative),
        ];
        let kf = KoalaFormat::default();
        let ex = koala_example(&turns, &kf);
        assert_eq!(
            ex["fields"],
            "[marker_user+human_0+marker_gpt],gpt_1,<|eos|>,[marker_user+human_2+marker_gpt_bad],gpt_bad_3,<|eos|>"
        );
        let spec = FieldsSpec {
            fields_from_example: "fields".into(),
            prepend_text: kf.prepend_text.clone(),
            add_eos_token: false,
            ..FieldsSpec::default()
        };
        let via_fields = spec.render(&ex).unwrap();
        assert_eq!(via_fields, kf.render(&turns).unwrap());
        // The layout of the curation stage's export test (`system_and_unanswered_turns`).
        let ex_odd = koala_example(&odd, &kf);
        assert_eq!(
            ex_odd["fields"],
            "[system_0],[marker_user+human_1],[marker_user+human_2+marker_gpt],gpt_3,<|eos|>,[marker_gpt_bad],gpt_bad_4,<|eos|>"
        );
        assert_eq!(spec.render(&ex_odd).unwrap(), kf.render(&odd).unwrap());
        assert_eq!(
            render_text(&via_fields, "<s>", "</s>"),
            "<s>BEGINNING OF CONVERSATION: USER: Hi GPT:Hello!</s>USER: Bye An Unhelpful Answer:Whatever.</s>"
        );
    }
}
