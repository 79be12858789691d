//! Test-set loaders: one prompt per test query, whatever the published format.
//!
//! - Koala test set: JSONL of `{"id", "prompt"}`.
//! - Self-instruct user-oriented set: JSONL of
//!   `{"id", "motivation_app", "instruction", "instances": [{"input", "output"}]}`; one prompt per
//!   instance, `instruction` then a blank line then `input` (when the input is not empty).
//! - Alpaca-style JSON list of `{"instruction", "input", "output"}` (an `id` field is used when
//!   present, else `{file stem}/{index}`); the prompt is built as for self-instruct.
//! - Instruction JSONL: `{"instruction", "input"?}` per line (any other fields are ignored; `id`
//!   when present, else the line number).
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// One test query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestPrompt {
    /// The test set's own id (made unique per file by the loader).
    pub id: String,
    /// The text compared against training prompts.
    pub prompt: String,
    /// The file it was read from.
    pub file: String,
    /// 1-based line (JSONL) or element index (JSON list).
    pub record: u64,
}

/// A test-set file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestFormat {
    /// JSONL `{"id","prompt"}`.
    Koala,
    /// JSONL `{"id","motivation_app","instruction","instances":[{"input","output"}]}`.
    SelfInstruct,
    /// A JSON list of `{"instruction","input","output"}`.
    Alpaca,
    /// JSONL `{"instruction","input"?}`.
    Instruction,
}

fn record_err(file: &str, line: u64, field: &str, message: impl Into<String>) -> Error {
    Error::Record {
        file: file.to_string(),
        line,
        field: field.to_string(),
        message: message.into(),
    }
}

fn str_field<'a>(v: &'a Value, file: &str, line: u64, field: &str) -> Result<&'a str> {
    match v.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(record_err(
            file,
            line,
            field,
            format!("expected a string, found {other}"),
        )),
        None => Err(record_err(file, line, field, "missing")),
    }
}

fn id_field(v: &Value, file: &str, line: u64) -> Result<Option<String>> {
    match v.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(record_err(
            file,
            line,
            "id",
            format!("expected a string or number, found {other}"),
        )),
    }
}

fn join_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    }
}

/// Guesses the format from the file: a JSON list is Alpaca-style; for JSONL, the first record's
/// keys decide (`prompt` → Koala, `instruction` + `instances` → self-instruct).
pub fn detect_format(path: &Path) -> Result<TestFormat> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    detect_format_of(&text, &path.display().to_string())
}

fn detect_format_of(text: &str, file: &str) -> Result<TestFormat> {
    let first = text.trim_start();
    if first.starts_with('[') {
        return Ok(TestFormat::Alpaca);
    }
    let line = first.lines().next().unwrap_or("");
    let v: Value = serde_json::from_str(line)
        .map_err(|e| record_err(file, 1, "<record>", format!("not JSON: {e}")))?;
    if v.get("prompt").is_some() {
        Ok(TestFormat::Koala)
    } else if v.get("instruction").is_some() && v.get("instances").is_some() {
        Ok(TestFormat::SelfInstruct)
    } else if v.get("instruction").is_some() {
        Ok(TestFormat::Instruction)
    } else {
        Err(record_err(
            file,
            1,
            "<record>",
            "cannot tell the test-set format: expected `prompt` (Koala), `instruction` + \
             `instances` (self-instruct) or `instruction` (+ `input`) in JSONL, or a JSON list \
             (Alpaca)",
        ))
    }
}

/// Loads one test set; `format: None` detects it with [`detect_format`].
///
/// ```
/// use koala_testsets::load::{load_test_set, TestFormat};
/// let dir = tempfile::tempdir().unwrap();
/// let p = dir.path().join("koala_test_set.jsonl");
/// std::fs::write(&p, "{\"id\":\"q1\",\"prompt\":\"Tell me a joke\"}\n").unwrap();
/// let tests = load_test_set(&p, None).unwrap();
/// assert_eq!(tests[0].id, "q1");
/// assert_eq!(tests[0].prompt, "Tell me a joke");
/// ```
pub fn load_test_set(path: &Path, format: Option<TestFormat>) -> Result<Vec<TestPrompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_test_set(&text, &path.display().to_string(), &stem, format)
}

