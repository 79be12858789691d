//! The rating database: SQLite in WAL mode, `synchronous=FULL`.
//!
//! Tables:
//! - `meta(key, value)`: schema version, the seed, `--pairs`, `--per-rater`, and the SHA-256 of
//!   the items, so that a restart over other responses is refused instead of mixing votes;
//! - `items(id, prompt_id, set_name, prompt, system_a, system_b, response_a, response_b)`: the
//!   (prompt, pair of systems) to rate, `system_a < system_b` by name;
//! - `raters(name, idx, total, joined_ts)`: `idx` is the join order (it picks the rater's block of
//!   items when `--per-rater` is below the item count), `total` the rater's number of pairs;
//! - `votes(rater, pos, item_id, winner, left_side, ts)`: one row per vote, keyed by (rater,
//!   position in the rater's order), `winner` from `system_a`'s side;
//! - `undone(...)`: votes taken back with undo, kept for the record.
//!
//! Only the server's writer thread writes (see `server.rs`); `eval status` and `eval export` open
//! the file read-only, which WAL allows while the server runs.
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::rows::{RatingRow, Side, Winner};

/// The schema version in `meta`.
const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    prompt_id TEXT NOT NULL,
    set_name TEXT NOT NULL,
    prompt TEXT NOT NULL,
    system_a TEXT NOT NULL,
    system_b TEXT NOT NULL,
    response_a TEXT NOT NULL,
    response_b TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS raters (
    name TEXT PRIMARY KEY,
    idx INTEGER NOT NULL UNIQUE,
    total INTEGER NOT NULL,
    joined_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    rater TEXT NOT NULL REFERENCES raters(name),
    pos INTEGER NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items(id),
    winner TEXT NOT NULL,
    left_side TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (rater, pos)
);
CREATE TABLE IF NOT EXISTS undone (
    rater TEXT NOT NULL,
    pos INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    winner TEXT NOT NULL,
    left_side TEXT NOT NULL,
    ts INTEGER NOT NULL,
    undone_ts INTEGER NOT NULL
);
";

/// One (prompt, pair of systems) to rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub prompt_id: String,
    pub set: String,
    pub prompt: String,
    /// `system_a < system_b` by name.
    pub system_a: String,
    pub system_b: String,
    pub response_a: String,
    pub response_b: String,
}

/// The settings a database is made with; a restart must give the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbSettings {
    pub seed: u64,
    /// `all` or `vs:NAME`.
    pub pairs: String,
    /// 0: every rater rates every item.
    pub per_rater: u64,
}

/// A rater's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaterRow {
    pub name: String,
    pub idx: u64,
    pub total: u64,
    pub joined_ts: i64,
}

/// One rater's progress, for `eval status` and the admin page.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RaterProgress {
    pub name: String,
    pub done: u64,
    pub total: u64,
    pub undone: u64,
    /// Unix ms of the last vote (0 if none).
    pub last_vote_ts: i64,
}

/// The whole database's progress.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub items: u64,
    pub votes: u64,
    pub raters: Vec<RaterProgress>,
}

fn sql(path: &Path, e: rusqlite::Error) -> Error {
    Error::Invalid(format!("{}: SQLite: {e}", path.display()))
}

