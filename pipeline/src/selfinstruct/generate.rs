//! The pure parts of Alpaca's self-instruct generator (`generate_instruction.py`): the seed
//! tasks, the prompt, parsing a teacher's response into numbered items, and the rule filters.
//! The network loop is `koala self-instruct generate` (src/cmd/self_instruct.rs); the similarity
//! filter is [`super::dedup::SimilarityFilter`].
use std::path::Path;
use std::sync::LazyLock;

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How many seed examples each prompt shows (Alpaca: 3).
pub const PROMPT_EXAMPLES: usize = 3;

/// Our requirements text (same structure as Alpaca's prompt.txt, in our own words). The
/// examples and `N. Instruction:` follow it; `--prompt FILE` replaces it.
pub const DEFAULT_PROMPT: &str = "\
Your job is to invent 20 varied task instructions. A GPT model will be asked to carry them out, \
and we will judge how well it does.

Follow these rules:
1. Vary the verbs: do not start two instructions with the same verb.
2. Vary the phrasing as well: mix questions with commands.
3. Cover many kinds of task, for example open-ended writing, classification, rewriting, \
brainstorming and reasoning.
4. Every task must be doable by a text-only language model: nothing that needs pictures, sound or \
other non-text output, and no actions in the world such as setting an alarm or sending a message.
5. Write the instructions in English.
6. Keep each instruction to one or two sentences, phrased as a command or a question.
7. Give each instruction a fitting input: a concrete, realistic example (never a placeholder) with \
enough substance to make the task demanding, ideally under 100 words.
8. Some instructions need no input, such as a general knowledge question; write \"<noinput>\" as \
the input for those.
9. The output must be a suitable answer to the instruction and its input, in under 100 words.

Here are 20 tasks:";

/// Alpaca's keyword blacklist, matched as whole words, case-insensitively.
pub const BLACKLIST: &[&str] = &[
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
];

/// One demonstration: a seed task's first instance, or a generated one (`regen.json` rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub instruction: String,
    pub input: String,
    pub output: String,
}

#[derive(Deserialize)]
struct SeedLine {
    instruction: String,
    instances: Vec<Task2>,
}

#[derive(Deserialize)]
struct Task2 {
    input: String,
    output: String,
}

/// Reads Alpaca's `seed_tasks.jsonl` (`instruction`, `instances[0].{input, output}`); errors
/// name the file, line and field.
pub fn load_seed_tasks(path: &Path) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file = path.display().to_string();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec = |field: &str, message: String| Error::Record {
            file: file.clone(),
            line: i as u64 + 1,
            field: field.to_owned(),
            message,
        };
        let s: SeedLine = serde_json::from_str(line).map_err(|e| {
            let msg = e.to_string();
            let field = ["instances", "instruction", "input", "output"]
                .into_iter()
                .find(|f| msg.contains(&format!("`{f}`")))
                .unwrap_or("(line)");
            rec(field, msg)
        })?;
        let Some(first) = s.instances.into_iter().next() else {
            return Err(rec("instances", "needs at least one instance".into()));
        };
        out.push(Task {
            instruction: s.instruction,
            input: first.input,
            output: first.output,
        });
    }
    if out.is_empty() {
        return Err(Error::Record {
            file,
            line: 0,
            field: "(file)".into(),
            message: format!("no seed tasks (need at least {PROMPT_EXAMPLES})"),
        });
    }
    Ok(out)
}

static SPACES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\s+").expect("static regex"));

/// The prompt: `header`, then the examples as Alpaca renders them, then `N. Instruction:` for
/// the teacher to continue (numbering on up to 20).
pub fn encode_prompt(header: &str, examples: &[&Task]) -> String {
    let mut p = format!("{header}\n");
    for (i, t) in examples.iter().enumerate() {
        let inst = SPACES.replace_all(&t.instruction, " ");
        let inst = inst.trim().trim_end_matches(':');
        let input = if t.input.is_empty() {
            "<noinput>"
        } else {
            &t.input
        };
        let n = i + 1;
        p.push_str(&format!(
            "###\n{n}. Instruction: {inst}\n{n}. Input:\n{input}\n{n}. Output:\n{}\n",
            t.output
        ));
    }
    p.push_str(&format!("###\n{}. Instruction:", examples.len() + 1));
    p
}

