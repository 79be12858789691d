//! ShareGPT conversations, in both published shapes:
//!
//! - the dumps (`sg_90k_part1.json`, ShareGPT52K): `{"id", "conversations": [{"from", "value"}]}`
//!   (older dumps name the list `items`); values may hold the page's HTML, kept as is here (the
//!   cleanup stage converts it);
//! - Koala's keyed form: `{"human_0": …, "gpt_1": …}`, turns ordered by the integer suffix.
//!
//! Speakers: `human`/`user` → user, `gpt`/`chatgpt`/`bard`/`bing`/`assistant`/`model` → assistant,
//! `system` → system; anything else is an error naming `conversations[i].from`.
//! Id: `sharegpt/{id}` when the record has one, else `sharegpt/{file key}/{element}`.
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::record::*;
use crate::schema::{Role, Turn};

/// The dump shape, deserialised straight from the record's text (strings borrowed where they
/// hold no escapes), without building a `serde_json::Value` tree first.
#[derive(Deserialize)]
struct DumpRecord<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    conversations: Vec<DumpTurn<'a>>,
}

#[derive(Deserialize)]
struct DumpTurn<'a> {
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
}

/// The fast path for the common record (`{"id": "…", "conversations": [{"from", "value"}…]}`):
/// the same row [`parse`] gives, or `None` for anything else (a numeric id, the keyed form,
/// `items`, an unknown speaker, a wrong type, bad JSON), which then goes through [`parse`] and
/// its field-naming errors.
pub(crate) fn parse_fast(ctx: &RecordCtx, text: &str) -> Option<Parsed> {
    let rec: DumpRecord = serde_json::from_str(text).ok()?;
    if rec.conversations.is_empty() {
        return None;
    }
    let mut turns = Vec::with_capacity(rec.conversations.len());
    for t in rec.conversations {
        turns.push(turn(role_of(&t.from)?, t.value.into_owned()));
    }
    // (An empty id is an error of the full parser: leave it to that.)
    if rec.id.as_deref() == Some("") {
        return None;
    }
    let native = rec.id.map(Cow::into_owned);
    let id = match &native {
        Some(n) => format!("sharegpt/{n}"),
        None => ctx.position_id(),
    };
    let meta = json!({"form": "conversations", "native_id": native});
    Some(Parsed::Rows(vec![ctx.row(id, "unsplit", turns, meta)]))
}

pub(crate) fn parse(ctx: &RecordCtx, v: &Value) -> FieldResult<Parsed> {
    let obj = as_object(v, "")?;
    let native = opt_id(obj, "", "id")?;
    let list_key = ["conversations", "items"]
        .into_iter()
        .find(|k| obj.contains_key(*k));
    let (turns, form) = match list_key {
        Some(key) => (listed_turns(obj, key)?, "conversations"),
        None => (keyed_turns(obj)?, "keyed"),
    };
    let id = match &native {
        Some(n) => format!("sharegpt/{n}"),
        None => ctx.position_id(),
    };
    let meta = json!({"form": form, "native_id": native});
    Ok(Parsed::Rows(vec![ctx.row(id, "unsplit", turns, meta)]))
}

fn role_of(from: &str) -> Option<Role> {
    match from.to_ascii_lowercase().as_str() {
        "human" | "user" => Some(Role::User),
        "gpt" | "chatgpt" | "bard" | "bing" | "assistant" | "model" => Some(Role::Assistant),
        "system" => Some(Role::System),
        _ => None,
    }
}

fn turn(role: Role, text: impl Into<String>) -> Turn {
    match role {
        Role::User => Turn::user(text),
        Role::Assistant => Turn::assistant(text),
        Role::System => Turn::system(text),
    }
}

