//! The training loop end to end on the CPU: resume is bit-identical to an uninterrupted run,
//! cancellation stops at a step boundary with a checkpoint, bad input is a clear error.
mod train_common;

use std::path::Path;

use koala_trainer::data::{Row, write_shard};
use koala_trainer::{Observer, RunOutcome, TrainConfig, TrainEvent, run};
use train_common::tiny_config;

fn config(dir: &Path, out: &str, max_steps: Option<u64>) -> TrainConfig {
    let mut cfg = tiny_config(dir, out, "", "batch_size = 4");
    cfg.max_steps = max_steps;
    cfg
}

#[derive(Default)]
struct Recorder {
    events: Vec<TrainEvent>,
    cancel_after: Option<usize>,
}

impl Observer for Recorder {
    fn event(&mut self, ev: &TrainEvent) {
        self.events.push(ev.clone());
    }
    fn cancelled(&self) -> bool {
        let steps = self
            .events
            .iter()
            .filter(|e| matches!(e, TrainEvent::Step { .. }))
            .count();
        self.cancel_after.is_some_and(|n| steps >= n)
    }
}

fn losses(ev: &[TrainEvent]) -> Vec<(u64, u32)> {
    ev.iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, loss, .. } => Some((*step, loss.to_bits())),
            _ => None,
        })
        .collect()
}

#[test]
fn resume_is_bit_identical_to_a_straight_run() {
    let d = tempfile::tempdir().unwrap();
    // Straight: all 10 steps (20 rows / batch 4 = 5 steps per epoch, 2 epochs).
    let straight = config(d.path(), "straight", None);
    let mut a = Recorder::default();
    assert_eq!(run(&straight, &mut a).unwrap(), RunOutcome::Finished);
    assert!(matches!(
        a.events[0],
        TrainEvent::Started {
            total_steps: 10,
            resumed_from: None
        }
    ));
    // Interrupted: stop after 7 steps (mid-epoch 2; the last checkpoint is step 7), then resume.
    let part = config(d.path(), "resumed", Some(7));
    let mut b1 = Recorder::default();
    run(&part, &mut b1).unwrap();
    let full = config(d.path(), "resumed", None);
    let mut b2 = Recorder::default();
    run(&full, &mut b2).unwrap();
    assert!(matches!(
        b2.events[0],
        TrainEvent::Started {
            total_steps: 10,
            resumed_from: Some(7)
        }
    ));
    let mut lb = losses(&b1.events);
    lb.extend(losses(&b2.events));
    assert_eq!(losses(&a.events), lb, "losses differ after resume");
    let wa = std::fs::read(d.path().join("straight/final/model.safetensors")).unwrap();
    let wb = std::fs::read(d.path().join("resumed/final/model.safetensors")).unwrap();
    assert!(wa == wb, "final weights are not bit-identical");
    // Metrics were rewritten, not duplicated, on resume.
    let m = std::fs::read_to_string(d.path().join("resumed/metrics.jsonl")).unwrap();
    assert_eq!(m.lines().count(), 10);
    assert!(d.path().join("resumed/loss_curve.png").exists());
    let first = f32::from_bits(losses(&a.events)[0].1);
    let last = f32::from_bits(losses(&a.events)[9].1);
    assert!(last < first, "loss did not go down: {first} -> {last}");
}

#[test]
fn cancel_stops_at_a_step_boundary_with_a_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), "out", None);
    let mut r = Recorder {
        cancel_after: Some(3),
        ..Default::default()
    };
    assert_eq!(
        run(&cfg, &mut r).unwrap(),
        RunOutcome::Cancelled { step: 3 }
    );
    assert!(
        r.events
            .iter()
            .any(|e| matches!(e, TrainEvent::Checkpoint { step: 3, .. }))
    );
    assert!(
        d.path()
            .join("out/checkpoints/step-00000003/model.safetensors")
            .exists()
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path(), "out", None);
    cfg.hyper.insert("batch_sise".into(), 4.into());
    let e = run(&cfg, &mut Recorder::default()).unwrap_err().to_string();
    assert!(e.contains("batch_sise"), "{e}");
    let mut cfg = config(d.path(), "out", None);
    cfg.device = "tpu".into();
    assert!(
        run(&cfg, &mut Recorder::default())
            .unwrap_err()
            .to_string()
            .contains("tpu")
    );
    // A token id outside the vocabulary names the row.
    let mut cfg = config(d.path(), "out2", None);
    let bad = d.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    write_shard(
        &bad.join("x.arrow"),
        &[Row {
            tokens: vec![1, 900],
            loss_mask: vec![1, 1],
            segment_ids: vec![0, 0],
        }],
    )
    .unwrap();
    cfg.shards = bad;
    let e = run(&cfg, &mut Recorder::default()).unwrap_err().to_string();
    assert!(e.contains("row 0") && e.contains("900"), "{e}");
    let e = toml::from_str::<TrainConfig>("model = 'a'\nshards = 'b'\nout_dir = 'c'\nmax_step = 3")
        .unwrap_err();
    assert!(e.to_string().contains("max_step"), "{e}");
}