/// The seed examples of request number `request` under run seed `seed`: a seeded draw of
/// [`PROMPT_EXAMPLES`] distinct seed tasks (the same on a resumed run).
pub fn draw_examples(seeds: &[Task], seed: u64, request: u64) -> Vec<&Task> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ request.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let k = PROMPT_EXAMPLES.min(seeds.len());
    sample(&mut rng, seeds.len(), k)
        .into_iter()
        .map(|i| &seeds[i])
        .collect()
}

/// Why a generated item was dropped, in Alpaca's order of checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Drop {
    /// The last piece of a response cut by `finish_reason == "length"`.
    Truncated,
    /// Not `N. Instruction: … N. Input: … N. Output: …` with the expected number N.
    Unparsable,
    /// ≤ 3 or > 150 words.
    WordCount { words: usize },
    /// Contains a blacklisted word.
    Blacklist { word: String },
    /// Starts with "Write a program".
    WriteAProgram,
    /// Starts with ASCII punctuation.
    Punctuation,
    /// Starts with a non-ASCII character.
    NonAscii,
    /// ROUGE-L F above the threshold with a kept instruction (seeds included).
    Similar { rouge_l: f64, similar_to: String },
}

impl Drop {
    pub fn name(&self) -> &'static str {
        match self {
            Drop::Truncated => "truncated",
            Drop::Unparsable => "unparsable",
            Drop::WordCount { .. } => "word_count",
            Drop::Blacklist { .. } => "blacklist",
            Drop::WriteAProgram => "write_a_program",
            Drop::Punctuation => "punctuation",
            Drop::NonAscii => "non_ascii",
            Drop::Similar { .. } => "similar",
        }
    }
}

/// One numbered piece of a response: parsed, or dropped with the raw text.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Task(Task),
    Dropped { raw: String, why: Drop },
}

static LABELS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    (0..=40)
        .map(|n| {
            Regex::new(&format!(r"{n}\.\s+(?:Instruction|Input|Output):")).expect("static regex")
        })
        .collect()
});

fn label(n: usize) -> Regex {
    LABELS.get(n).cloned().unwrap_or_else(|| {
        Regex::new(&format!(r"{n}\.\s+(?:Instruction|Input|Output):")).expect("number regex")
    })
}

/// Python's `str.strip()` (Unicode whitespace), which Rust's `trim` matches.
fn strip(s: &str) -> &str {
    s.trim()
}

/// Alpaca's `post_process_gpt3_response` up to (not including) the rule filters: splits
/// `"{k+1}. Instruction:" + text` on `###` and parses piece `i` with the label number `k+1+i`.
pub fn parse_response(num_examples: usize, text: &str, finish_reason: &str) -> Vec<Piece> {
    let raw = format!("{}. Instruction:{text}", num_examples + 1);
    let pieces: Vec<&str> = raw.split("###").collect();
    let last = pieces.len() - 1;
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let dropped = |why| Piece::Dropped {
                raw: (*piece).to_owned(),
                why,
            };
            if i == last && finish_reason == "length" {
                return dropped(Drop::Truncated);
            }
            let re = label(i + num_examples + 1);
            // Python's re.split with the label group gives 7 parts for exactly 3 labels (fields
            // taken by position, whatever the label words); without the group, 4 parts.
            let parts: Vec<&str> = re.split(piece).collect();
            if parts.len() != 4 {
                return dropped(Drop::Unparsable);
            }
            let inst = strip(parts[1]).to_owned();
            let input = strip(parts[2]);
            let input = if input.to_lowercase() == "<noinput>" {
                String::new()
            } else {
                input.to_owned()
            };
            Piece::Task(Task {
                instruction: inst,
                input,
                output: strip(parts[3]).to_owned(),
            })
        })
        .collect()
}

static BLACKLIST_RE: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    BLACKLIST
        .iter()
        .map(|w| {
            (
                Regex::new(&format!(r"(?i)\b({})\b", regex::escape(w))).expect("static regex"),
                *w,
            )
        })
        .collect()
});

