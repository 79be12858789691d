//! The daemon's TOML configuration (`daemon.toml`).
//!
//! ```toml
//! listen = "127.0.0.1:50051"      # host:port; port 0 picks a free port (printed at start-up)
//! data_root = "/srv/koala"         # every path in a JobSpec must resolve inside it
//! state_dir = "/var/lib/koala"     # the SQLite job store lives here
//! token_file = "/etc/koala/token"  # the bearer token clients must send
//! max_queued_jobs = 100
//! max_message_bytes = 1048576
//! training_nice = 10               # nice value of training threads (0 = same as the RPC threads)
//! training_idle = false            # true: training threads only get CPU time nothing else wants
//! generate_device = "cpu"          # where Generate decodes: cpu, auto, cuda:N
//! generate_allow_dirs = false      # true: Generate may also sample a model_dir inside data_root
//! [tls]                            # optional: serve TLS (rustls)
//! cert = "server.pem"
//! key = "server.key"
//! ```
//! Relative paths are taken relative to the directory of the config file.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{DaemonError, Result};

/// The daemon configuration. Unknown keys are an error, so a typo does not pass silently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address to listen on, `host:port` (default `127.0.0.1:50051`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Root directory that every job path must resolve inside.
    pub data_root: PathBuf,
    /// Directory for the job store (`jobs.sqlite3`) and debug markers.
    pub state_dir: PathBuf,
    /// File holding the bearer token (surrounding whitespace is ignored).
    pub token_file: PathBuf,
    /// Submissions are refused with RESOURCE_EXHAUSTED while this many jobs are queued (default 100).
    #[serde(default = "default_max_queued")]
    pub max_queued_jobs: u32,
    /// Largest accepted request message in bytes (default 1 MiB).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Scheduling priority (Unix nice, 0–19) of the threads that train, so that RPCs keep their
    /// latency while a job uses every core (default 10). An idle machine gives training the
    /// same throughput at any value; 0 turns this off.
    #[serde(default = "default_training_nice")]
    pub training_nice: i32,
    /// Run the training threads under Linux's `SCHED_IDLE` policy instead (`training_nice` is
    /// then ignored): they get only the CPU time that no other thread wants, so a flood of RPCs
    /// keeps its idle-machine latency and pauses training. Any busy process on the machine then
    /// pauses training too, so this suits a machine that does nothing but train (default false).
    #[serde(default)]
    pub training_idle: bool,
    /// Where `Generate` decodes: `cpu` (default), `auto` (CUDA when usable, else the CPU) or
    /// `cuda:N`.
    #[serde(default = "default_generate_device")]
    pub generate_device: String,
    /// Let `Generate` sample any model directory inside `data_root` (`model_dir`), not only the
    /// checkpoints of the daemon's own jobs (default false).
    #[serde(default)]
    pub generate_allow_dirs: bool,
    /// Serve TLS with this certificate and key (PEM).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// PEM certificate chain and private key for TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_listen() -> String {
    "127.0.0.1:50051".to_string()
}
fn default_max_queued() -> u32 {
    100
}
fn default_training_nice() -> i32 {
    10
}
fn default_max_message() -> usize {
    1 << 20
}
fn default_generate_device() -> String {
    "cpu".to_string()
}

impl DaemonConfig {
    /// Reads and checks a config file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DaemonError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            DaemonError::Config(m) => DaemonError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses config text; relative paths are joined to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self> {
        let mut cfg: DaemonConfig =
            toml::from_str(text).map_err(|e| DaemonError::Config(e.to_string()))?;
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut cfg.data_root);
        fix(&mut cfg.state_dir);
        fix(&mut cfg.token_file);
        if let Some(tls) = cfg.tls.as_mut() {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if cfg.max_queued_jobs == 0 {
            return Err(DaemonError::Config(
                "max_queued_jobs must be at least 1".into(),
            ));
        }
        if !(0..=19).contains(&cfg.training_nice) {
            return Err(DaemonError::Config(format!(
                "training_nice must be between 0 and 19, not {}",
                cfg.training_nice
            )));
        }
        if let Err(e) = cfg
            .generate_device
            .parse::<koala_kernels::select::DeviceSpec>()
        {
            return Err(DaemonError::Config(format!("generate_device: {e}")));
        }
        if cfg.max_message_bytes < 4096 {
            return Err(DaemonError::Config(
                "max_message_bytes must be at least 4096".into(),
            ));
        }
        Ok(cfg)
    }

    /// Reads the bearer token from `token_file`.
    pub fn read_token(&self) -> Result<String> {
        let text = std::fs::read_to_string(&self.token_file).map_err(|e| DaemonError::Io {
            path: self.token_file.clone(),
            source: e,
        })?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(DaemonError::Config(format!(
                "{}: the token file is empty",
                self.token_file.display()
            )));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(DaemonError::Config(format!(
                "{}: the token must be one line without spaces",
                self.token_file.display()
            )));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_relative_paths() {
        let cfg = DaemonConfig::parse(
            "data_root = \"data\"\nstate_dir = \"/abs/state\"\ntoken_file = \"tok\"\n",
            Path::new("/etc/koala"),
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:50051");
        assert_eq!(cfg.data_root, Path::new("/etc/koala/data"));
        assert_eq!(cfg.state_dir, Path::new("/abs/state"));
        assert_eq!(cfg.token_file, Path::new("/etc/koala/tok"));
        assert_eq!(cfg.max_queued_jobs, 100);
        assert_eq!(cfg.training_nice, 10);
        assert!(!cfg.training_idle);
        assert_eq!(cfg.generate_device, "cpu");
        assert!(!cfg.generate_allow_dirs);
        assert!(cfg.tls.is_none());
        let err = DaemonConfig::parse(
            "data_root = \"d\"\nstate_dir = \"s\"\ntoken_file = \"t\"\ntraining_nice = 25\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.to_string().contains("training_nice"), "{err}");
        let idle = DaemonConfig::parse(
            "data_root = \"d\"\nstate_dir = \"s\"\ntoken_file = \"t\"\ntraining_idle = true\n",
            Path::new("."),
        )
        .unwrap();
        assert!(idle.training_idle);
        let err = DaemonConfig::parse(
            "data_root = \"d\"\nstate_dir = \"s\"\ntoken_file = \"t\"\ngenerate_device = \"tpu\"\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.to_string().contains("generate_device"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = DaemonConfig::parse(
            "data_root = \"d\"\nstate_dir = \"s\"\ntoken_file = \"t\"\nlisten_addr = \"x\"\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }
}
