//! What the browser tests share: finding Chromium and chromedriver, starting chromedriver and a
//! WebDriver session, running scripts in the page, screenshots, and cleaning up what a test
//! started (also when it panics).
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`;
//! `scripts/test.sh` installs them when it runs as root). Without them a test prints a skip line
//! and passes, except under CI (`CI` set), where it fails.
#![allow(dead_code)]
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

pub const SKIP: &str =
    "skipped: chromium/chromedriver not installed (apt-get install chromium chromium-driver)";
/// Longest wait for one thing on the page (a debug-built server on a busy 2-core machine).
pub const WAIT: Duration = Duration::from_secs(90);

/// `name` on PATH, else in /usr/bin.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Chromium and chromedriver, or `None` after printing the skip line (a failure under CI).
pub fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    match (find_program("chromium"), find_program("chromedriver")) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                !in_ci(),
                "{SKIP}: CI must run this test (scripts/test.sh installs them)"
            );
            println!("{SKIP}");
            None
        }
    }
}

/// The `target` folder (the koala binary is `target/debug/koala`).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_koala"))
        .parent()
        .and_then(Path::parent)
        .expect("the koala binary lies in target/<profile>/")
        .to_path_buf()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills what the test started, also when it panics: the browser session first (chromedriver
/// quits Chromium on `DELETE /session/ID`; killing chromedriver alone could leave it running),
/// then chromedriver and the servers. On a panic it prints the servers' logs.
#[derive(Default)]
pub struct Cleanup {
    pub children: Vec<(&'static str, Child)>,
    pub driver_port: Option<u16>,
    pub session: Option<String>,
    pub server_logs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let (Some(port), Some(id)) = (self.driver_port, self.session.take()) {
            // Plain HTTP: there may be no async runtime left while unwinding.
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let _ = write!(
                    s,
                    "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                );
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        for (name, child) in self.children.iter_mut().rev() {
            if let Err(e) = child.kill() {
                eprintln!("could not kill {name}: {e}");
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for path in &self.server_logs {
                let Ok(log) = std::fs::read_to_string(path) else {
                    continue;
                };
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "--- {} (last lines) ---\n{}",
                    path.display(),
                    tail.join("\n")
                );
            }
        }
    }
}

/// Starts a `koala` server command, its stderr in `target/<log>`, and waits for its first stdout
/// line, `<what>: listening on http://ADDR`; returns ADDR and the child's index in `cleanup`.
pub fn start_listening(
    cleanup: &mut Cleanup,
    what: &'static str,
    mut cmd: std::process::Command,
    log: &str,
) -> (usize, std::net::SocketAddr) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let log_path = target_dir().join(log);
    let logf = std::fs::File::create(&log_path).unwrap();
    cleanup.server_logs.push(log_path);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(logf)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let stdout = child.stdout.take().unwrap();
    cleanup.children.push((what, child));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        // Keep draining so that a chatty server never blocks on a full pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(WAIT) {
        Ok(Some(Ok(line))) => line,
        other => panic!("{what} printed no listening line: {other:?}"),
    };
    let addr = line
        .strip_prefix(&format!("{what}: listening on http://"))
        .unwrap_or_else(|| panic!("unexpected first line of {what}: {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
    (cleanup.children.len() - 1, addr)
}

/// Starts chromedriver on a free port (its log in `target/<log>`) and waits until it is ready.
pub async fn start_chromedriver(cleanup: &mut Cleanup, chromedriver: &Path, log: &str) -> u16 {
    let port = free_port();
    let log = std::fs::File::create(target_dir().join(log)).unwrap();
    let child = std::process::Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start chromedriver");
    cleanup.children.push(("chromedriver", child));
    cleanup.driver_port = Some(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    loop {
        let status = http
            .get(format!("http://127.0.0.1:{port}/status"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(resp) = status
            && let Ok(body) = resp.json::<Value>().await
            && body["value"]["ready"] == true
        {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not become ready on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A headless Chromium session through chromedriver on `driver_port`, with its own profile
/// folder (kept alive by the returned guard).
pub async fn open_session(
    cleanup: &mut Cleanup,
    chromium: &Path,
    driver_port: u16,
) -> (Client, tempfile::TempDir) {
    let profile = tempfile::tempdir().unwrap();
    let mut caps = Capabilities::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let c = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("start a Chromium session through chromedriver");
    cleanup.session = c.session_id().await.unwrap();
    (c, profile)
}

/// Makes the page's viewport itself `width`×`height` (`--window-size` is the window's).
pub async fn set_viewport(c: &Client, width: u32, height: u32) {
    let chrome = js(
        c,
        "return [outerWidth - innerWidth, outerHeight - innerHeight]",
    )
    .await;
    let extra = |i: usize| chrome[i].as_u64().unwrap() as u32;
    c.set_window_size(width + extra(0), height + extra(1))
        .await
        .unwrap();
}

pub async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

pub async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = target_dir().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}