/// SHA-256 over the items, in order, length-prefixed.
pub fn items_digest(items: &[Item]) -> String {
    let mut h = Sha256::new();
    for it in items {
        for part in [
            &it.prompt_id,
            &it.set,
            &it.prompt,
            &it.system_a,
            &it.system_b,
            &it.response_a,
            &it.response_b,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the database for the server: creates it with `items` and `settings`, or checks that an
/// existing one was made from the same items and settings. Returns the connection, the items as
/// stored, and the settings as stored.
pub fn open_for_server(
    path: &Path,
    items: &[Item],
    settings: &DbSettings,
) -> Result<(Connection, Vec<Item>, DbSettings)> {
    let conn = Connection::open(path).map_err(|e| sql(path, e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| sql(path, e))?;
    // FULL: a vote is on disk, WAL included, before the server acknowledges it.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| sql(path, e))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| sql(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| sql(path, e))?;
    conn.execute_batch(SCHEMA).map_err(|e| sql(path, e))?;
    let digest = items_digest(items);
    let existing = meta(&conn, "items_sha256").map_err(|e| sql(path, e))?;
    match existing {
        None => {
            let tx = conn.unchecked_transaction().map_err(|e| sql(path, e))?;
            {
                let mut ins = tx
                    .prepare(
                        "INSERT INTO items (id, prompt_id, set_name, prompt, system_a, system_b,
                         response_a, response_b) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .map_err(|e| sql(path, e))?;
                for (i, it) in items.iter().enumerate() {
                    ins.execute(params![
                        i as i64,
                        it.prompt_id,
                        it.set,
                        it.prompt,
                        it.system_a,
                        it.system_b,
                        it.response_a,
                        it.response_b
                    ])
                    .map_err(|e| sql(path, e))?;
                }
                let mut m = tx
                    .prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")
                    .map_err(|e| sql(path, e))?;
                for (k, v) in [
                    ("schema_version", SCHEMA_VERSION.to_string()),
                    ("items_sha256", digest.clone()),
                    ("seed", settings.seed.to_string()),
                    ("pairs", settings.pairs.clone()),
                    ("per_rater", settings.per_rater.to_string()),
                    ("created_ts", now_ms().to_string()),
                ] {
                    m.execute(params![k, v]).map_err(|e| sql(path, e))?;
                }
            }
            tx.commit().map_err(|e| sql(path, e))?;
            Ok((conn, items.to_vec(), settings.clone()))
        }
        Some(d) => {
            let stored = read_settings(&conn).map_err(|e| sql(path, e))?;
            if d != digest {
                return Err(Error::Invalid(format!(
                    "{}: this rating database was made from other responses (or other --pairs); \
                     rate them with a new --db, or give the responses it was made from",
                    path.display()
                )));
            }
            if stored.pairs != settings.pairs || stored.per_rater != settings.per_rater {
                return Err(Error::Invalid(format!(
                    "{}: made with --pairs {} --per-rater {}, not --pairs {} --per-rater {}",
                    path.display(),
                    stored.pairs,
                    stored.per_rater,
                    settings.pairs,
                    settings.per_rater
                )));
            }
            let items = read_items(&conn).map_err(|e| sql(path, e))?;
            Ok((conn, items, stored))
        }
    }
}

/// Opens an existing database read-only (`eval status`, `eval export`).
pub fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "{}: no such rating database",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| sql(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| sql(path, e))?;
    match meta(&conn, "schema_version") {
        Ok(Some(v)) if v == SCHEMA_VERSION => Ok(conn),
        Ok(Some(v)) => Err(Error::Invalid(format!(
            "{}: rating database schema {v}, this build reads {SCHEMA_VERSION}",
            path.display()
        ))),
        Ok(None) | Err(_) => Err(Error::Invalid(format!(
            "{}: not a rating database (made by `koala eval rate`)",
            path.display()
        ))),
    }
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn read_settings(conn: &Connection) -> rusqlite::Result<DbSettings> {
    let num = |k: &str| -> rusqlite::Result<u64> {
        Ok(meta(conn, k)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    };
    Ok(DbSettings {
        seed: num("seed")?,
        pairs: meta(conn, "pairs")?.unwrap_or_else(|| "all".into()),
        per_rater: num("per_rater")?,
    })
}

fn read_items(conn: &Connection) -> rusqlite::Result<Vec<Item>> {
    let mut st = conn.prepare(
        "SELECT prompt_id, set_name, prompt, system_a, system_b, response_a, response_b
         FROM items ORDER BY id",
    )?;
    st.query_map([], |r| {
        Ok(Item {
            prompt_id: r.get(0)?,
            set: r.get(1)?,
            prompt: r.get(2)?,
            system_a: r.get(3)?,
            system_b: r.get(4)?,
            response_a: r.get(5)?,
            response_b: r.get(6)?,
        })
    })?
    .collect()
}

/// Every rater, in join order.
pub fn read_raters(conn: &Connection) -> rusqlite::Result<Vec<RaterRow>> {
    let mut st = conn.prepare("SELECT name, idx, total, joined_ts FROM raters ORDER BY idx")?;
    st.query_map([], |r| {
        Ok(RaterRow {
            name: r.get(0)?,
            idx: r.get::<_, i64>(1)? as u64,
            total: r.get::<_, i64>(2)? as u64,
            joined_ts: r.get(3)?,
        })
    })?
    .collect()
}

/// Votes per rater: the count (= the next position, since votes fill positions 0..n).
pub fn vote_counts(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut st = conn.prepare("SELECT rater, COUNT(*) FROM votes GROUP BY rater")?;
    st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect()
}

/// Progress per rater.
pub fn progress(path: &Path, conn: &Connection) -> Result<Progress> {
    let q = || -> rusqlite::Result<Progress> {
        let items: i64 = conn.query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0))?;
        let mut st = conn.prepare(
            "SELECT r.name, r.total,
                    (SELECT COUNT(*) FROM votes v WHERE v.rater = r.name),
                    (SELECT COUNT(*) FROM undone u WHERE u.rater = r.name),
                    (SELECT COALESCE(MAX(ts), 0) FROM votes v WHERE v.rater = r.name)
             FROM raters r ORDER BY r.idx",
        )?;
        let raters = st
            .query_map([], |r| {
                Ok(RaterProgress {
                    name: r.get(0)?,
                    total: r.get::<_, i64>(1)? as u64,
                    done: r.get::<_, i64>(2)? as u64,
                    undone: r.get::<_, i64>(3)? as u64,
                    last_vote_ts: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Progress {
            items: items as u64,
            votes: raters.iter().map(|r| r.done).sum(),
            raters,
        })
    };
    q().map_err(|e| sql(path, e))
}

/// One vote as stored, before its text columns are checked.
struct StoredVote {
    prompt_id: String,
    system_a: String,
    system_b: String,
    winner: String,
    rater: String,
    left: String,
    ts: i64,
    set: String,
}

/// Every vote as a rating row, by rater and position.
pub fn export(path: &Path, conn: &Connection) -> Result<Vec<RatingRow>> {
    let q = || -> rusqlite::Result<Vec<StoredVote>> {
        let mut st = conn.prepare(
            "SELECT i.prompt_id, i.system_a, i.system_b, v.winner, v.rater, v.left_side, v.ts,
                    i.set_name
             FROM votes v JOIN items i ON i.id = v.item_id
             JOIN raters r ON r.name = v.rater
             ORDER BY r.idx, v.pos",
        )?;
        st.query_map([], |r| {
            Ok(StoredVote {
                prompt_id: r.get(0)?,
                system_a: r.get(1)?,
                system_b: r.get(2)?,
                winner: r.get(3)?,
                rater: r.get(4)?,
                left: r.get(5)?,
                ts: r.get(6)?,
                set: r.get(7)?,
            })
        })?
        .collect()
    };
    let rows = q().map_err(|e| sql(path, e))?;
    rows.into_iter()
        .map(|v| {
            let StoredVote {
                prompt_id,
                system_a,
                system_b,
                winner: w,
                rater,
                left: l,
                ts,
                set,
            } = v;
            let winner = winner_from_str(&w).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: vote of {rater} on {prompt_id} has winner {w:?}",
                    path.display()
                ))
            })?;
            let left = match l.as_str() {
                "a" => Side::A,
                "b" => Side::B,
                _ => {
                    return Err(Error::Invalid(format!(
                        "{}: vote of {rater} on {prompt_id} has left side {l:?}",
                        path.display()
                    )));
                }
            };
            Ok(RatingRow {
                prompt_id,
                system_a,
                system_b,
                winner,
                rater,
                left,
                ts,
                set: Some(set),
            })
        })
        .collect()
}

/// The stored name of a winner.
pub fn winner_str(w: Winner) -> &'static str {
    match w {
        Winner::A => "a",
        Winner::B => "b",
        Winner::Tie => "tie",
        Winner::BothBad => "both_bad",
    }
}

fn winner_from_str(s: &str) -> Option<Winner> {
    Some(match s {
        "a" => Winner::A,
        "b" => Winner::B,
        "tie" => Winner::Tie,
        "both_bad" => Winner::BothBad,
        _ => return None,
    })
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
