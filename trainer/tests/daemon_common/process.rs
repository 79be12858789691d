//! The real `koala-trainerd` binary as a child process, and tiny real training data.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes tiny shards (20 packed rows, vocab 64) with a manifest, and a tiny LLaMA config, under
/// `root` (`shards/tiny`, `models/tiny/config.json`).
pub fn tiny_training_data(root: &Path) {
    super::train_common::write_tiny(
        &root.join("shards/tiny"),
        &root.join("models/tiny/config.json"),
    );
}

/// A daemon process.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

/// Writes `daemon.toml` in `dir` for `data_root` and `state_dir`, with the test token.
pub fn write_config(dir: &Path, data_root: &Path, state_dir: &Path, token: &str) -> PathBuf {
    std::fs::write(dir.join("token"), token).unwrap();
    let cfg = dir.join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_root = {:?}\nstate_dir = {:?}\ntoken_file = \"token\"\n",
            data_root, state_dir
        ),
    )
    .unwrap();
    cfg
}

/// Starts `koala-trainerd --config cfg` with extra environment, and waits for its address.
pub fn spawn_daemon(bin: &str, cfg: &Path, env: &[(&str, &str)], log: &Path) -> Daemon {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "the daemon did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    Daemon {
        child,
        addr,
        log: log.to_path_buf(),
    }
}

impl Daemon {
    /// `kill -9`.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` exists.
pub fn wait_file(path: &Path, secs: u64, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared; daemon log:\n{}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
