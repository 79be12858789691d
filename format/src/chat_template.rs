//! Hugging Face chat templates: the Jinja `chat_template` of a model's `tokenizer_config.json`,
//! rendered with minijinja the way `transformers` renders it (`trim_blocks`, `lstrip_blocks`,
//! loop controls, `raise_exception`, the common Python string/dict methods).
//!
//! Loss masks come from incremental rendering: for message *i* the text added by rendering
//! messages `..=i` over messages `..i` (with `add_generation_prompt=true` before an assistant turn)
//! is that message's span. Assistant spans (content and the template's end-of-turn text, such as
//! `</s>` or `<|im_end|>\n`) carry loss; everything else is masked. A template whose renderings are
//! not prefixes of each other cannot be masked this way, and the conversation is skipped
//! (`template_not_incremental`). Special tokens appear as text (`<s>`, `<|im_start|>`) and are
//! turned into their ids by the tokenizer's added-token matching.
use std::path::Path;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, State};
use serde::Serialize;

use crate::conversation::{Preference, Role, Turn};
use crate::error::{Error, Result};
use crate::{Piece, Unrenderable};

/// A compiled chat template with the special-token strings it refers to.
#[derive(Clone, Debug)]
pub struct ChatTemplateFormat {
    env: Environment<'static>,
    /// `bos_token` as the template sees it.
    pub bos_token: String,
    /// `eos_token` as the template sees it.
    pub eos_token: String,
    /// The template source (kept for the manifest's hash).
    pub source: String,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

/// The `messages` a template sees: `role` and `content` of each turn.
fn messages(turns: &[Turn]) -> Vec<Message<'_>> {
    turns
        .iter()
        .map(|t| Message {
            role: t.role.as_str(),
            content: &t.text,
        })
        .collect()
}

fn token_string(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(m)) => m
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// Python `str` and `dict` methods that HF templates call (`.strip()`, `.items()`, …).
fn py_methods(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, JinjaError> {
    let arg_str = |i: usize| args.get(i).and_then(|a| a.as_str().map(str::to_string));
    if let Some(s) = value.as_str() {
        let chars: Option<Vec<char>> = arg_str(0).map(|c| c.chars().collect());
        let is_strip = |c: char| match &chars {
            Some(set) => set.contains(&c),
            None => c.is_whitespace(),
        };
        let out: Value = match method {
            "strip" => s.trim_matches(is_strip).into(),
            "lstrip" => s.trim_start_matches(is_strip).into(),
            "rstrip" => s.trim_end_matches(is_strip).into(),
            "upper" => s.to_uppercase().into(),
            "lower" => s.to_lowercase().into(),
            "startswith" => s
                .starts_with(arg_str(0).unwrap_or_default().as_str())
                .into(),
            "endswith" => s.ends_with(arg_str(0).unwrap_or_default().as_str()).into(),
            "replace" => s
                .replace(
                    arg_str(0).unwrap_or_default().as_str(),
                    arg_str(1).unwrap_or_default().as_str(),
                )
                .into(),
            "split" => match arg_str(0) {
                Some(sep) => Value::from(
                    s.split(sep.as_str())
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                ),
                None => Value::from(s.split_whitespace().map(str::to_string).collect::<Vec<_>>()),
            },
            "capitalize" => {
                let mut c = s.chars();
                match c.next() {
                    Some(f) => format!("{}{}", f.to_uppercase(), c.as_str().to_lowercase()).into(),
                    None => "".into(),
                }
            }
            _ => return Err(JinjaError::from(ErrorKind::UnknownMethod)),
        };
        return Ok(out);
    }
    if value.kind() == ValueKind::Map {
        match method {
            "items" => {
                let mut v = Vec::new();
                for k in value.try_iter()? {
                    let item = value.get_item(&k)?;
                    v.push(Value::from(vec![k, item]));
                }
                return Ok(Value::from(v));
            }
            "keys" => return Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let mut v = Vec::new();
                for k in value.try_iter()? {
                    v.push(value.get_item(&k)?);
                }
                return Ok(Value::from(v));
            }
            "get" => {
                let key = args.first().cloned().unwrap_or_default();
                let item = value.get_item(&key)?;
                return Ok(if item.is_undefined() {
                    args.get(1).cloned().unwrap_or_default()
                } else {
                    item
                });
            }
            _ => {}
        }
    }
    Err(JinjaError::from(ErrorKind::UnknownMethod))
}

