//! Compiles EVERY kernel module with NVRTC for sm_80 and sm_90 and checks that the PTX exports exactly
//! the entry points the registry lists, and that the registry lists exactly the kernels below: a
//! kernel that fails to compile, or silently disappears, fails this test.
//!
//! NVRTC comes from the PyPI wheel `nvidia-cuda-nvrtc-cu12` (scripts/test.sh installs it and sets
//! `KOALA_NVRTC_DIR`). Without it the test skips with a message, except under CI (`CI` set), where a
//! missing NVRTC is a failure. With `KOALA_PTXAS` set it also assembles every module for sm_90 and
//! prints registers and spills per kernel (`cargo test -p koala-kernels --test cuda_ptx -- --nocapture`).
#![cfg(feature = "cuda")]

use std::collections::BTreeSet;

use koala_kernels::cuda::modules::MODULES;
use koala_kernels::cuda::nvrtc::{
    ParamKind, TEST_ARCHS, compile_module, ensure_nvrtc, ptx_entries, ptx_params,
};
use koala_kernels::cuda::ptxas;

/// The full kernel list, written out so that the registry itself cannot shrink unnoticed.
const EXPECTED: &[&str] = &[
    "add_fwd_bf16",
    "add_fwd_f32",
    "add_inplace_bf16_bf16",
    "add_inplace_bf16_f32",
    "add_inplace_f32_bf16",
    "add_inplace_f32_f32",
    "adamw_step_bf16",
    "adamw_step_f32",
    "attention_bwd_delta_bf16",
    "attention_bwd_delta_f32",
    "attention_bwd_dkv_bf16",
    "attention_bwd_dkv_f32",
    "attention_bwd_dq_bf16",
    "attention_bwd_dq_f32",
    "attention_fwd_bf16",
    "attention_fwd_f32",
    "cast_bf16_to_f32",
    "cast_f32_to_bf16",
    "cross_entropy_fwdbwd_bf16",
    "cross_entropy_fwdbwd_f32",
    "embedding_bwd_bf16",
    "embedding_bwd_f32",
    "embedding_fwd_bf16",
    "embedding_fwd_f32",
    "global_norm_fwd_bf16",
    "global_norm_fwd_f32",
    "lora_dropout_add_bf16",
    "lora_dropout_add_f32",
    "lora_dropout_bf16",
    "lora_dropout_f32",
    "rmsnorm_bwd_bf16",
    "rmsnorm_bwd_dw_bf16",
    "rmsnorm_bwd_dw_f32",
    "rmsnorm_bwd_dwsum_f32",
    "rmsnorm_bwd_f32",
    "rmsnorm_fwd_bf16",
    "rmsnorm_fwd_f32",
    "rope_bwd_bf16",
    "rope_bwd_f32",
    "rope_fwd_bf16",
    "rope_fwd_f32",
    "scale_inplace_bf16",
    "scale_inplace_f32",
    "swiglu_bwd_bf16",
    "swiglu_bwd_f32",
    "swiglu_fwd_bf16",
    "swiglu_fwd_f32",
];

const EXPECTED_MODULES: &[&str] = &[
    "adamw",
    "attention",
    "cast",
    "cross_entropy",
    "embedding",
    "global_norm",
    "lora",
    "residual",
    "rmsnorm",
    "rope",
    "swiglu",
];

#[test]
fn registry_lists_every_kernel_file_and_kernel() {
    let names: BTreeSet<&str> = MODULES.iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        EXPECTED_MODULES.iter().copied().collect(),
        "module list changed"
    );
    // Every .cu file on disk is registered (common.cuh is the prelude, not a module).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "cu").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    assert_eq!(
        on_disk,
        names.iter().map(|s| s.to_string()).collect(),
        "kernels/cuda/*.cu vs registry"
    );
    let listed: BTreeSet<&str> = MODULES
        .iter()
        .flat_map(|m| m.kernels.iter().copied())
        .collect();
    assert_eq!(
        listed,
        EXPECTED.iter().copied().collect(),
        "kernel list changed"
    );
    let total: usize = MODULES.iter().map(|m| m.kernels.len()).sum();
    assert_eq!(total, EXPECTED.len(), "a kernel is listed twice");
}

