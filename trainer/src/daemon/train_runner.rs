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

/// How the training threads are scheduled beside the RPC threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum TrainingPriority {
    /// Unchanged: the same priority as the RPC threads.
    #[default]
    Same,
    /// Unix nice value 1–19 (see [`super::config::DaemonConfig::training_nice`]).
    Nice(i32),
    /// Linux `SCHED_IDLE` (see [`super::config::DaemonConfig::training_idle`]).
    Idle,
}

impl TrainingPriority {
    /// The priority a daemon config asks for.
    pub fn from_config(nice: i32, idle: bool) -> Self {
        match (idle, nice) {
            (true, _) => TrainingPriority::Idle,
            (false, n) if n > 0 => TrainingPriority::Nice(n),
            _ => TrainingPriority::Same,
        }
    }

    /// Applies this priority to the calling thread (Linux: nice and policy are per thread, and
    /// threads it spawns inherit them). Failures (a sandbox that forbids it) are logged only.
    fn apply_to_this_thread(self) {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: plain syscalls on the calling thread's own id; `param` outlives the call.
            let rc = unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
                match self {
                    TrainingPriority::Same => 0,
                    TrainingPriority::Nice(n) => {
                        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, n)
                    }
                    TrainingPriority::Idle => {
                        let param = libc::sched_param { sched_priority: 0 };
                        libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param)
                    }
                }
            };
            if rc != 0 {
                tracing::warn!(
                    priority = ?self,
                    "cannot lower the training threads' priority: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = self;
    }
}

/// Trains with [`crate::train::run`] on the calling thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrainRunner {
    /// Scheduling of the training threads.
    pub priority: TrainingPriority,
}

impl TrainRunner {
    /// A runner whose training threads run at `priority`.
    pub fn with_priority(priority: TrainingPriority) -> Self {
        TrainRunner { priority }
    }
}

impl Runner for TrainRunner {
    fn run(&self, req: &RunRequest, sink: &mut dyn RunSink) -> Result<RunOutcome, String> {
        let cfg = train_config(&req.spec, &req.data_root).map_err(|e| e.to_string())?;
        if self.priority != TrainingPriority::Same {
            // This job thread, the pools it starts (data-parallel workers), and rayon's global
            // pool (the single CPU worker's ops), which serves nothing but training here.
            let priority = self.priority;
            priority.apply_to_this_thread();
            rayon::broadcast(|_| priority.apply_to_this_thread());
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
        val_split: if spec.val_split.is_empty() {
            crate::train::default_val_split()
        } else {
            spec.val_split.clone()
        },
        val_every: if spec.val_every == 0 {
            crate::train::default_val_every()
        } else {
            spec.val_every
        },
        val_max_rows: crate::train::default_val_max_rows(),
        lora: spec.lora.as_ref().map(lora_config),
        device: if spec.devices.is_empty() {
            "cpu".into()
        } else {
            spec.devices.clone()
        },
        workers: spec.workers as usize,
        zero1: spec.zero1,
        zero: spec.zero.map(|z| u8::try_from(z).unwrap_or(u8::MAX)),
        checkpointing: spec.checkpointing,
        max_steps: (spec.max_steps > 0).then_some(spec.max_steps),
    })
}

/// A job's `lora` as the trainer's `[lora]` table, 0 and empty fields taking its defaults
/// (checked when the run starts, like the rest of the config).
pub(crate) fn lora_config(l: &koala_proto::v1::LoraSpec) -> crate::lora::LoraConfig {
    let d = crate::lora::LoraConfig::default();
    crate::lora::LoraConfig {
        r: if l.r == 0 { d.r } else { l.r as usize },
        alpha: if l.alpha == 0.0 {
            d.alpha
        } else {
            l.alpha as f32
        },
        dropout: l.dropout.map_or(d.dropout, |p| p as f32),
        target_modules: if l.target_modules.is_empty() {
            d.target_modules
        } else {
            l.target_modules.clone()
        },
    }
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

    #[cfg(target_os = "linux")]
    #[test]
    fn priorities_reach_the_thread_and_what_it_spawns() {
        assert_eq!(
            TrainingPriority::from_config(0, false),
            TrainingPriority::Same
        );
        assert_eq!(
            TrainingPriority::from_config(7, false),
            TrainingPriority::Nice(7)
        );
        assert_eq!(
            TrainingPriority::from_config(7, true),
            TrainingPriority::Idle
        );
        // Fresh threads, so the test's own thread keeps its priority.
        let (nice, child_nice) = std::thread::spawn(|| {
            TrainingPriority::Nice(7).apply_to_this_thread();
            let get = || unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::getpriority(libc::PRIO_PROCESS, tid)
            };
            (get(), std::thread::spawn(get).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!((nice, child_nice), (7, 7));
        let (policy, child_policy) = std::thread::spawn(|| {
            TrainingPriority::Idle.apply_to_this_thread();
            let get = || unsafe { libc::sched_getscheduler(0) };
            (get(), std::thread::spawn(get).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!((policy, child_policy), (libc::SCHED_IDLE, libc::SCHED_IDLE));
    }

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
            zero: None,
            checkpointing: None,
            max_steps: None,
            val_split: "none".into(),
            val_every: 0,
            val_max_rows: 1,
            lora: None,
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
