//! The chat page of `koala serve-model` in a real browser: headless Chromium driven through
//! chromedriver (WebDriver), against the `koala` binary serving the tiny test model.
//!
//! It checks that the model list loads, that a streamed reply equals the non-streamed
//! `POST /v1/chat/completions` for the same messages at temperature 0 (one turn, then two turns
//! with the history), that text typed by the user or written by the model is shown as text and
//! never parsed as HTML, that a server error shows in the banner and gives the text back, that
//! Stop aborts a long generation and keeps the partial reply, that "New chat" clears the
//! conversation, that the settings fold away on a narrow screen, and that against a server with
//! `--token-file` the page shows the 401 and works once the token is typed (kept in localStorage
//! only while "remember" is ticked). Screenshots go to `target/chat_page*.png`.
//!
//! Needs `chromium` and `chromedriver` (see `tests/common/browser.rs`).
mod common;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::browser::{
    Cleanup, WAIT, browser_programs, js, open_session, screenshot, set_viewport,
    start_chromedriver, start_listening,
};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

/// Starts `koala serve-model` on a free port with `extra` arguments, its stderr in
/// `target/<log>`; returns its address from the listening line.
fn start_server(cleanup: &mut Cleanup, extra: &[&OsStr], log: &str) -> SocketAddr {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_koala"));
    cmd.args(["serve-model", "--model"])
        .arg(root.join("model/tests/fixtures/tiny_hf"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra);
    start_listening(cleanup, "koala serve-model", cmd, log).1
}

/// Runs `script` in the page until it returns something other than null/false; returns that.
/// Fails at once if the page's error banner shows (unless the banner is what we wait for).
async fn wait_js(c: &Client, what: &str, script: &str) -> Value {
    wait_js_inner(c, what, script, false).await
}

async fn wait_js_inner(c: &Client, what: &str, script: &str, error_expected: bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = c.execute(script, vec![]).await.unwrap();
        if !v.is_null() && v != Value::Bool(false) {
            return v;
        }
        let banner = js(
            c,
            "const e = document.getElementById('error');
             return e.hidden ? null : document.getElementById('error-text').textContent",
        )
        .await;
        assert!(
            error_expected || banner.is_null(),
            "the page shows an error while waiting for {what}: {banner}"
        );
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_field(c: &Client, id: &str, value: &str) {
    let e = c.find(Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn type_message(c: &Client, text: &str) {
    let e = c.find(Locator::Id("input")).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

/// Waits for the `n`th (0-based) assistant message to end; returns (data-finish, text).
async fn wait_reply(c: &Client, n: usize) -> (String, String) {
    let v = wait_js(
        c,
        &format!("assistant message {n} to finish"),
        &format!(
            "const m = document.querySelectorAll('#messages .msg.assistant')[{n}];
             if (!m || !m.dataset.finish) return null;
             return {{finish: m.dataset.finish, text: m.querySelector('.text').textContent}};"
        ),
    )
    .await;
    (
        v["finish"].as_str().unwrap().to_string(),
        v["text"].as_str().unwrap().to_string(),
    )
}

/// The non-streamed reply to `messages` with the page's settings at temperature 0.
async fn direct_reply(base: &str, model: &str, messages: &Value, max_tokens: u64) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": model,
            "messages": messages,
            "temperature": 0,
            "top_p": 1,
            "top_k": 50,
            "max_tokens": max_tokens,
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert!(
        status.is_success(),
        "POST /v1/chat/completions: {status} {body}"
    );
    body["choices"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_streams_stops_and_escapes() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };

    let mut cleanup = Cleanup::default();
    let addr = start_server(&mut cleanup, &[], "chat_page_server.log");
    let base = format!("http://{addr}");
    let driver_port =
        start_chromedriver(&mut cleanup, &chromedriver, "chat_page_chromedriver.log").await;
    let (c, _profile) = open_session(&mut cleanup, &chromium, driver_port).await;

    // ---- the page loads and lists the served model ----
    c.goto(&format!("{base}/")).await.unwrap();
    set_viewport(&c, 1280, 900).await;
    assert_eq!(c.title().await.unwrap(), "koala chat");
    let model = wait_js(
        &c,
        "the model list",
        "return document.getElementById('model').value || null",
    )
    .await;
    let model = model.as_str().unwrap().to_string();
    let listed: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["id"], model.as_str(), "{listed}");
    let defaults = js(
        &c,
        "return ['temperature','top_p','top_k','max_tokens'].map(id => document.getElementById(id).value)",
    )
    .await;
    assert_eq!(defaults, json!(["0.7", "1", "50", "256"]));

    set_field(&c, "temperature", "0").await;
    set_field(&c, "max_tokens", "24").await;

    // Shift+Enter is a newline, not a send.
    let input = c.find(Locator::Id("input")).await.unwrap();
    input
        .send_keys("line one\u{E008}\u{E007}\u{E000}line two")
        .await
        .unwrap();
    assert_eq!(
        js(&c, "return [document.getElementById('input').value, document.querySelectorAll('#messages .msg').length]").await,
        json!(["line one\nline two", 0])
    );

    // ---- one turn: the streamed reply equals the non-streamed one ----
    let first = "Hello koala, how are you?";
    type_message(&c, first).await;
    c.find(Locator::Id("send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let (finish1, reply1) = wait_reply(&c, 0).await;
    assert!(!reply1.is_empty(), "empty reply (finish {finish1})");
    let mut history = json!([{"role": "user", "content": first}]);
    let want = direct_reply(&base, &model, &history, 24).await;
    assert_eq!(reply1, want["message"]["content"].as_str().unwrap());
    assert_eq!(finish1, want["finish_reason"].as_str().unwrap());
    let meta = js(
        &c,
        "return document.querySelector('#messages .msg.assistant .meta').textContent",
    )
    .await;
    let meta = meta.as_str().unwrap();
    assert!(meta.contains(&format!("stopped: {finish1}")), "{meta}");
    assert!(meta.contains("completion"), "usage missing from {meta:?}");

    // ---- two turns (sent with Enter), with markup typed by the user ----
    let second = "Is <b>bold</b> & <i>this</i> shown literally? <img src=x onerror=alert(1)>";
    type_message(&c, &format!("{second}\u{E007}")).await;
    let (finish2, reply2) = wait_reply(&c, 1).await;
    history.as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": reply1}),
        json!({"role": "user", "content": second}),
    ]);
    let want = direct_reply(&base, &model, &history, 24).await;
    assert_eq!(reply2, want["message"]["content"].as_str().unwrap());
    assert_eq!(finish2, want["finish_reason"].as_str().unwrap());
    let shown = js(
        &c,
        "const users = document.querySelectorAll('#messages .msg.user .text');
         return {text: users[1].textContent, children: users[1].children.length,
                 markup: document.querySelectorAll('#messages b, #messages i, #messages img').length}",
    )
    .await;
    assert_eq!(shown, json!({"text": second, "children": 0, "markup": 0}));
    screenshot(&c, "chat_page.png").await;

    // ---- a server error shows in the banner and gives the text back ----
    js(
        &c,
        "const o = document.createElement('option'); o.value = o.textContent = 'no-such-model';
         const s = document.getElementById('model'); s.appendChild(o); s.value = 'no-such-model';",
    )
    .await;
    type_message(&c, "this goes to a model that does not exist").await;
    c.find(Locator::Id("send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let error = wait_js_inner(
        &c,
        "the error banner",
        "const e = document.getElementById('error');
         return e.hidden ? null : document.getElementById('error-text').textContent",
        true,
    )
    .await;
    let error = error.as_str().unwrap();
    assert!(
        error.contains("404") && error.contains("no-such-model"),
        "{error}"
    );
    assert_eq!(
        js(&c, "return [document.getElementById('input').value, document.querySelectorAll('#messages .msg').length]").await,
        json!(["this goes to a model that does not exist", 4])
    );
    js(
        &c,
        "const s = document.getElementById('model'); s.querySelector('option[value=\"no-such-model\"]').remove();
         s.selectedIndex = 0; document.getElementById('error-close').click();",
    )
    .await;

    // ---- New chat clears; Stop aborts a long generation and keeps the partial reply ----
    c.find(Locator::Id("new-chat"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        js(&c, "return [document.querySelectorAll('#messages .msg').length, document.getElementById('input').value, document.getElementById('error').hidden]").await,
        json!([0, "", true])
    );
    // The tiny model's context is 256 tokens, and the server refuses a longer max_tokens.
    let long = 200;
    set_field(&c, "max_tokens", &long.to_string()).await;
    // The tiny model writes its whole reply in a blink: slow the browser's download (through
    // chromedriver's network-conditions command) so that Stop lands mid-stream.
    throttle(driver_port, cleanup.session.as_deref().unwrap(), Some(800)).await;
    // At temperature 0 the tiny model answers this with 200 tokens (no end-of-text before).
    let third = "Please keep talking";
    type_message(&c, third).await;
    c.find(Locator::Id("send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let streaming = wait_js(
        &c,
        "the first streamed text",
        "const m = document.querySelector('#messages .msg.assistant');
         return m && (m.querySelector('.text').textContent.length > 0 || m.dataset.finish)
           ? {finish: m.dataset.finish || null} : null",
    )
    .await;
    assert!(
        streaming["finish"].is_null(),
        "the reply ended before Stop could be pressed: {streaming}"
    );
    assert_eq!(
        js(&c, "return [document.getElementById('send').disabled, document.getElementById('stop').disabled]").await,
        json!([true, false])
    );
    c.find(Locator::Id("stop"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let (finish3, partial) = wait_reply(&c, 0).await;
    throttle(driver_port, cleanup.session.as_deref().unwrap(), None).await;
    assert_eq!(finish3, "abort");
    assert!(!partial.is_empty());
    let full = direct_reply(
        &base,
        &model,
        &json!([{"role": "user", "content": third}]),
        long,
    )
    .await;
    let full = full["message"]["content"].as_str().unwrap();
    assert!(
        full.starts_with(&partial) && full.len() > partial.len(),
        "the stopped reply is not a proper prefix of the full one:\npartial: {partial:?}\nfull: {full:?}"
    );
    assert_eq!(
        js(&c, "return [document.getElementById('send').disabled, document.getElementById('stop').disabled, document.querySelector('#messages .msg.assistant .meta').textContent.startsWith('stopped by you')]").await,
        json!([false, true, true])
    );
    screenshot(&c, "chat_page_stopped.png").await;

    // A narrow window: the settings fold behind a button and the conversation still fits.
    set_viewport(&c, 400, 800).await;
    let narrow = js(
        &c,
        "return [getComputedStyle(document.getElementById('settings')).display,
                 getComputedStyle(document.getElementById('settings-toggle')).display !== 'none',
                 document.documentElement.scrollWidth <= window.innerWidth]",
    )
    .await;
    assert_eq!(narrow, json!(["none", true, true]));
    screenshot(&c, "chat_page_narrow.png").await;
    c.find(Locator::Id("settings-toggle"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let opened = js(
        &c,
        "return [getComputedStyle(document.getElementById('settings')).display !== 'none',
                 document.getElementById('settings-toggle').getAttribute('aria-expanded')]",
    )
    .await;
    assert_eq!(opened, json!([true, "true"]));
    screenshot(&c, "chat_page_narrow_settings.png").await;
    set_viewport(&c, 1280, 900).await;

    // ---- a server that wants a bearer token: the page says so, then works with the token ----
    let secret = tempfile::tempdir().unwrap();
    let token_file = secret.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let locked = start_server(
        &mut cleanup,
        &[OsStr::new("--token-file"), token_file.as_os_str()],
        "chat_page_server_token.log",
    );
    c.goto(&format!("http://{locked}/")).await.unwrap();
    let error = wait_js_inner(
        &c,
        "the 401 banner",
        "const e = document.getElementById('error');
         return e.hidden ? null : document.getElementById('error-text').textContent",
        true,
    )
    .await;
    assert!(error.as_str().unwrap().contains("401"), "{error}");
    // Typing the token and leaving the field (Tab) loads the models and clears the banner.
    let token = c.find(Locator::Id("token")).await.unwrap();
    token.send_keys("s3cret-token\u{E004}").await.unwrap();
    wait_js_inner(
        &c,
        "the model list with the token",
        "return document.getElementById('model').value && document.getElementById('error').hidden",
        true,
    )
    .await;
    let stored = "return localStorage.getItem('koala-chat.token')";
    assert_eq!(
        js(&c, stored).await,
        Value::Null,
        "kept without \"remember\""
    );
    let remember = c.find(Locator::Id("remember")).await.unwrap();
    remember.click().await.unwrap();
    assert_eq!(js(&c, stored).await, json!("s3cret-token"));
    remember.click().await.unwrap();
    assert_eq!(
        js(&c, stored).await,
        Value::Null,
        "not forgotten on unticking"
    );
    set_field(&c, "max_tokens", "8").await;
    type_message(&c, "hi\u{E007}").await;
    let (_, reply) = wait_reply(&c, 0).await;
    assert!(!reply.is_empty());

    cleanup.session = None;
    c.close().await.unwrap();
}

/// Sets (or with `None` lifts) a download limit in bytes per second on the browser session.
async fn throttle(driver_port: u16, session: &str, bytes_per_s: Option<u64>) {
    let url =
        format!("http://127.0.0.1:{driver_port}/session/{session}/chromium/network_conditions");
    let http = reqwest::Client::new();
    let resp = match bytes_per_s {
        Some(rate) => http
            .post(&url)
            .json(&json!({"network_conditions": {
                "offline": false,
                "latency": 0,
                "download_throughput": rate,
                "upload_throughput": 1_000_000,
            }}))
            .send()
            .await
            .unwrap(),
        None => http.delete(&url).send().await.unwrap(),
    };
    let status = resp.status();
    assert!(
        status.is_success(),
        "network conditions: {status} {}",
        resp.text().await.unwrap()
    );
}