fn nvrtc_or_skip() -> bool {
    match ensure_nvrtc() {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but NVRTC is unavailable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm80_and_sm90() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in TEST_ARCHS {
        let mut compiled: Vec<String> = Vec::new();
        for module in MODULES {
            let ptx = compile_module(module, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                ptx.contains(&format!(".target {arch}")),
                "{}: PTX not for {arch}",
                module.name
            );
            let entries: BTreeSet<String> = ptx_entries(&ptx).into_iter().collect();
            let want: BTreeSet<String> = module.kernels.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                entries, want,
                "{}.cu for {arch}: PTX entry points differ from the registry",
                module.name
            );
            compiled.extend(entries);
        }
        compiled.sort();
        let mut want: Vec<String> = EXPECTED.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(compiled, want, "kernels compiled for {arch}");
        println!(
            "compiled {} kernels from {} modules for {arch}",
            compiled.len(),
            MODULES.len()
        );
    }
}

#[test]
fn ptxas_report_for_sm90() {
    let Some(ptxas_path) = std::env::var_os(ptxas::PTXAS_ENV).map(std::path::PathBuf::from) else {
        eprintln!(
            "skipped: {} is not set (scripts/test.sh sets it from nvidia-cuda-nvcc-cu12)",
            ptxas::PTXAS_ENV
        );
        return;
    };
    if !ptxas_path.exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but {} = {} does not exist",
                ptxas::PTXAS_ENV,
                ptxas_path.display()
            );
        }
        eprintln!(
            "skipped: {} = {} does not exist",
            ptxas::PTXAS_ENV,
            ptxas_path.display()
        );
        return;
    }
    if !nvrtc_or_skip() {
        return;
    }
    let mut all = Vec::new();
    for module in MODULES {
        let ptx = compile_module(module, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        let rows =
            ptxas::assemble_report(&ptxas_path, &ptx, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        let names: BTreeSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            module.kernels.iter().copied().collect(),
            "{}: ptxas kernels",
            module.name
        );
        for r in &rows {
            assert!(
                r.registers > 0 && r.registers <= 255,
                "{}: {} registers",
                r.name,
                r.registers
            );
        }
        all.extend(rows);
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    println!("{}", ptxas::format_report("sm_90", &all));
    assert_eq!(all.len(), EXPECTED.len());
}

#[test]
fn ptx_signatures_are_parsed_for_launch_checks() {
    if !nvrtc_or_skip() {
        return;
    }
    use ParamKind::{B32, B64, F32};
    // Written from the .cu signatures: pointers and `long long` are B64, `int` B32, `float` F32.
    let expected: &[(&str, &[ParamKind])] = &[
        ("rmsnorm_fwd_bf16", &[B64, B64, B64, B64, B32, B32, F32]),
        (
            "attention_bwd_dkv_f32",
            &[
                B64, B64, B64, B64, B64, B64, B64, B64, B64, B32, B32, B32, B32, B32,
            ],
        ),
        (
            "adamw_step_bf16",
            &[
                B64, B64, B64, B64, B64, B64, F32, F32, F32, F32, F32, F32, F32, F32,
            ],
        ),
        ("swiglu_fwd_f32", &[B64, B64, B64, B64]),
        ("rope_bwd_f32", &[B64, B64, B32, B32, B32, F32]),
        ("scale_inplace_bf16", &[B64, F32, B64]),
        ("lora_dropout_add_bf16", &[B64, B64, F32, F32, B64, B64]),
    ];
    let mut all = std::collections::HashMap::new();
    for module in MODULES {
        let ptx = compile_module(module, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        for (name, params) in ptx_params(&ptx) {
            assert!(!params.is_empty(), "{name}: no parameters parsed");
            assert!(
                !params.contains(&ParamKind::Other),
                "{name}: unexpected parameter kind {params:?}"
            );
            all.insert(name, params);
        }
    }
    assert_eq!(all.len(), EXPECTED.len());
    for (name, want) in expected {
        assert_eq!(all[*name].as_slice(), *want, "{name}");
    }
}