/// Alpaca's rule filters on an instruction, in its order; `None` when it passes.
pub fn rule_filter(inst: &str) -> Option<Drop> {
    let words = inst.split_whitespace().count();
    if words <= 3 || words > 150 {
        return Some(Drop::WordCount { words });
    }
    if let Some((_, w)) = BLACKLIST_RE.iter().find(|(re, _)| re.is_match(inst)) {
        return Some(Drop::Blacklist {
            word: (*w).to_owned(),
        });
    }
    if inst.starts_with("Write a program") {
        return Some(Drop::WriteAProgram);
    }
    let first = inst.chars().next()?;
    if first.is_ascii_punctuation() {
        return Some(Drop::Punctuation);
    }
    if !first.is_ascii() {
        return Some(Drop::NonAscii);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(i: &str, x: &str, o: &str) -> Task {
        Task {
            instruction: i.into(),
            input: x.into(),
            output: o.into(),
        }
    }

    #[test]
    fn prompt_has_alpacas_shape() {
        let a = task("Name  a colour:", "", "Blue.");
        let b = task("Sort these.", "3 1 2", "1 2 3");
        let p = encode_prompt("HEADER", &[&a, &b]);
        assert_eq!(
            p,
            "HEADER\n###\n1. Instruction: Name a colour\n1. Input:\n<noinput>\n1. Output:\nBlue.\n\
             ###\n2. Instruction: Sort these.\n2. Input:\n3 1 2\n2. Output:\n1 2 3\n###\n3. Instruction:"
        );
    }

    #[test]
    fn parses_numbered_items_and_drops_a_truncated_last_one() {
        let text = " Give me three tips for a good night's sleep.\n4. Input:\n<noinput>\n4. Output:\nDark room.\n\
                    ###\n5. Instruction: Translate the sentence into French.\n5. Input:\nI like tea.\n5. Output:\nJ'aime le thé.\n\
                    ###\n7. Instruction: Wrong number here for the position.\n7. Input:\nx\n7. Output:\ny\n\
                    ###\n7. Instruction: Cut off";
        let got = parse_response(3, text, "length");
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[0],
            Piece::Task(task(
                "Give me three tips for a good night's sleep.",
                "",
                "Dark room."
            ))
        );
        assert_eq!(
            got[1],
            Piece::Task(task(
                "Translate the sentence into French.",
                "I like tea.",
                "J'aime le thé."
            ))
        );
        assert!(matches!(
            &got[2],
            Piece::Dropped {
                why: Drop::Unparsable,
                ..
            }
        ));
        assert!(matches!(
            &got[3],
            Piece::Dropped {
                why: Drop::Truncated,
                ..
            }
        ));
        // the same last piece, not cut: unparsable (no Input/Output)
        let got = parse_response(3, text, "stop");
        assert!(matches!(
            &got[3],
            Piece::Dropped {
                why: Drop::Unparsable,
                ..
            }
        ));
    }

    #[test]
    fn rule_filters_in_alpacas_order() {
        assert_eq!(
            rule_filter("Too short here"),
            Some(Drop::WordCount { words: 3 })
        );
        let long = "word ".repeat(151);
        assert_eq!(rule_filter(&long), Some(Drop::WordCount { words: 151 }));
        assert_eq!(
            rule_filter("Describe the IMAGE in detail please."),
            Some(Drop::Blacklist {
                word: "image".into()
            })
        );
        // whole words only: "mapping" and "profile" pass
        assert_eq!(rule_filter("Explain the mapping of this profile."), None);
        assert_eq!(
            rule_filter("Tell me how to go to the station."),
            Some(Drop::Blacklist {
                word: "go to".into()
            })
        );
        assert_eq!(
            rule_filter("Write a program that sorts numbers."),
            Some(Drop::WriteAProgram)
        );
        assert_eq!(
            rule_filter("\"Quote\" this sentence for me."),
            Some(Drop::Punctuation)
        );
        assert_eq!(
            rule_filter("¿Cómo estás hoy, amigo mío?"),
            Some(Drop::NonAscii)
        );
        assert_eq!(rule_filter("Give three tips for staying healthy."), None);
    }

    #[test]
    fn seed_tasks_load_and_errors_name_the_line() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/alpaca/seed_tasks.jsonl"
        ));
        let seeds = load_seed_tasks(path).expect("shipped seeds");
        assert_eq!(seeds.len(), 175);
        let d = draw_examples(&seeds, 1, 7);
        assert_eq!(d.len(), 3);
        assert_eq!(d, draw_examples(&seeds, 1, 7));
        assert_ne!(d, draw_examples(&seeds, 1, 8));
        let dir = tempfile::tempdir().expect("tmp");
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"instruction\":\"a\",\"instances\":[{\"input\":\"\",\"output\":\"b\"}]}\n{\"instruction\":\"a\"}\n").expect("w");
        let e = load_seed_tasks(&bad).expect_err("bad").to_string();
        assert!(e.contains("bad.jsonl:2: field `instances`"), "{e}");
    }
}
