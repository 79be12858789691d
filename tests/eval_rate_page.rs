//! The blind rating page of `koala eval rate` in a real browser: headless Chromium driven through
//! chromedriver (WebDriver), against the `koala` binary.
//!
//! A rater gives a name and votes with the keyboard and the mouse; undoes a vote; reloads the
//! page; the server is killed with SIGKILL and restarted on the same database and port, and the
//! rater carries on where they stopped. Then a second rater arrives with `/?rater=NAME`, the page
//! is checked at phone width, the admin page is opened with and without its token, and the
//! database is read back with `koala eval status` and `koala eval export`: every acknowledged
//! vote is there, with the winner the rater picked. Throughout, the page must never hold a
//! system name, and answers holding HTML must show as text and never run.
//!
//! Each system writes its answers with a code word that only this test maps back to the system,
//! so the test can check the stored winner against what was on screen without the page knowing.
//! Screenshots go to `target/eval_rate*.png`.
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Instant;

use common::browser::{
    Cleanup, WAIT, browser_programs, js, open_session, screenshot, set_viewport,
    start_chromedriver, start_listening,
};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

/// System names (never shown) and the code words their answers carry.
const SYSTEMS: [(&str, &str); 3] = [
    ("sys-alpaca-7b", "TULIP"),
    ("sys-koala-13b", "MAPLE"),
    ("sys-vicuna-x", "CEDAR"),
];
const PROMPTS: usize = 3;
const TOKEN: &str = "admin-secret-token";

fn write_responses(path: &Path) {
    let mut out = String::new();
    for p in 0..PROMPTS {
        for (sys, word) in SYSTEMS {
            let response = format!(
                "{word} answer to question {p}.\n  Indented line.\n\
                 <img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>\
                 <b>not bold</b>"
            );
            out.push_str(
                &json!({
                    "prompt_id": format!("koala_{p}"),
                    "set": "koala",
                    "prompt": format!("Question {p}: what is <i>this</i>?"),
                    "system": sys,
                    "response": response,
                    "finish_reason": "stop",
                    "latency_ms": 5,
                    "usage": null,
                })
                .to_string(),
            );
            out.push('\n');
        }
    }
    std::fs::write(path, out).unwrap();
}

/// Starts `koala eval rate` on `listen`; returns the child's index in `cleanup` and the address it
/// printed.
fn start_rate(cleanup: &mut Cleanup, dir: &Path, listen: &str, log: &str) -> (usize, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_koala"));
    cmd.args(["eval", "rate", "--responses"])
        .arg(dir.join("responses.jsonl"))
        .arg("--db")
        .arg(dir.join("ratings.sqlite"))
        .args(["--listen", listen, "--seed", "5", "--token-file"])
        .arg(dir.join("token"));
    start_listening(cleanup, "koala eval rate", cmd, log)
}

fn kill9(cleanup: &mut Cleanup, index: usize) {
    let (_, mut child): (&str, Child) = cleanup.children.remove(index);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Waits until `script` returns something other than null/false.
async fn wait_js(c: &Client, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = js(c, script).await;
        if !v.is_null() && v != Value::Bool(false) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What the page shows: position, prompt, left and right text.
async fn shown(c: &Client) -> (u64, String, String, String) {
    let v = js(
        c,
        "return [Number(document.body.dataset.pos), document.getElementById('prompt').textContent,
                 document.getElementById('left').textContent,
                 document.getElementById('right').textContent]",
    )
    .await;
    (
        v[0].as_u64().unwrap(),
        v[1].as_str().unwrap().to_string(),
        v[2].as_str().unwrap().to_string(),
        v[3].as_str().unwrap().to_string(),
    )
}

/// Waits for the page to be ready at `pos` (or done).
async fn wait_pos(c: &Client, pos: u64) {
    wait_js(
        c,
        &format!("position {pos}"),
        &format!(
            "const s = document.body.dataset.state;
             return (s === 'ready' || s === 'done') && document.body.dataset.pos === '{pos}'"
        ),
    )
    .await;
}

fn system_of(text: &str) -> &'static str {
    SYSTEMS
        .iter()
        .find(|(_, w)| text.starts_with(w))
        .unwrap_or_else(|| panic!("no code word in {text:?}"))
        .0
}

async fn press(c: &Client, key: &str) {
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
}

