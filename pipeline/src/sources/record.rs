//! What every source parser shares: the record's context, the field error, and typed field access
//! that names the field (`conversations[3].value`) when the input is wrong.
use serde_json::{Map, Value};

use super::{LoadOptions, Source};
use crate::schema::{Conversation, Turn};

/// Where a record comes from, for ids and provenance.
pub struct RecordCtx<'a> {
    pub source: Source,
    /// The input file as reported (relative to the input directory).
    pub file: &'a str,
    /// The file's key in position-based ids: its path below the source directory without
    /// extensions (`helpful-base/train`).
    pub key: &'a str,
    /// 1-based record number (line, element or row).
    pub record: u64,
    pub opts: &'a LoadOptions,
}

/// What a record gave.
pub enum Parsed {
    /// The rows (one or more).
    Rows(Vec<Conversation>),
    /// Skipped on purpose by an option (not an error), with the reason.
    Skipped(&'static str),
}

/// A malformed record: the field (a path such as `summaries[1].text`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type FieldResult<T> = std::result::Result<T, FieldError>;

impl RecordCtx<'_> {
    /// The position-based id `{source}/{file key}/{record}`.
    pub fn position_id(&self) -> String {
        format!("{}/{}/{}", self.source.name(), self.key, self.record)
    }

    /// A row of this record.
    pub fn row(&self, id: String, split: &str, turns: Vec<Turn>, meta: Value) -> Conversation {
        Conversation {
            id,
            source: self.source.name().to_string(),
            split: split.to_string(),
            turns,
            src_file: self.file.to_string(),
            src_record: self.record,
            meta: meta.to_string(),
        }
    }
}

/// A short description of a JSON value's type, for error messages.
pub fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Joins a parent path and a key.
pub fn path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The record as an object.
pub fn as_object<'v>(v: &'v Value, at: &str) -> FieldResult<&'v Map<String, Value>> {
    v.as_object().ok_or_else(|| {
        FieldError::new(
            if at.is_empty() { "(record)" } else { at },
            format!("expected an object, found {}", kind(v)),
        )
    })
}

/// A required field of an object.
pub fn field<'v>(obj: &'v Map<String, Value>, parent: &str, key: &str) -> FieldResult<&'v Value> {
    obj.get(key)
        .ok_or_else(|| FieldError::new(path(parent, key), "missing"))
}

/// A required string field.
pub fn str_field<'v>(obj: &'v Map<String, Value>, parent: &str, key: &str) -> FieldResult<&'v str> {
    let v = field(obj, parent, key)?;
    v.as_str().ok_or_else(|| {
        FieldError::new(
            path(parent, key),
            format!("expected a string, found {}", kind(v)),
        )
    })
}

/// A required list field.
pub fn list_field<'v>(
    obj: &'v Map<String, Value>,
    parent: &str,
    key: &str,
) -> FieldResult<&'v Vec<Value>> {
    let v = field(obj, parent, key)?;
    v.as_array().ok_or_else(|| {
        FieldError::new(
            path(parent, key),
            format!("expected a list, found {}", kind(v)),
        )
    })
}

/// A required object field.
pub fn obj_field<'v>(
    obj: &'v Map<String, Value>,
    parent: &str,
    key: &str,
) -> FieldResult<&'v Map<String, Value>> {
    let v = field(obj, parent, key)?;
    v.as_object().ok_or_else(|| {
        FieldError::new(
            path(parent, key),
            format!("expected an object, found {}", kind(v)),
        )
    })
}

/// A required number field (integers and floats).
pub fn num_field(obj: &Map<String, Value>, parent: &str, key: &str) -> FieldResult<f64> {
    let v = field(obj, parent, key)?;
    v.as_f64().ok_or_else(|| {
        FieldError::new(
            path(parent, key),
            format!("expected a number, found {}", kind(v)),
        )
    })
}

/// A list of strings; `at` is the list's own path.
pub fn str_list<'v>(list: &'v [Value], at: &str) -> FieldResult<Vec<&'v str>> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                FieldError::new(
                    format!("{at}[{i}]"),
                    format!("expected a string, found {}", kind(v)),
                )
            })
        })
        .collect()
}

/// An optional native id: a string or an integer; other types are an error.
pub fn opt_id(obj: &Map<String, Value>, parent: &str, key: &str) -> FieldResult<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(Some(n.to_string())),
        Some(v) => Err(FieldError::new(
            path(parent, key),
            format!("expected a string or integer id, found {}", kind(v)),
        )),
    }
}

/// The path of the first string in `v` that holds U+FFFD, the mark that lossy UTF-8 decoding
/// leaves: used to name the field of a record with invalid UTF-8.
pub fn replacement_char_path(v: &Value, at: &str) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\u{FFFD}') => Some(if at.is_empty() {
            "(record)".into()
        } else {
            at.to_string()
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| replacement_char_path(x, &format!("{at}[{i}]"))),
        Value::Object(o) => o.iter().find_map(|(k, x)| {
            if k.contains('\u{FFFD}') {
                Some(path(at, k))
            } else {
                replacement_char_path(x, &path(at, k))
            }
        }),
        _ => None,
    }
}

/// A stable choice among `n` options from an id: xxh3 of the id, modulo `n`.
pub fn pick(id: &str, n: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % n as u64) as usize
}
