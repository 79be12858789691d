//! `koala eval rate`: the blind pairwise rating web app, as in the Koala study's human evaluation.
//!
//! People open the page, give a name (or arrive with `/?rater=NAME`), and see one prompt above two
//! anonymous answers. They vote "A is better", "B is better", "Tie" or "Both are bad" with the
//! buttons or the keys, and can undo their last vote.
//!
//! - **Order.** The items are every (prompt, pair of systems) that both systems answered
//!   (`--pairs all|vs:NAME`). Each rater gets their own seeded random order of them, with random
//!   left/right sides, and never meets an item twice. With `--per-rater N`, rater *k* (by join
//!   order) gets the *k*-th block of `N` items of one seeded permutation, so that raters cover the
//!   items evenly before any item is rated twice.
//! - **Blindness.** The browser receives the prompt, the left and right answers and a position;
//!   never a system name, item id or side (unless the server runs with `--reveal`, which names the
//!   systems of a pair after it is voted).
//! - **Durability.** SQLite in WAL mode with `synchronous=FULL`. One writer thread commits the
//!   votes that arrive together in one transaction (group commit), and a vote is acknowledged only
//!   after its commit, so an acknowledged vote survives `kill -9`. A restarted server reads every
//!   rater's position back from the votes.
//! - **Safety.** Answers are set as text (`textContent`), so no HTML from a model ever executes.
//!
//! ```no_run
//! # async fn run() -> koala_eval::Result<()> {
//! use koala_eval::rate::{RateConfig, RateApp, build_items};
//! use koala_eval::judge::Pairs;
//! let rows = koala_eval::rows::read_jsonl(std::path::Path::new("responses.jsonl"))?;
//! let (items, _stats) = build_items(&rows, &Pairs::All)?;
//! let config = RateConfig::new("ratings.sqlite".into(), "a-long-admin-token".into());
//! let app = RateApp::open(&config, &items)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await
//!     .map_err(|e| koala_eval::Error::io("127.0.0.1:8080", e))?;
//! app.serve(listener).await?;
//! # Ok(()) }
//! ```
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::judge::{Pairs, system_pairs};
use crate::rows::{ResponseRow, Side};

/// The database: schema, reads for `status` and `export`.
pub mod db;
mod server;

pub use db::{Item, Progress, RaterProgress};
pub use server::RateApp;

/// Settings of a rating server.
#[derive(Clone, Debug)]
pub struct RateConfig {
    /// The SQLite file (created if missing).
    pub db: PathBuf,
    /// Which pairs of systems to rate (stored in the database; a restart must agree).
    pub pairs: Pairs,
    /// Items per rater; 0 means all.
    pub per_rater: u64,
    /// Seed of the orders; `None`: random for a new database, the stored one otherwise.
    pub seed: Option<u64>,
    /// Bearer token of the admin page and API.
    pub admin_token: String,
    /// Name the two systems of a pair after the rater has voted on it (off by default).
    pub reveal: bool,
}

impl RateConfig {
    /// Defaults: all pairs, every item for every rater, a random seed, no reveal.
    pub fn new(db: PathBuf, admin_token: String) -> Self {
        RateConfig {
            db,
            pairs: Pairs::All,
            per_rater: 0,
            seed: None,
            admin_token,
            reveal: false,
        }
    }
}

/// What [`build_items`] made of the responses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemStats {
    pub prompts: usize,
    pub systems: usize,
    /// (prompt, pair) left out because one of the two systems has no answer to the prompt.
    pub missing_answer: usize,
    /// Rows for a (prompt, system) already seen; the first is kept.
    pub duplicate_rows: usize,
}