async fn click(c: &Client, id: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The page's whole text and markup hold no system name.
async fn assert_blind(c: &Client) {
    let html = js(c, "return document.documentElement.outerHTML").await;
    let html = html.as_str().unwrap();
    for (sys, _) in SYSTEMS {
        assert!(!html.contains(sys), "the page shows system name {sys}");
    }
}

fn koala(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "koala {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rating_page_votes_undoes_survives_kill_and_stays_blind() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_responses(&dir.path().join("responses.jsonl"));
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();

    let mut cleanup = Cleanup::default();
    let (server, addr) = start_rate(
        &mut cleanup,
        dir.path(),
        "127.0.0.1:0",
        "eval_rate_server.log",
    );
    let base = format!("http://{addr}");
    let driver_port =
        start_chromedriver(&mut cleanup, &chromedriver, "eval_rate_chromedriver.log").await;
    let (c, _profile) = open_session(&mut cleanup, &chromium, driver_port).await;

    // Nothing the server sends before a vote names a system.
    let http = reqwest::Client::new();
    for path in [
        "/",
        "/rate.js",
        "/admin",
        "/admin.js",
        "/api/state?rater=probe",
    ] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        if path == "/" {
            let csp = resp.headers()["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("script-src 'self'"), "{csp}");
        }
        let body = resp.text().await.unwrap();
        for (sys, _) in SYSTEMS {
            assert!(!body.contains(sys), "GET {path} names {sys}");
        }
    }

    // ---- a rater gives a name ----
    c.goto(&format!("{base}/")).await.unwrap();
    set_viewport(&c, 1280, 900).await;
    wait_js(
        &c,
        "the name form",
        "return document.body.dataset.state === 'name'",
    )
    .await;
    let name = c.find(Locator::Id("name")).await.unwrap();
    name.send_keys("ann\u{E007}").await.unwrap();
    wait_pos(&c, 0).await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/?rater=ann")
    );
    assert_eq!(
        js(&c, "return document.getElementById('progress').textContent").await,
        json!("Pair 1 of 9")
    );
    // HTML in prompts and answers is text: nothing ran, no element was made.
    let (_, prompt, left, _) = shown(&c).await;
    assert!(prompt.contains("<i>this</i>"), "{prompt}");
    assert!(
        left.contains("<img src=x") && left.contains("\n  Indented line."),
        "{left}"
    );
    assert_eq!(
        js(
            &c,
            "return [typeof window.__pwned, document.querySelectorAll('#rating img, #rating script, #rating b, #rating i').length]"
        )
        .await,
        json!(["undefined", 0])
    );
    assert_blind(&c).await;
    screenshot(&c, "eval_rate_page.png").await;

    // ---- votes: keyboard, mouse, keyboard, mouse; then undo ----
    // (what was shown, the choice) per position, to check against the database.
    let mut votes: Vec<((String, String, String), &str)> = Vec::new();
    let steps: [(&str, bool, &str); 4] = [
        ("1", true, "left"),
        ("vote-right", false, "right"),
        ("3", true, "tie"),
        ("vote-both-bad", false, "both_bad"),
    ];
    for (k, (what, keyboard, choice)) in steps.into_iter().enumerate() {
        let (pos, p, l, r) = shown(&c).await;
        assert_eq!(pos, k as u64);
        if keyboard {
            press(&c, what).await;
        } else {
            click(&c, what).await;
        }
        wait_pos(&c, k as u64 + 1).await;
        votes.push(((p, l, r), choice));
    }
    let before_undo = shown(&c).await;
    press(&c, "u").await;
    wait_pos(&c, 3).await;
    let (_, p, l, r) = shown(&c).await;
    assert_eq!(
        (p.clone(), l.clone(), r.clone()),
        votes[3].0,
        "undo shows the last pair again"
    );
    votes.pop();
    // Vote it again, differently, with the arrow key.
    press(&c, "\u{E012}").await; // ArrowLeft
    wait_pos(&c, 4).await;
    votes.push(((p, l, r), "left"));
    assert_eq!(shown(&c).await, before_undo);

    // ---- reload: the same pair ----
    c.refresh().await.unwrap();
    wait_pos(&c, 4).await;
    assert_eq!(shown(&c).await, before_undo);

    // ---- kill -9 and restart on the same port and database ----
    kill9(&mut cleanup, server);
    let (_, addr2) = start_rate(
        &mut cleanup,
        dir.path(),
        &addr.to_string(),
        "eval_rate_server2.log",
    );
    assert_eq!(addr2, addr);
    c.refresh().await.unwrap();
    wait_pos(&c, 4).await;
    assert_eq!(
        shown(&c).await,
        before_undo,
        "the restart resumes the rater"
    );
    let (_, p, l, r) = shown(&c).await;
    press(&c, "2").await;
    wait_pos(&c, 5).await;
    votes.push(((p, l, r), "right"));
    assert_blind(&c).await;

    // ---- phone width: one column, nothing wider than the screen ----
    set_viewport(&c, 390, 800).await;
    let phone = js(
        &c,
        "const a = document.querySelectorAll('.answer');
         const r0 = a[0].getBoundingClientRect(), r1 = a[1].getBoundingClientRect();
         const b = document.getElementById('vote-both-bad').getBoundingClientRect();
         return [document.documentElement.scrollWidth <= window.innerWidth,
                 r1.top >= r0.bottom, b.right <= window.innerWidth]",
    )
    .await;
    assert_eq!(phone, json!([true, true, true]));
    screenshot(&c, "eval_rate_phone.png").await;
    set_viewport(&c, 1280, 900).await;

    // ---- a second rater arrives by link: their first pair at once, in their own order ----
    c.goto(&format!("{base}/?rater=bob")).await.unwrap();
    wait_pos(&c, 0).await;
    let bob_first = shown(&c).await;
    click(&c, "vote-tie").await;
    wait_pos(&c, 1).await;
    assert_blind(&c).await;

    // ---- admin: refused without the token, progress with it ----
    c.goto(&format!("{base}/admin")).await.unwrap();
    let t = c.find(Locator::Id("token")).await.unwrap();
    t.send_keys("wrong\u{E007}").await.unwrap();
    wait_js(
        &c,
        "the admin error",
        "return document.getElementById('error').textContent.includes('token') || null",
    )
    .await;
    c.goto(&format!("{base}/admin#token={TOKEN}"))
        .await
        .unwrap();
    let rows = wait_js(
        &c,
        "the admin table",
        "if (document.body.dataset.loaded !== '1') return null;
         return [...document.querySelectorAll('#rows tr')].map(tr =>
             [...tr.children].slice(0, 4).map(td => td.textContent))",
    )
    .await;
    // "probe" is the rater whose state the HTTP checks above asked for: asking registers a rater.
    assert_eq!(
        rows,
        json!([
            ["probe", "0", "9", "0"],
            ["ann", "5", "9", "1"],
            ["bob", "1", "9", "0"]
        ])
    );
    screenshot(&c, "eval_rate_admin.png").await;

    cleanup.session = None;
    c.close().await.unwrap();

    // ---- the database: status and export, with the winners the raters picked ----
    let db = dir.path().join("ratings.sqlite");
    let status = koala(&[
        "eval".as_ref(),
        "status".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
    ]);
    assert!(
        status.contains("6 votes from 3 raters on 9 pairs"),
        "{status}"
    );
    let out = dir.path().join("ratings.jsonl");
    koala(&[
        "eval".as_ref(),
        "export".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let exported: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), 6);
    votes.push(((bob_first.1, bob_first.2, bob_first.3), "tie"));
    let raters = ["ann", "ann", "ann", "ann", "ann", "bob"];
    for (k, (row, ((prompt, left, right), choice))) in exported.iter().zip(&votes).enumerate() {
        assert_eq!(row["rater"], raters[k], "{row}");
        let (sl, sr) = (system_of(left), system_of(right));
        let (a, b) = if sl < sr { (sl, sr) } else { (sr, sl) };
        assert_eq!(row["system_a"], a, "{row}");
        assert_eq!(row["system_b"], b, "{row}");
        let p = prompt
            .split(':')
            .next()
            .unwrap()
            .trim_start_matches("Question ");
        assert_eq!(row["prompt_id"], format!("koala_{p}"), "{row}");
        assert_eq!(row["left"], if sl == a { "a" } else { "b" }, "{row}");
        let winner = match *choice {
            "left" => {
                if sl == a {
                    "a"
                } else {
                    "b"
                }
            }
            "right" => {
                if sr == a {
                    "a"
                } else {
                    "b"
                }
            }
            other => other,
        };
        assert_eq!(row["winner"], winner, "vote {k}: {row}");
        assert_eq!(row["set"], "koala");
    }
    // A rater never meets the same (prompt, pair) twice.
    let mut seen = std::collections::BTreeSet::new();
    for row in exported.iter().filter(|r| r["rater"] == "ann") {
        assert!(seen.insert((
            row["prompt_id"].to_string(),
            row["system_a"].to_string(),
            row["system_b"].to_string()
        )));
    }
}
