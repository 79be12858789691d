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