/// The items to rate: for each prompt (in first-seen order), each pair of systems (`a < b` by
/// name) that both answered it.
pub fn build_items(rows: &[ResponseRow], pairs: &Pairs) -> Result<(Vec<Item>, ItemStats)> {
    let mut stats = ItemStats::default();
    let mut order: Vec<&str> = Vec::new();
    let mut by_prompt: BTreeMap<&str, BTreeMap<&str, &ResponseRow>> = BTreeMap::new();
    let mut systems = BTreeSet::new();
    for r in rows {
        systems.insert(r.system.clone());
        let e = by_prompt.entry(r.prompt_id.as_str()).or_insert_with(|| {
            order.push(r.prompt_id.as_str());
            BTreeMap::new()
        });
        if e.contains_key(r.system.as_str()) {
            stats.duplicate_rows += 1;
        } else {
            e.insert(r.system.as_str(), r);
        }
    }
    if systems.len() < 2 {
        return Err(Error::Invalid(format!(
            "the responses hold {} system(s) ({}); rating needs at least two",
            systems.len(),
            systems.iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let pairs = system_pairs(&systems, pairs)?;
    let mut items = Vec::new();
    for pid in &order {
        let answers = &by_prompt[pid];
        for (a, b) in &pairs {
            let (Some(ra), Some(rb)) = (answers.get(a.as_str()), answers.get(b.as_str())) else {
                stats.missing_answer += 1;
                continue;
            };
            items.push(Item {
                prompt_id: pid.to_string(),
                set: ra.set.clone(),
                prompt: ra.prompt.clone(),
                system_a: a.clone(),
                system_b: b.clone(),
                response_a: ra.response.clone(),
                response_b: rb.response.clone(),
            });
        }
    }
    stats.prompts = order.len();
    stats.systems = systems.len();
    if items.is_empty() {
        return Err(Error::Invalid(
            "no pair to rate: no prompt was answered by both systems of a pair".into(),
        ));
    }
    Ok((items, stats))
}

/// One rater's order: `(item index, the system shown on the left)` per position.
pub fn rater_plan(
    seed: u64,
    n_items: usize,
    per_rater: u64,
    rater: &str,
    idx: u64,
) -> Vec<(u32, Side)> {
    let total = plan_len(n_items, per_rater);
    let mut global: Vec<u32> = (0..n_items as u32).collect();
    global.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let start = (idx as usize).wrapping_mul(total) % n_items.max(1);
    let mut block: Vec<u32> = (0..total).map(|j| global[(start + j) % n_items]).collect();
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(rater.as_bytes());
    let d = h.finalize();
    let mut key = [0u8; 32];
    key.copy_from_slice(&d);
    let mut rng = ChaCha8Rng::from_seed(key);
    block.shuffle(&mut rng);
    block
        .into_iter()
        .map(|i| {
            let side = if rng.random_bool(0.5) {
                Side::A
            } else {
                Side::B
            };
            (i, side)
        })
        .collect()
}

/// A random admin token: 128 bits, hex.
pub fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A rater's number of items: `per_rater`, or all when it is 0 or above the item count.
pub fn plan_len(n_items: usize, per_rater: u64) -> usize {
    if per_rater == 0 || per_rater as usize >= n_items {
        n_items
    } else {
        per_rater as usize
    }
}

/// Checks a rater's name: 1 to 64 characters after trimming, no control characters, and not
/// `judge:…` (the LLM judge's rater names).
pub fn check_rater_name(name: &str) -> std::result::Result<&str, String> {
    let n = name.trim();
    if n.is_empty() {
        return Err("the rater name is empty".into());
    }
    if n.chars().count() > 64 {
        return Err("the rater name is longer than 64 characters".into());
    }
    if n.chars().any(char::is_control) {
        return Err("the rater name has control characters".into());
    }
    if n.starts_with("judge:") {
        return Err("rater names starting with \"judge:\" are kept for the LLM judge".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: &str, sys: &str, resp: &str) -> ResponseRow {
        ResponseRow {
            prompt_id: pid.into(),
            set: "koala".into(),
            prompt: format!("prompt {pid}"),
            system: sys.into(),
            response: resp.into(),
            finish_reason: "stop".into(),
            latency_ms: 1,
            usage: None,
        }
    }

    #[test]
    fn items_cover_answered_pairs_only() {
        let rows = vec![
            row("p1", "z", "z1"),
            row("p1", "a", "a1"),
            row("p1", "m", "m1"),
            row("p0", "a", "a0"),
            row("p0", "z", "z0"),
            row("p0", "z", "z0 again"),
        ];
        let (items, stats) = build_items(&rows, &Pairs::All).unwrap();
        let got: Vec<(&str, &str, &str, &str)> = items
            .iter()
            .map(|i| {
                (
                    i.prompt_id.as_str(),
                    i.system_a.as_str(),
                    i.system_b.as_str(),
                    i.response_b.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("p1", "a", "m", "m1"),
                ("p1", "a", "z", "z1"),
                ("p1", "m", "z", "z1"),
                ("p0", "a", "z", "z0"),
            ]
        );
        assert_eq!(stats.missing_answer, 2);
        assert_eq!(stats.duplicate_rows, 1);
        let (vs, _) = build_items(&rows, &Pairs::Versus("z".into())).unwrap();
        assert!(vs.iter().all(|i| i.system_a == "z" || i.system_b == "z"));
        assert_eq!(vs.len(), 3);
        assert!(build_items(&rows[..2], &Pairs::Versus("q".into())).is_err());
        assert!(build_items(&[row("p", "a", "x")], &Pairs::All).is_err());
    }

    #[test]
    fn plans_are_permutations_seeded_per_rater() {
        let p = rater_plan(7, 50, 0, "ann", 0);
        let mut ids: Vec<u32> = p.iter().map(|x| x.0).collect();
        ids.sort();
        assert_eq!(ids, (0..50).collect::<Vec<_>>());
        assert_eq!(p, rater_plan(7, 50, 0, "ann", 0));
        assert_ne!(p, rater_plan(7, 50, 0, "bob", 1));
        assert_ne!(p, rater_plan(8, 50, 0, "ann", 0));
        let lefts_a = p.iter().filter(|x| x.1 == Side::A).count();
        assert!((10..=40).contains(&lefts_a), "{lefts_a}");
    }

    #[test]
    fn per_rater_blocks_cover_items_evenly() {
        // 4 raters × 5 items over 20 items: every item exactly once.
        let mut seen = vec![0; 20];
        for k in 0..4u64 {
            let p = rater_plan(3, 20, 5, &format!("r{k}"), k);
            assert_eq!(p.len(), 5);
            for (i, _) in p {
                seen[i as usize] += 1;
            }
        }
        assert_eq!(seen, vec![1; 20]);
    }

    #[test]
    fn rater_names_are_checked() {
        assert_eq!(check_rater_name("  ann "), Ok("ann"));
        assert!(check_rater_name(" ").is_err());
        assert!(check_rater_name("judge:gpt").is_err());
        assert!(check_rater_name("a\nb").is_err());
        assert!(check_rater_name(&"x".repeat(65)).is_err());
    }
}