fn listed_turns(obj: &Map<String, Value>, key: &str) -> FieldResult<Vec<Turn>> {
    let list = list_field(obj, "", key)?;
    if list.is_empty() {
        return Err(FieldError::new(key, "the conversation has no turns"));
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("{key}[{i}]");
            let t = as_object(t, &at)?;
            let from = str_field(t, &at, "from")?;
            let role = role_of(from).ok_or_else(|| {
                FieldError::new(path(&at, "from"), format!("unknown speaker {from:?}"))
            })?;
            Ok(turn(role, str_field(t, &at, "value")?))
        })
        .collect()
}

fn keyed_turns(obj: &Map<String, Value>) -> FieldResult<Vec<Turn>> {
    let mut keyed: Vec<(u64, u8, Role, &str)> = Vec::new();
    for (k, v) in obj {
        let Some((side, n)) = k.rsplit_once('_') else {
            continue;
        };
        let role = match side {
            "human" => Role::User,
            "gpt" => Role::Assistant,
            _ => continue,
        };
        let n: u64 = n
            .parse()
            .map_err(|_| FieldError::new(k.as_str(), "turn key lacks an integer suffix"))?;
        let text = v.as_str().ok_or_else(|| {
            FieldError::new(k.as_str(), format!("expected a string, found {}", kind(v)))
        })?;
        keyed.push((n, (role == Role::Assistant) as u8, role, text));
    }
    if keyed.is_empty() {
        return Err(FieldError::new(
            "conversations",
            "missing (and no human_N/gpt_N keys either)",
        ));
    }
    keyed.sort_by_key(|&(n, side, _, _)| (n, side));
    Ok(keyed.into_iter().map(|(_, _, r, t)| turn(r, t)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{LoadOptions, Source};

    #[test]
    fn fast_path_gives_the_full_parsers_rows_or_steps_aside() {
        let opts = LoadOptions::default();
        let ctx = RecordCtx {
            source: Source::ShareGpt,
            file: "sharegpt/a.json",
            key: "a",
            record: 7,
            opts: &opts,
        };
        let full = |text: &str| {
            let v: Value = serde_json::from_str(text).unwrap();
            parse(&ctx, &v)
        };
        let rows = |p: Parsed| match p {
            Parsed::Rows(r) => r,
            Parsed::Skipped(_) => panic!("skipped"),
        };
        // Taken by the fast path: the same row as the full parser.
        for text in [
            r#"{"id":"x1","conversations":[{"from":"human","value":"hi \"there\"\n<p>x</p>"},{"from":"gpt","value":"yo","markdown":null}]}"#,
            r#"{"conversations":[{"from":"User","value":"é ✓"},{"from":"bard","value":""}],"other":[1,2]}"#,
            r#"{"id":null,"conversations":[{"from":"system","value":"s"}],"items":[]}"#,
        ] {
            let fast = rows(parse_fast(&ctx, text).expect(text));
            assert_eq!(fast, rows(full(text).unwrap()), "{text}");
        }
        // Left to the full parser (which accepts some and names the field of the others).
        for text in [
            r#"{"id":12,"conversations":[{"from":"human","value":"hi"}]}"#,
            r#"{"id":"","conversations":[{"from":"human","value":"hi"}]}"#,
            r#"{"human_0":"hi","gpt_1":"yo"}"#,
            r#"{"id":"a","items":[{"from":"human","value":"hi"}]}"#,
            r#"{"id":"a","conversations":[]}"#,
            r#"{"id":"a","conversations":[{"from":"robot","value":"hi"}]}"#,
            r#"{"id":"a","conversations":[{"from":"human","value":null}]}"#,
            r#"{"id":"a","id":"b","conversations":[{"from":"human","value":"hi"}]}"#,
            r#"["not an object"]"#,
        ] {
            assert!(parse_fast(&ctx, text).is_none(), "{text}");
        }
        assert_eq!(
            rows(full(r#"{"id":12,"conversations":[{"from":"human","value":"hi"}]}"#).unwrap())[0]
                .id,
            "sharegpt/12"
        );
        assert_eq!(
            full(r#"{"id":"a","conversations":[{"from":"robot","value":"hi"}]}"#)
                .err()
                .unwrap()
                .field,
            "conversations[0].from"
        );
    }
}