impl ChatTemplateFormat {
    /// Compiles a template with the given special-token strings.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(py_methods);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(format!("{e:#}")))?;
        Ok(ChatTemplateFormat {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            source: source.into(),
        })
    }

    /// Reads `chat_template`, `bos_token` and `eos_token` from a `tokenizer_config.json`. A
    /// template list (`[{name, template}]`) uses the one named `default`.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Record {
            file: path.display().to_string(),
            line: e.line() as u64,
            field: "(json)".into(),
            message: e.to_string(),
        })?;
        let bad = |m: &str| Error::Record {
            file: path.display().to_string(),
            line: 1,
            field: "chat_template".into(),
            message: m.into(),
        };
        let template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| bad("no template named `default` in the list"))?
                .to_string(),
            _ => return Err(bad("missing (or not a string or a list)")),
        };
        Self::new(
            &template,
            &token_string(cfg.get("bos_token")),
            &token_string(cfg.get("eos_token")),
        )
    }

    fn render_messages(
        &self,
        msgs: &[Message<'_>],
        add_generation_prompt: bool,
    ) -> std::result::Result<String, Unrenderable> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Unrenderable::new("template_error", format!("{e:#}")))?;
        tmpl.render(minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| Unrenderable::new("template_error", format!("{e:#}")))
    }

    /// Renders a whole conversation into masked and trained pieces.
    pub fn render(&self, turns: &[Turn]) -> std::result::Result<Vec<Piece>, Unrenderable> {
        if turns
            .iter()
            .any(|t| t.role == Role::Assistant && t.preference == Preference::Negative)
        {
            return Err(Unrenderable::new(
                "negative_preference",
                "a chat template has no marker for a negative answer",
            ));
        }
        self.incremental(&messages(turns), turns)
    }

    /// The prompt for the next answer: the template rendered with `add_generation_prompt=true`,
    /// the bytes of `transformers`' `apply_chat_template(messages, add_generation_prompt=True)`.
    /// All pieces are masked; they split where [`ChatTemplateFormat::render`] splits (so each
    /// piece tokenises as in training) when the template renders incrementally, and are one
    /// piece otherwise (for example a template that drops past reasoning). A past negative answer
    /// is rendered as any other answer: the template has no marker for it.
    pub fn generation_prompt(
        &self,
        turns: &[Turn],
    ) -> std::result::Result<Vec<Piece>, Unrenderable> {
        let msgs = messages(turns);
        let full = self.render_messages(&msgs, true)?;
        let mut out = self.incremental(&msgs, turns).unwrap_or_default();
        let done: String = out.iter().map(Piece::text).collect();
        match full.strip_prefix(done.as_str()) {
            // The assistant header joins a masked piece before it, as in training.
            Some(rest) => match out.last_mut() {
                _ if rest.is_empty() => {}
                Some(Piece::Text { text, loss: false }) => text.push_str(rest),
                _ => out.push(Piece::prompt(rest)),
            },
            None => out = vec![Piece::prompt(full)],
        }
        for p in &mut out {
            p.set_loss(false);
        }
        Ok(out)
    }

    /// Incremental rendering of `msgs` (the messages of `turns`): each message's span is what it
    /// adds to the rendering before it; assistant spans carry loss, adjacent spans of equal loss
    /// are one piece.
    fn incremental(
        &self,
        msgs: &[Message<'_>],
        turns: &[Turn],
    ) -> std::result::Result<Vec<Piece>, Unrenderable> {
        let mut out = Vec::new();
        let mut done = String::new();
        let not_prefix = |i: usize| {
            Unrenderable::new(
                "template_not_incremental",
                format!("rendering through message {i} does not extend the rendering before it"),
            )
        };
        let push = |out: &mut Vec<Piece>, text: &str, loss: bool| {
            if text.is_empty() {
                return;
            }
            match out.last_mut() {
                Some(Piece::Text { text: t, loss: l }) if *l == loss => t.push_str(text),
                _ => out.push(Piece::Text {
                    text: text.into(),
                    loss,
                }),
            }
        };
        for (i, t) in turns.iter().enumerate() {
            if t.role == Role::Assistant {
                let prompt = self.render_messages(&msgs[..i], true)?;
                let delta = prompt
                    .strip_prefix(done.as_str())
                    .ok_or_else(|| not_prefix(i))?;
                push(&mut out, delta, false);
                done = prompt;
            }
            let full = self.render_messages(&msgs[..=i], false)?;
            let delta = full
                .strip_prefix(done.as_str())
                .ok_or_else(|| not_prefix(i))?;
            push(&mut out, delta, t.role == Role::Assistant);
            done = full;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render_text;

    /// ChatML, as published in many models' tokenizer_config.json.
    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    /// meta-llama/Llama-2-7b-chat-hf's chat_template.
    const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

    #[test]
    fn chatml_masks_everything_but_the_answers() {
        let f = ChatTemplateFormat::new(CHATML, "", "<|im_end|>").unwrap();
        let p = f
            .render(&[
                Turn::system("Be brief."),
                Turn::user("Hi"),
                Turn::assistant("Hello"),
            ])
            .unwrap();
        assert_eq!(
            p,
            vec![
                Piece::prompt(
                    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                ),
                Piece::target("Hello<|im_end|>\n"),
            ]
        );
    }

    #[test]
    fn llama2_chat_with_system_and_two_rounds() {
        let f = ChatTemplateFormat::new(LLAMA2, "<s>", "</s>").unwrap();
        let turns = [
            Turn::system("You are helpful."),
            Turn::user(" Hi "),
            Turn::assistant("Hello!"),
            Turn::user("Bye"),
            Turn::assistant("Bye!"),
        ];
        let p = f.render(&turns).unwrap();
        // `.strip()` applies to the joined content, so the user's leading space stays after the
        // system block, and its trailing space goes.
        assert_eq!(
            render_text(&p, "", ""),
            "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\n Hi [/INST] Hello! </s><s>[INST] Bye [/INST] Bye! </s>"
        );
        let targets: Vec<_> = p.iter().filter(|x| x.loss()).cloned().collect();
        assert_eq!(
            targets,
            vec![Piece::target(" Hello! </s>"), Piece::target(" Bye! </s>")]
        );
    }

    /// `apply_chat_template(messages, add_generation_prompt=True)` with ChatML, written by hand.
    #[test]
    fn chatml_generation_prompt() {
        let f = crate::Format::ChatTemplate(Box::new(
            ChatTemplateFormat::new(CHATML, "", "<|im_end|>").unwrap(),
        ));
        let turns = [
            Turn::system("Be brief."),
            Turn::user("Hi"),
            Turn::assistant("Hello"),
            Turn::user("Bye"),
        ];
        let want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(f.render_generation_text(&turns, "", "").unwrap(), want);
        let p = f.generation_prompt(&turns).unwrap();
        // Split where training splits (the past answer is its own piece), all masked.
        assert_eq!(
            p,
            vec![
                Piece::prompt(
                    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                ),
                Piece::prompt("Hello<|im_end|>\n"),
                Piece::prompt("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"),
            ]
        );
        // A past negative answer is written as any other (generation does not skip it).
        let neg = [
            Turn::user("Hi"),
            Turn::assistant_with("Hello", Preference::Negative),
            Turn::user("Bye"),
        ];
        assert!(f.generation_prompt(&neg).is_ok());
    }

    /// Llama-2-chat has no generation header: the prompt ends after `[/INST]`.
    #[test]
    fn llama2_generation_prompt() {
        let f = ChatTemplateFormat::new(LLAMA2, "<s>", "</s>").unwrap();
        let p = f
            .generation_prompt(&[
                Turn::user("Hi"),
                Turn::assistant("Hello!"),
                Turn::user("Bye"),
            ])
            .unwrap();
        assert_eq!(
            render_text(&p, "", ""),
            "<s>[INST] Hi [/INST] Hello! </s><s>[INST] Bye [/INST]"
        );
        assert!(p.iter().all(|x| !x.loss()));
    }

    /// A template that rewrites past turns (here: drops every answer but the last) cannot be
    /// split incrementally; the prompt is then the one full rendering.
    #[test]
    fn non_incremental_template_gives_one_piece() {
        let tmpl = "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let f = ChatTemplateFormat::new(tmpl, "", "").unwrap();
        let p = f
            .generation_prompt(&[Turn::user("a"), Turn::assistant("b"), Turn::user("c")])
            .unwrap();
        assert_eq!(p, vec![Piece::prompt("<user>a<user>c<assistant>")]);
    }

    #[test]
    fn raise_exception_makes_the_row_unrenderable() {
        let f = ChatTemplateFormat::new(LLAMA2, "<s>", "</s>").unwrap();
        let e = f
            .render(&[Turn::assistant("x"), Turn::user("y")])
            .unwrap_err();
        assert_eq!(e.reason, "template_error");
        assert!(e.detail.contains("must alternate"), "{}", e.detail);
    }

    #[test]
    fn reads_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        let cfg = serde_json::json!({
            "bos_token": {"__type": "AddedToken", "content": "<s>"},
            "eos_token": "</s>",
            "chat_template": LLAMA2,
        });
        std::fs::write(&path, cfg.to_string()).unwrap();
        let f = ChatTemplateFormat::from_tokenizer_config(&path).unwrap();
        assert_eq!(
            (f.bos_token.as_str(), f.eos_token.as_str()),
            ("<s>", "</s>")
        );
        std::fs::write(&path, "{}").unwrap();
        let e = ChatTemplateFormat::from_tokenizer_config(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chat_template"), "{e}");
    }
}