/// Rewrites the tiny shards' manifest with splits: the 20 rows train, 4 more are held out.
fn add_eval_split(shards: &Path) {
    let held: Vec<Row> = (0..4u32)
        .map(|i| Row {
            tokens: (0..12u32).map(|j| (5 + 2 * i + j) % 64).collect(),
            loss_mask: vec![1; 12],
            segment_ids: vec![0; 12],
        })
        .collect();
    write_shard(&shards.join("eval-0.arrow"), &held).unwrap();
    std::fs::write(
        shards.join("manifest.json"),
        r#"{"format": "koala", "vocab_size": 64, "seq_len": 16, "splits": {
            "train": {"files": [{"path": "part-0.arrow", "rows": 12}, {"path": "part-1.arrow", "rows": 8}]},
            "eval": {"files": [{"path": "eval-0.arrow", "rows": 4}]}}}"#,
    )
    .unwrap();
}

/// Validation with 2 data-parallel workers (each takes half the held-out rows, the losses are
/// summed) gives the single worker's validation loss.
#[test]
fn validation_loss_is_the_same_with_two_workers() {
    let d = tempfile::tempdir().unwrap();
    let val = |out: &str, workers: usize| -> Vec<f32> {
        let mut cfg = tiny_config(
            d.path(),
            out,
            &format!("workers = {workers}"),
            "batch_size = 4",
        );
        add_eval_split(&cfg.shards);
        cfg.val_every = 5;
        let mut rec = Recorder::default();
        run(&cfg, &mut rec).unwrap();
        rec.events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Step { val_loss, .. } => *val_loss,
                _ => None,
            })
            .collect()
    };
    let one = val("one", 1);
    let two = val("two", 2);
    assert_eq!(one.len(), 2, "{one:?}");
    for (a, b) in one.iter().zip(&two) {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs(),
            "1 worker {one:?}, 2 workers {two:?}"
        );
    }
}

/// Shards with a held-out `eval` split (as `koala tokenize` writes from `koala curate`'s split):
/// the run measures the validation loss every `val_every` steps and at the end, writes it to
/// `metrics.jsonl`, the Step events and `report.json`, and mirrors every scalar into a
/// TensorBoard event file that the Python `tensorboard` package reads back.
#[test]
fn validation_loss_is_measured_logged_and_readable_by_tensorboard() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path(), "val", None);
    add_eval_split(&cfg.shards);
    cfg.val_every = 4;
    let mut rec = Recorder::default();
    run(&cfg, &mut rec).unwrap();

    // 20 rows / batch 4 × 2 epochs = 10 steps: validation at 4, 8 and 10 (the end).
    let from_events: Vec<(u64, f32)> = rec
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, val_loss, .. } => val_loss.map(|v| (*step, v)),
            _ => None,
        })
        .collect();
    assert_eq!(
        from_events.iter().map(|p| p.0).collect::<Vec<_>>(),
        [4, 8, 10]
    );
    assert!(
        from_events.iter().all(|p| p.1.is_finite() && p.1 > 0.0),
        "{from_events:?}"
    );
    assert!(
        from_events[2].1 < from_events[0].1,
        "validation loss did not fall: {from_events:?}"
    );
    let metrics: Vec<serde_json::Value> =
        std::fs::read_to_string(cfg.out_dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let from_metrics: Vec<(u64, f32)> = metrics
        .iter()
        .filter_map(|m| {
            m.get("val_loss")
                .map(|v| (m["step"].as_u64().unwrap(), v.as_f64().unwrap() as f32))
        })
        .collect();
    assert_eq!(from_metrics, from_events);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["val_split"]["split"], "eval");
    assert_eq!(report["val_split"]["rows"], 4);
    assert_eq!(
        report["final_val_loss"].as_f64().unwrap() as f32,
        from_events[2].1
    );

    // TensorBoard reads the same numbers.
    let python = std::env::var("KOALA_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
tags = acc.Tags()["scalars"]
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags}))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(cfg.out_dir.join("tensorboard"))
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        other => {
            let why = match &other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var("CI").is_err(),
                "{python} could not read the TensorBoard logs (scripts/test.sh installs the \
                 tensorboard package): {why}"
            );
            eprintln!("skipped the TensorBoard check: {why}");
            return;
        }
    };
    let tb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let series = |tag: &str| -> Vec<(u64, f32)> {
        tb[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} in {tb}"))
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32))
            .collect()
    };
    assert_eq!(series("loss/validation"), from_events);
    let train: Vec<(u64, f32)> = metrics
        .iter()
        .map(|m| {
            (
                m["step"].as_u64().unwrap(),
                m["loss"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    assert_eq!(series("loss/train"), train);
    let ppl = series("perplexity/validation");
    assert!((ppl[2].1 - from_events[2].1.exp()).abs() < 1e-3 * ppl[2].1);
}
