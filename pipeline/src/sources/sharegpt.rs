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
use serde_json::{Map, Value, json};

use super::record::*;
use crate::schema::{Role, Turn};

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

fn turn(role: Role, text: &str) -> Turn {
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
