//! The CUDA kernel sources, one module per op, embedded as `&'static str` (candle-kernels style).
//!
//! Every `kernels/cuda/<op>.cu` file is one [`Module`]; its `extern "C"` entry points are named
//! `<op>_<dir>[_part]_<dtype>` and listed in [`Module::kernels`], which the NVRTC compile test checks
//! against the PTX (so a kernel that silently drops out of a file fails CI). [`COMMON`] (bf16
//! conversions, warp/block reductions, the dtype stamping macro) is prepended to every file by
//! [`Module::source`], so NVRTC needs no include path and no CUDA headers.
//!
//! ```
//! use koala_kernels::cuda::modules::{MODULES, Module};
//! let rms: &Module = MODULES.iter().find(|m| m.name == "rmsnorm").unwrap();
//! assert!(rms.kernels.contains(&"rmsnorm_fwd_bf16"));
//! assert!(rms.source().contains("rmsnorm_fwd_impl"));
//! ```

/// Shared prelude prepended to every module before compilation.
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

/// One `.cu` file: its name (the file stem), its source, and the entry points it must export.
#[derive(Clone, Copy, Debug)]
pub struct Module {
    pub name: &'static str,
    pub src: &'static str,
    pub kernels: &'static [&'static str],
}

impl Module {
    /// The full translation unit handed to NVRTC: [`COMMON`] followed by the file.
    pub fn source(&self) -> String {
        format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", self.name, self.src)
    }
}

/// Looks a module up by name.
pub fn module(name: &str) -> Option<&'static Module> {
    MODULES.iter().find(|m| m.name == name)
}

/// Every kernel module. Adding a `.cu` file means adding it here (and to the compile test's list).
pub const MODULES: &[Module] = &[
    Module {
        name: "embedding",
        src: include_str!("../../cuda/embedding.cu"),
        kernels: &[
            "embedding_fwd_f32",
            "embedding_fwd_bf16",
            "embedding_bwd_f32",
            "embedding_bwd_bf16",
        ],
    },
    Module {
        name: "rmsnorm",
        src: include_str!("../../cuda/rmsnorm.cu"),
        kernels: &[
            "rmsnorm_fwd_f32",
            "rmsnorm_fwd_bf16",
            "rmsnorm_bwd_f32",
            "rmsnorm_bwd_bf16",
            "rmsnorm_bwd_dw_f32",
            "rmsnorm_bwd_dw_bf16",
            "rmsnorm_bwd_dwsum_f32",
        ],
    },
    Module {
        name: "rope",
        src: include_str!("../../cuda/rope.cu"),
        kernels: &[
            "rope_fwd_f32",
            "rope_fwd_bf16",
            "rope_bwd_f32",
            "rope_bwd_bf16",
        ],
    },
    Module {
        name: "attention",
        src: include_str!("../../cuda/attention.cu"),
        kernels: &[
            "attention_fwd_f32",
            "attention_fwd_bf16",
            "attention_bwd_delta_f32",
            "attention_bwd_delta_bf16",
            "attention_bwd_dq_f32",
            "attention_bwd_dq_bf16",
            "attention_bwd_dkv_f32",
            "attention_bwd_dkv_bf16",
        ],
    },
    Module {
        name: "swiglu",
        src: include_str!("../../cuda/swiglu.cu"),
        kernels: &[
            "swiglu_fwd_f32",
            "swiglu_fwd_bf16",
            "swiglu_bwd_f32",
            "swiglu_bwd_bf16",
        ],
    },
    Module {
        name: "cross_entropy",
        src: include_str!("../../cuda/cross_entropy.cu"),
        kernels: &["cross_entropy_fwdbwd_f32", "cross_entropy_fwdbwd_bf16"],
    },
    Module {
        name: "adamw",
        src: include_str!("../../cuda/adamw.cu"),
        kernels: &["adamw_step_f32", "adamw_step_bf16"],
    },
    Module {
        name: "global_norm",
        src: include_str!("../../cuda/global_norm.cu"),
        kernels: &["global_norm_fwd_f32", "global_norm_fwd_bf16"],
    },
    Module {
        name: "cast",
        src: include_str!("../../cuda/cast.cu"),
        kernels: &["cast_f32_to_bf16", "cast_bf16_to_f32"],
    },
    Module {
        name: "residual",
        src: include_str!("../../cuda/residual.cu"),
        kernels: &[
            "add_fwd_f32",
            "add_fwd_bf16",
            "scale_inplace_f32",
            "scale_inplace_bf16",
            "add_inplace_f32_f32",
            "add_inplace_f32_bf16",
            "add_inplace_bf16_bf16",
            "add_inplace_bf16_f32",
        ],
    },
    Module {
        name: "lora",
        src: include_str!("../../cuda/lora.cu"),
        kernels: &[
            "lora_dropout_f32",
            "lora_dropout_bf16",
            "lora_dropout_add_f32",
            "lora_dropout_add_bf16",
        ],
    },
];
