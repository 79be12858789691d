//! The real [`Runner`]: turns a `JobSpec` into a [`TrainConfig`] and calls [`crate::train::run`],
//! which resumes from the newest checkpoint in the job's `out_dir`.
use koala_proto::v1::{Hyperparameters, JobSpec};

use super::runner::{RunOutcome, RunRequest, RunSink, Runner};
use super::validate::{BaseModelPath, FieldError, resolve_paths};
use crate::train::{Observer, TrainConfig, TrainEvent};

/// Checkpoints kept per job (older ones are pruned by the trainer).
pub const KEEP_CHECKPOINTS: usize = 3;
/// `checkpoint_every` when a spec leaves it at 0 (the trainer's own default).
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 100;

/// Trains with [`crate::train::run`] on the calling thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrainRunner {
    /// Nice value for the training threads (see [`super::config::DaemonConfig::training_nice`]).
    pub nice: i32,
}

impl TrainRunner {
    /// A runner whose training threads run at Unix nice value `nice` (0: unchanged).
    pub fn with_nice(nice: i32) -> Self {
        TrainRunner { nice }
    }
}

/// Lowers the scheduling priority of the calling thread to `nice` (Linux: nice is per thread,
/// and threads it spawns inherit it). Failures (a sandbox that forbids it) are logged only.
fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if rc != 0 {
            tracing::warn!(
                nice,
                "cannot lower the training threads' priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

impl Runner for TrainRunner {
    fn run(&self, req: &RunRequest, sink: &mut dyn RunSink) -> Result<RunOutcome, String> {
        let cfg = train_config(&req.spec, &req.data_root).map_err(|e| e.to_string())?;
        if self.nice > 0 {
            // This job thread, the pools it starts (data-parallel workers), and rayon's global
            // pool (the single CPU worker's ops), which serves nothing but training here.
            lower_thread_priority(self.nice);
            let nice = self.nice;
            rayon::broadcast(|_| lower_thread_priority(nice));
        }
        let mut obs = SinkObserver { sink };
        crate::train::run(&cfg, &mut obs).map_err(|e| e.to_string())
    }
}

struct SinkObserver<'a> {
    sink: &'a mut dyn RunSink,
}

impl Observer for SinkObserver<'_> {
    fn event(&mut self, ev: &TrainEvent) {
        self.sink.event(ev.clone());
    }

    fn cancelled(&self) -> bool {
        self.sink.cancelled()
    }
}

/// The trainer configuration of a job: its paths resolved inside `data_root`, the preset with
/// the spec's overrides, and the daemon's defaults for what the spec leaves at 0.
pub fn train_config(
    spec: &JobSpec,
    data_root: &std::path::Path,
) -> Result<TrainConfig, FieldError> {
    let paths = resolve_paths(spec, data_root)?;
    let model = match paths.base_model {
        BaseModelPath::Dir(d) => d,
        BaseModelPath::InitConfig(f) => f,
    };
    Ok(TrainConfig {
        model,
        shards: paths.shards_dir,
        out_dir: paths.out_dir,
        preset: (!spec.preset.is_empty()).then(|| spec.preset.clone()),
        hyper: spec
            .hyperparameters
            .as_ref()
            .map(hyper_table)
            .unwrap_or_default(),
        seed: spec.seed,
        checkpoint_every: if spec.checkpoint_every == 0 {
            DEFAULT_CHECKPOINT_EVERY
        } else {
            spec.checkpoint_every
        },
        keep_checkpoints: KEEP_CHECKPOINTS,
        device: if spec.devices.is_empty() {
            "cpu".into()
        } else {
            spec.devices.clone()
        },
        workers: spec.workers as usize,
        zero1: spec.zero1,
        max_steps: (spec.max_steps > 0).then_some(spec.max_steps),
    })
}

/// The overrides as the trainer's `[hyper]` table (keys of `trainer/presets/*.toml`).
fn hyper_table(h: &Hyperparameters) -> toml::Table {
    use toml::Value;
    let mut t = toml::Table::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            t.insert(k.to_string(), v);
        }
    };
    put("lr", h.lr.map(Value::Float));
    put("batch_size", h.batch_size.map(|v| Value::Integer(v.into())));
    put(
        "micro_batch_size",
        h.micro_batch_size.map(|v| Value::Integer(v.into())),
    );
    put("max_len", h.max_len.map(|v| Value::Integer(v.into())));
    put("epochs", h.epochs.map(|v| Value::Integer(v.into())));
    put("warmup_ratio", h.warmup_ratio.map(Value::Float));
    put(
        "warmup_steps",
        h.warmup_steps
            .map(|v| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))),
    );
    put("weight_decay", h.weight_decay.map(Value::Float));
    put("grad_clip", h.grad_clip.map(Value::Float));
    put("schedule", h.schedule.clone().map(Value::String));
    put("beta1", h.beta1.map(Value::Float));
    put("beta2", h.beta2.map(Value::Float));
    put("eps", h.eps.map(Value::Float));
    put("min_lr_ratio", h.min_lr_ratio.map(Value::Float));
    put("loss", h.loss.clone().map(Value::String));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_the_trainer_hyperparameters() {
        let h = Hyperparameters {
            lr: Some(3e-3),
            batch_size: Some(4),
            micro_batch_size: Some(2),
            epochs: Some(2),
            schedule: Some("linear".into()),
            loss: Some("row_mean".into()),
            ..Default::default()
        };
        let cfg = TrainConfig {
            model: "m".into(),
            shards: "s".into(),
            out_dir: "o".into(),
            preset: Some("tiny-cpu".into()),
            hyper: hyper_table(&h),
            seed: 0,
            checkpoint_every: 1,
            keep_checkpoints: 0,
            device: "cpu".into(),
            workers: 0,
            zero1: false,
            max_steps: None,
        };
        let hy = cfg.hyper().unwrap();
        assert_eq!(
            (hy.lr, hy.batch_size, hy.micro_batch_size, hy.epochs),
            (3e-3, 4, 2, 2)
        );
        assert_eq!(hy.loss, crate::LossMode::RowMean);
        assert_eq!(hy.schedule, crate::schedule::Decay::Linear);
        // Unset fields keep the preset's values.
        assert_eq!(
            hy.max_len,
            crate::Hyper::preset("tiny-cpu").unwrap().max_len
        );
    }
}