/// Parses a test set held in memory; `file` names it in errors and in [`TestPrompt::file`], `stem`
/// prefixes the ids of Alpaca-style records that have none.
pub fn parse_test_set(
    text: &str,
    file: &str,
    stem: &str,
    format: Option<TestFormat>,
) -> Result<Vec<TestPrompt>> {
    let format = match format {
        Some(f) => f,
        None => detect_format_of(text, file)?,
    };
    let file = file.to_string();
    let mut out = Vec::new();
    match format {
        TestFormat::Koala | TestFormat::SelfInstruct | TestFormat::Instruction => {
            for (i, line) in text.lines().enumerate() {
                let ln = i as u64 + 1;
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| record_err(&file, ln, "<record>", format!("not JSON: {e}")))?;
                let id = id_field(&v, &file, ln)?.unwrap_or_else(|| format!("{ln}"));
                if format == TestFormat::Koala {
                    out.push(TestPrompt {
                        id: id.clone(),
                        prompt: str_field(&v, &file, ln, "prompt")?.to_string(),
                        file: file.clone(),
                        record: ln,
                    });
                    continue;
                }
                let instruction = str_field(&v, &file, ln, "instruction")?;
                if format == TestFormat::Instruction {
                    let input = match v.get("input") {
                        None | Some(Value::Null) => "",
                        Some(Value::String(s)) => s,
                        Some(_) => return Err(record_err(&file, ln, "input", "expected a string")),
                    };
                    out.push(TestPrompt {
                        id,
                        prompt: join_prompt(instruction, input),
                        file: file.clone(),
                        record: ln,
                    });
                    continue;
                }
                let instances = match v.get("instances") {
                    Some(Value::Array(a)) => a,
                    _ => return Err(record_err(&file, ln, "instances", "expected a list")),
                };
                if instances.is_empty() {
                    out.push(TestPrompt {
                        id: id.clone(),
                        prompt: instruction.to_string(),
                        file: file.clone(),
                        record: ln,
                    });
                }
                for (k, inst) in instances.iter().enumerate() {
                    let input = match inst.get("input") {
                        None | Some(Value::Null) => "",
                        Some(Value::String(s)) => s,
                        Some(_) => {
                            return Err(record_err(
                                &file,
                                ln,
                                &format!("instances[{k}].input"),
                                "expected a string",
                            ));
                        }
                    };
                    out.push(TestPrompt {
                        id: if instances.len() == 1 {
                            id.clone()
                        } else {
                            format!("{id}/{k}")
                        },
                        prompt: join_prompt(instruction, input),
                        file: file.clone(),
                        record: ln,
                    });
                }
            }
        }
        TestFormat::Alpaca => {
            let v: Value = serde_json::from_str(text)
                .map_err(|e| record_err(&file, 0, "<file>", format!("not a JSON list: {e}")))?;
            let Value::Array(items) = v else {
                return Err(record_err(&file, 0, "<file>", "expected a JSON list"));
            };
            for (i, item) in items.iter().enumerate() {
                let rec = i as u64 + 1;
                let instruction = str_field(item, &file, rec, "instruction")?;
                let input = match item.get("input") {
                    None | Some(Value::Null) => "",
                    Some(Value::String(s)) => s,
                    Some(_) => return Err(record_err(&file, rec, "input", "expected a string")),
                };
                out.push(TestPrompt {
                    id: id_field(item, &file, rec)?.unwrap_or_else(|| format!("{stem}/{i}")),
                    prompt: join_prompt(instruction, input),
                    file: file.clone(),
                    record: rec,
                });
            }
        }
    }
    Ok(out)
}

/// Loads several test sets, in order. `builtin:koala` and `builtin:self-instruct` name the
/// shipped sets ([`crate::sets::EvalSet`]).
pub fn load_test_sets<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<TestPrompt>> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        match p.to_str().and_then(|s| s.strip_prefix("builtin:")) {
            Some(name) => match crate::sets::EvalSet::from_name(name) {
                Some(set) => out.extend(set.prompts()),
                None => return Err(Error::UnknownSet(p.display().to_string())),
            },
            None => out.extend(load_test_set(p, None)?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_the_three_formats() {
        let d = tempfile::tempdir().unwrap();
        let k = write(
            d.path(),
            "k.jsonl",
            "{\"id\":\"a\",\"prompt\":\"p1\"}\n\n{\"id\":2,\"prompt\":\"p2\"}\n",
        );
        let s = write(
            d.path(),
            "s.jsonl",
            "{\"id\":\"user_oriented_task_0\",\"motivation_app\":\"Grammarly\",\"instruction\":\"Fix it.\",\"instances\":[{\"input\":\"teh cat\",\"output\":\"the cat\"}]}\n",
        );
        let a = write(
            d.path(),
            "a.json",
            "[{\"instruction\":\"Say hi\",\"input\":\"\",\"output\":\"hi\"},{\"instruction\":\"Add\",\"input\":\"1+1\",\"output\":\"2\"}]",
        );
        let k = load_test_set(&k, None).unwrap();
        assert_eq!(
            (k[1].id.as_str(), k[1].prompt.as_str(), k[1].record),
            ("2", "p2", 3)
        );
        let s = load_test_set(&s, None).unwrap();
        assert_eq!(s[0].prompt, "Fix it.\n\nteh cat");
        assert_eq!(s[0].id, "user_oriented_task_0");
        let i = write(
            d.path(),
            "i.jsonl",
            "{\"instruction\":\"Add\",\"input\":\"1+1\",\"extra\":true}\n{\"id\":\"x\",\"instruction\":\"Hi\"}\n",
        );
        let i = load_test_set(&i, None).unwrap();
        assert_eq!(
            (i[0].id.as_str(), i[0].prompt.as_str()),
            ("1", "Add\n\n1+1")
        );
        assert_eq!((i[1].id.as_str(), i[1].prompt.as_str()), ("x", "Hi"));
        let a = load_test_set(&a, None).unwrap();
        assert_eq!(a[0].prompt, "Say hi");
        assert_eq!(a[1].id, "a/1");
        assert_eq!(a[1].prompt, "Add\n\n1+1");
    }

    #[test]
    fn bad_records_name_file_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let k = write(
            d.path(),
            "k.jsonl",
            "{\"id\":\"a\",\"prompt\":\"p1\"}\n{\"id\":\"b\",\"prompt\":3}\n",
        );
        let e = load_test_set(&k, Some(TestFormat::Koala))
            .unwrap_err()
            .to_string();
        assert!(e.contains("k.jsonl:2: field `prompt`"), "{e}");
        let a = write(d.path(), "a.json", "[{\"input\":\"x\"}]");
        let e = load_test_set(&a, None).unwrap_err().to_string();
        assert!(e.contains("a.json:1: field `instruction`: missing"), "{e}");
    }
}
