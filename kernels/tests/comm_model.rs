//! The test model of the data-parallel and GPU step tests is itself checked: its backward pass
//! (chained from the per-op backwards) matches central finite differences of its loss, for entries
//! of every kind of parameter.
use koala_kernels::comm::model::{Batch, Config, TinyLlama};
use koala_kernels::{Backend, CpuBackend};

#[test]
fn model_gradients_match_finite_differences() {
    let be = CpuBackend::with_threads(1).unwrap();
    let cfg = Config::tiny();
    let batch = Batch::synthetic(&cfg, 2, 9);
    let mut model = TinyLlama::new(&be, cfg, 3).unwrap();
    model.zero_grads(&be).unwrap();
    model.forward_backward(&be, &batch).unwrap();
    let grads: Vec<Vec<f32>> = model
        .grads()
        .iter()
        .map(|g| be.download(g).unwrap())
        .collect();
    let shapes = cfg.param_shapes();
    // tok_emb, layer-0 tensors (attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down),
    // a layer-1 tensor, final_norm and lm_head.
    let tensors = [
        0usize,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        12,
        shapes.len() - 2,
        shapes.len() - 1,
    ];
    let eps = 1e-2f32;
    let mut checked = 0;
    for &ti in &tensors {
        // The entry with the largest gradient, and one fixed entry.
        let g = &grads[ti];
        let big = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        for &ei in &[big, g.len() / 3] {
            let loss_at = |model: &mut TinyLlama<CpuBackend>, delta: f32| {
                let (mut params, _) = model.params_and_grads_mut();
                params[ti][ei] += delta;
                model.forward_backward(&be, &batch).unwrap()
            };
            let lp = loss_at(&mut model, eps);
            let lm = loss_at(&mut model, -2.0 * eps);
            loss_at(&mut model, eps); // restore
            let fd = (lp - lm) / (2.0 * eps as f64);
            let an = g[ei] as f64;
            assert!(
                (fd - an).abs() <= 2e-3 + 2e-2 * an.abs(),
                "param {ti} entry {ei}: finite difference {fd} vs backward {an}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * tensors.len());
    // The batch's embedding rows got gradient; other rows none.
    let emb = &grads[0];
    let row_nonzero = |r: usize| {
        emb[r * cfg.dim..(r + 1) * cfg.dim]
            .iter()
            .any(|&x| x != 0.0)
    };
    for r in 0..cfg.vocab {
        assert_eq!(
            row_nonzero(r),
            batch.ids.contains(&(r as u32)),
            "embedding row {r}"
        );
    }
}
