//! The conversation as a Rust value: who speaks ([`Role`]), the human-feedback label
//! ([`Preference`]), one [`Turn`], and one row of the conversation table ([`Conversation`]).
//!
//! These types hold no table code: `koala_pipeline::schema` builds and reads its Polars table from
//! them (and re-exports them), and the server and the evaluation use them without polars. `role`
//! and `preference` are stored as the lowercase strings of [`Role::as_str`] and
//! [`Preference::as_str`], in the table and in JSON alike.
//!
//! # Example
//! ```
//! use koala_format::{Preference, Role, Turn};
//! let t = Turn::assistant("Hi!");
//! assert_eq!((t.role, t.preference), (Role::Assistant, Preference::Positive));
//! assert_eq!("user".parse::<Role>().unwrap(), Role::User);
//! assert_eq!(serde_json::to_string(&Turn::user("Hello")).unwrap(),
//!            r#"{"role":"user","text":"Hello","preference":"unrated"}"#);
//! ```
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Who speaks a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
}

/// The human-feedback label of a turn. Only assistant turns carry a meaningful one; data without
/// feedback is `Positive` (Koala's convention), user and system turns are `Unrated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    Positive,
    Negative,
    Unrated,
}

macro_rules! str_enum {
    ($t:ty, $what:literal, $($v:ident => $s:literal),+) => {
        impl $t {
            /// The string stored in the table.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)+
                    other => Err(format!("unknown {} {:?}", $what, other)),
                }
            }
        }
    };
}
str_enum!(Role, "role", User => "user", Assistant => "assistant", System => "system");
str_enum!(Preference, "preference", Positive => "positive", Negative => "negative", Unrated => "unrated");

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    pub preference: Preference,
}

impl Turn {
    /// A user turn (always unrated).
    pub fn user(text: impl Into<String>) -> Self {
        Turn {
            role: Role::User,
            text: text.into(),
            preference: Preference::Unrated,
        }
    }
    /// An assistant turn without human feedback: positive, as Koala treats such data.
    pub fn assistant(text: impl Into<String>) -> Self {
        Turn {
            role: Role::Assistant,
            text: text.into(),
            preference: Preference::Positive,
        }
    }
    /// An assistant turn with an explicit preference.
    pub fn assistant_with(text: impl Into<String>, preference: Preference) -> Self {
        Turn {
            role: Role::Assistant,
            text: text.into(),
            preference,
        }
    }
    /// A system turn (always unrated).
    pub fn system(text: impl Into<String>) -> Self {
        Turn {
            role: Role::System,
            text: text.into(),
            preference: Preference::Unrated,
        }
    }
}

/// One row of the conversation table, as a Rust value (the columns are documented in
/// `docs/schema.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub source: String,
    pub split: String,
    pub turns: Vec<Turn>,
    pub src_file: String,
    pub src_record: u64,
    /// A JSON object (as text) of source-specific facts; `"{}"` when there are none.
    pub meta: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for r in [Role::User, Role::Assistant, Role::System] {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        }
        for p in [
            Preference::Positive,
            Preference::Negative,
            Preference::Unrated,
        ] {
            assert_eq!(p.as_str().parse::<Preference>().unwrap(), p);
        }
        assert_eq!(
            "bot".parse::<Role>().unwrap_err(),
            "unknown role \"bot\"".to_string()
        );
    }

    #[test]
    fn serde_uses_the_table_strings() {
        let t = Turn::assistant_with("no", Preference::Negative);
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(
            s,
            r#"{"role":"assistant","text":"no","preference":"negative"}"#
        );
        assert_eq!(serde_json::from_str::<Turn>(&s).unwrap(), t);
    }
}
