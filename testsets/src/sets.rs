//! The eval sets we ship, embedded in the binary, and the resolution of a `--set` argument.
//!
//! | name | rows | source | licence |
//! |---|---|---|---|
//! | `koala` | 180 | arnav-gudibande/koala-test-set `koala_test_set.jsonl` @ 2d4396a | Apache-2.0 |
//! | `self-instruct` | 252 | yizhongw/self-instruct `human_eval/user_oriented_instructions.jsonl` @ 0b26cca | Apache-2.0 |
//!
//! The files, their licences and a provenance note are in `testsets/data/`. Both sets are for
//! evaluation only: the Koala README asks that its set never be used for training, and the
//! curation's leakage filter runs against both by default.
use std::path::Path;

use crate::error::{Error, Result};
use crate::load::{TestFormat, TestPrompt, load_test_set, parse_test_set};

const KOALA: &str = include_str!("../data/koala_test_set.jsonl");
const SELF_INSTRUCT: &str = include_str!("../data/user_oriented_instructions.jsonl");

/// A shipped eval set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvalSet {
    /// The Koala test set: 180 real user queries.
    Koala,
    /// The self-instruct user-oriented set: 252 instructions (the "Alpaca test set").
    SelfInstruct,
}

impl EvalSet {
    /// Every shipped set.
    pub const ALL: [EvalSet; 2] = [EvalSet::Koala, EvalSet::SelfInstruct];

    /// The set's name on the command line and in response rows.
    pub fn name(self) -> &'static str {
        match self {
            EvalSet::Koala => "koala",
            EvalSet::SelfInstruct => "self-instruct",
        }
    }

    /// Looks a set up by [`EvalSet::name`].
    pub fn from_name(name: &str) -> Option<EvalSet> {
        EvalSet::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The upstream file name, used in [`TestPrompt::file`] as `builtin:<file>`.
    pub fn file_name(self) -> &'static str {
        match self {
            EvalSet::Koala => "koala_test_set.jsonl",
            EvalSet::SelfInstruct => "user_oriented_instructions.jsonl",
        }
    }

    /// The raw JSONL as published.
    pub fn raw(self) -> &'static str {
        match self {
            EvalSet::Koala => KOALA,
            EvalSet::SelfInstruct => SELF_INSTRUCT,
        }
    }

    /// The set's prompts (self-instruct: instruction, a blank line, then the input when there is one).
    ///
    /// ```
    /// use koala_testsets::sets::EvalSet;
    /// assert_eq!(EvalSet::Koala.prompts().len(), 180);
    /// assert_eq!(EvalSet::SelfInstruct.prompts().len(), 252);
    /// assert_eq!(EvalSet::Koala.prompts()[0].id, "koala_0");
    /// ```
    pub fn prompts(self) -> Vec<TestPrompt> {
        let format = match self {
            EvalSet::Koala => TestFormat::Koala,
            EvalSet::SelfInstruct => TestFormat::SelfInstruct,
        };
        let file = format!("builtin:{}", self.file_name());
        // The embedded files are fixed at build time and covered by the tests below.
        parse_test_set(self.raw(), &file, self.name(), Some(format))
            .unwrap_or_else(|e| panic!("embedded eval set {file} does not parse: {e}"))
    }
}

/// Resolves `--set koala|self-instruct|FILE` (or a leakage `test_sets` entry
/// `builtin:koala|builtin:self-instruct|FILE`) to the set's name and prompts. A file's name is its
/// path.
pub fn resolve(spec: &str) -> Result<(String, Vec<TestPrompt>)> {
    let bare = spec.strip_prefix("builtin:").unwrap_or(spec);
    if let Some(set) = EvalSet::from_name(bare) {
        return Ok((set.name().to_string(), set.prompts()));
    }
    if spec.starts_with("builtin:") {
        return Err(Error::UnknownSet(spec.to_string()));
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(Error::UnknownSet(spec.to_string()));
    }
    Ok((spec.to_string(), load_test_set(path, None)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sets_parse_with_unique_ids() {
        for set in EvalSet::ALL {
            let p = set.prompts();
            let mut ids: Vec<_> = p.iter().map(|t| t.id.as_str()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), p.len(), "{set:?}");
            assert!(p.iter().all(|t| !t.prompt.trim().is_empty()), "{set:?}");
        }
        // user_oriented_task_0 has an input: instruction, blank line, input.
        let s = EvalSet::SelfInstruct.prompts();
        assert!(s[0].prompt.starts_with("The sentence you are given"));
        assert!(
            s[0].prompt
                .contains("\n\nIf you have any questions about my rate")
        );
    }

    #[test]
    fn resolve_names_and_files() {
        assert_eq!(resolve("koala").unwrap().1.len(), 180);
        assert_eq!(resolve("builtin:self-instruct").unwrap().1.len(), 252);
        assert!(matches!(resolve("builtin:nope"), Err(Error::UnknownSet(_))));
        assert!(matches!(
            resolve("/no/such/file.jsonl"),
            Err(Error::UnknownSet(_))
        ));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("mine.jsonl");
        std::fs::write(&f, "{\"prompt\":\"hello there\"}\n").unwrap();
        let (name, p) = resolve(f.to_str().unwrap()).unwrap();
        assert_eq!(
            (name.as_str(), p[0].prompt.as_str()),
            (f.to_str().unwrap(), "hello there")
        );
    }
}
