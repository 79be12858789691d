//! [`CudaBackend`]: the op set on one NVIDIA GPU, with hand-written kernels (compiled at run time by
//! NVRTC from [`super::modules`]) and cuBLAS for the matmuls.
//!
//! # How a buffer carries its dtype (the bf16 policy)
//!
//! The [`Backend`] contract speaks of `f32` tensors: `upload` takes `&[f32]` and `download` gives
//! `Vec<f32>`. A [`CudaBuf`] stores its elements either as fp32 or as bf16 ([`DType`]) and converts
//! at the host boundary, so callers written against the trait run unchanged in both precisions.
//!
//! * [`Precision::F32`]: every buffer is fp32; results match the CPU reference to fp32 tolerance.
//! * [`Precision::Bf16`] (mixed precision): `zeros` and `upload` make bf16 buffers, so weights,
//!   activations and activation gradients are bf16 and every kernel computes in fp32 registers.
//!   The ops themselves keep what must stay exact in fp32, whatever the caller allocated:
//!   - cached statistics (`rmsnorm` `rstd`, attention `lse`) and per-row `losses` are written fp32;
//!   - **weight gradients are fp32** (`matmul_bwd` `dw`, `rmsnorm_bwd` `dw`, `embedding_bwd`
//!     `dtable`), so gradient accumulation loses nothing;
//!   - AdamW state `m`, `v` is fp32, and a bf16 parameter gets an **fp32 master copy** (created at
//!     its first step, or exactly at upload with [`Backend::upload_param`]); the step updates
//!     the master and writes `bf16(master)` back to the parameter the forward reads;
//!   - reductions (norms, softmax sums, `sum_squares` in f64) run in fp32 or wider.
//!
//!   An op re-types an output buffer it is handed (converting its contents, so `+=` outputs keep
//!   their value) when its dtype is not the one the policy gives it; the first step pays a
//!   conversion, later steps reuse the buffer. An input whose dtype differs from the op's compute
//!   dtype (the dtype of its primary input) is converted into a temporary.
//!
//! Ids (`u32`) are uploaded with their maximum, so the range checks of the contract (`ids < vocab`,
//! `targets < v`) happen on the host before launch and a kernel never reads out of bounds.
use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use super::modules::MODULES;
use super::nvrtc::{self, ParamKind};
use crate::{AdamWParams, AttnShape, Backend, Error, LoraShape, Result};

/// Element type of a [`CudaBuf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
}

impl DType {
    /// The kernel-name suffix for this dtype.
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        }
    }
}

/// The precision policy of a [`CudaBackend`] (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Everything fp32.
    F32,
    /// bf16 weights and activations; fp32 master weights, weight gradients, optimizer state,
    /// statistics and reductions.
    Bf16,
}

impl Precision {
    fn act(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::Bf16,
        }
    }
}

enum Storage {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
}

/// A tensor on the GPU: fp32 or bf16 storage, plus the fp32 master copy of a bf16 parameter.
pub struct CudaBuf {
    storage: Storage,
    master: Option<CudaSlice<f32>>,
}

impl CudaBuf {
    /// The element type the buffer stores.
    pub fn dtype(&self) -> DType {
        match self.storage {
            Storage::F32(_) => DType::F32,
            Storage::Bf16(_) => DType::Bf16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::F32(s) => s.len(),
            Storage::Bf16(s) => s.len(),
        }
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the buffer carries an fp32 master copy (a bf16 parameter after its first AdamW step).
    pub fn has_master(&self) -> bool {
        self.master.is_some()
    }

    /// The fp32 storage, if the buffer is fp32.
    pub(crate) fn f32_ref(&self) -> Option<&CudaSlice<f32>> {
        match &self.storage {
            Storage::F32(s) => Some(s),
            Storage::Bf16(_) => None,
        }
    }

    /// The fp32 storage, if the buffer is fp32.
    pub(crate) fn f32_mut(&mut self) -> Option<&mut CudaSlice<f32>> {
        match &mut self.storage {
            Storage::F32(s) => Some(s),
            Storage::Bf16(_) => None,
        }
    }

    /// The raw storage as bytes (for byte-moving collectives such as all-gather).
    pub(crate) fn bytes(&self) -> Option<cudarc::driver::CudaView<'_, u8>> {
        // SAFETY: every bit pattern is a valid u8; the view covers exactly the buffer's bytes.
        unsafe {
            match &self.storage {
                Storage::F32(s) => s.transmute::<u8>(s.len() * 4),
                Storage::Bf16(s) => s.transmute::<u8>(s.len() * 2),
            }
        }
    }

    /// The raw storage as mutable bytes.
    pub(crate) fn bytes_mut(&mut self) -> Option<cudarc::driver::CudaViewMut<'_, u8>> {
        // SAFETY: as `bytes`; callers write whole elements of the buffer's own dtype.
        unsafe {
            match &mut self.storage {
                Storage::F32(s) => {
                    let n = s.len() * 4;
                    s.transmute_mut::<u8>(n)
                }
                Storage::Bf16(s) => {
                    let n = s.len() * 2;
                    s.transmute_mut::<u8>(n)
                }
            }
        }
    }

    fn ptr(&self, stream: &CudaStream) -> u64 {
        // Event tracking is disabled and every launch goes to the backend's one stream, so the raw
        // pointer is valid for stream-ordered use as long as `self` lives.
        match &self.storage {
            Storage::F32(s) => s.device_ptr(stream).0,
            Storage::Bf16(s) => s.device_ptr(stream).0,
        }
    }
}

/// A `u32` tensor on the GPU, with its maximum (for host-side range checks).
pub struct CudaIds {
    data: CudaSlice<u32>,
    max: Option<u32>,
}

impl CudaIds {
    fn ptr(&self, stream: &CudaStream) -> u64 {
        self.data.device_ptr(stream).0
    }

    fn check_below(&self, op: &'static str, limit: usize) -> Result<()> {
        match self.max {
            Some(m) if m as usize >= limit => Err(Error::Index {
                op,
                index: m as u64,
                limit: limit as u64,
            }),
            _ => Ok(()),
        }
    }
}

/// One kernel argument.
#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl Arg {
    fn kind(&self) -> ParamKind {
        match self {
            Arg::Ptr(_) | Arg::I64(_) => ParamKind::B64,
            Arg::I32(_) => ParamKind::B32,
            Arg::F32(_) => ParamKind::F32,
        }
    }
}

/// Checks a launch's arguments against the kernel's PTX signature.
fn check_signature(name: &str, args: &[Arg], want: &[ParamKind]) -> Result<()> {
    let got: Vec<ParamKind> = args.iter().map(Arg::kind).collect();
    if got == want {
        Ok(())
    } else {
        Err(Error::Device(format!(
            "launch of {name}: arguments {got:?} do not match the kernel's parameters {want:?}"
        )))
    }
}

const BLOCK: u32 = 256;
/// Row chunks of the RMSNorm `dw` reduction (fixed, so the sum order does not depend on the device).
const RMS_DW_CHUNKS: usize = 64;
/// Grid size of `global_norm_fwd_*` (fixed, so the reduction order does not depend on the device).
const GN_BLOCKS: usize = 256;
/// Must match `ATT_WARPS`, `ATT_TILE` and `ATT_MAX_HD` in `kernels/cuda/attention.cu`.
const ATT_WARPS: u32 = 4;
const ATT_TILE: usize = 32;
const ATT_MAX_HD: usize = 128;

fn dev<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Device(format!("{what}: {e:?}"))
}

fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape {
        op,
        detail: format!("{what} = {v} exceeds i32"),
    })
}

fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Shape {
            op,
            detail: format!("{what} has {got} elements, expected {want}"),
        })
    }
}

fn grid_stride(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    ordinal: usize,
    arch: &'static str,
    precision: Precision,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: HashMap<&'static str, CudaFunction>,
    /// Parameter kinds of every kernel, from its PTX (checked on every launch).
    sigs: HashMap<String, Vec<ParamKind>>,
    /// Wait for every launch to finish (benches; debugging).
    blocking: std::sync::atomic::AtomicBool,
}

/// Whether the CUDA driver library can be loaded on this machine (never panics).
pub fn driver_present() -> bool {
    // SAFETY: probes `dlopen` with cudarc's candidate names; loads nothing else.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of visible CUDA devices, or why there are none (never panics).
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::Unavailable(
            "no CUDA driver: libcuda.so could not be loaded (no NVIDIA driver on this machine)"
                .into(),
        ));
    }
    let n = CudaContext::device_count()
        .map_err(|e| Error::Unavailable(format!("CUDA driver error: {e:?}")))?;
    if n <= 0 {
        return Err(Error::Unavailable("the CUDA driver reports no GPU".into()));
    }
    Ok(n as usize)
}

impl CudaBackend {
    /// Opens device `ordinal`, compiles every kernel module for its architecture with NVRTC and
    /// creates the cuBLAS handle. Fails with [`Error::Unavailable`] (never panics) when the driver,
    /// the device, NVRTC or cuBLAS is missing.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Unavailable(format!(
                "cuda:{ordinal} requested but only {count} GPU(s) visible"
            )));
        }
        nvrtc::ensure_nvrtc()?;
        // SAFETY: probes `dlopen` only.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Unavailable(
                "cuBLAS (libcublas.so.12) not found".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev("creating the CUDA context"))?;
        // SAFETY: the backend launches everything on one stream, so no cross-stream tracking is needed.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(dev("reading the compute capability"))?;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let stream = ctx.default_stream();
        let mut funcs = HashMap::new();
        let mut sigs = HashMap::new();
        for module in MODULES {
            let ptx = nvrtc::compile_module_ptx(module, arch)?;
            sigs.extend(nvrtc::ptx_params(&ptx.to_src()));
            let loaded = ctx
                .load_module(ptx)
                .map_err(dev("loading a kernel module"))?;
            for &name in module.kernels {
                let f = loaded.load_function(name).map_err(dev(name))?;
                funcs.insert(name, f);
            }
        }
        let blas = CudaBlas::new(stream.clone()).map_err(dev("creating the cuBLAS handle"))?;
        tracing::info!(
            ordinal,
            arch,
            ?precision,
            kernels = funcs.len(),
            "CUDA backend ready"
        );
        Ok(Self {
            ordinal,
            arch,
            precision,
            ctx,
            stream,
            blas,
            funcs,
            sigs,
            blocking: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The precision policy.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device's architecture (`sm_90`).
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The CUDA context (for the NCCL communicator).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every op is launched on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Blocking mode: every op waits for its kernels to finish before returning (for per-op
    /// timing and for pinning an asynchronous error to the op that caused it). Off by default.
    pub fn set_blocking(&self, on: bool) {
        self.blocking
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn after_launch(&self) -> Result<()> {
        if self.blocking.load(std::sync::atomic::Ordering::Relaxed) {
            self.synchronize()?;
        }
        Ok(())
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev("synchronize"))
    }

    /// A zero-filled buffer of an explicit dtype.
    pub fn zeros_dtype(&self, len: usize, dtype: DType) -> Result<CudaBuf> {
        let storage = match dtype {
            DType::F32 => Storage::F32(self.stream.alloc_zeros::<f32>(len).map_err(dev("alloc"))?),
            DType::Bf16 => {
                Storage::Bf16(self.stream.alloc_zeros::<u16>(len).map_err(dev("alloc"))?)
            }
        };
        Ok(CudaBuf {
            storage,
            master: None,
        })
    }

    /// Uploads host data into a buffer of an explicit dtype.
    pub fn upload_dtype(&self, data: &[f32], dtype: DType) -> Result<CudaBuf> {
        let storage = match dtype {
            DType::F32 => Storage::F32(self.stream.clone_htod(data).map_err(dev("upload"))?),
            DType::Bf16 => {
                let bits: Vec<u16> = data
                    .iter()
                    .map(|&x| half::bf16::from_f32(x).to_bits())
                    .collect();
                Storage::Bf16(self.stream.clone_htod(&bits).map_err(dev("upload"))?)
            }
        };
        Ok(CudaBuf {
            storage,
            master: None,
        })
    }

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| Error::Device(format!("kernel {name} is not loaded")))
    }

    fn launch(&self, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let f = self.func(name)?;
        let want = self
            .sigs
            .get(name)
            .ok_or_else(|| Error::Device(format!("no signature for kernel {name}")))?;
        check_signature(name, args, want)?;
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        // SAFETY: every launcher checks the buffer lengths against the shapes it passes, the kernel
        // signature matches `args` (same order and widths; pointers as u64), and the buffers
        // outlive the launch in stream order (temporaries are freed on the same stream).
        unsafe { b.launch(cfg) }.map_err(dev(name))?;
        self.after_launch()
    }

    /// Converts `buf` in place to `dtype` (keeping its values), if it is not already.
    pub fn ensure_dtype(&self, buf: &mut CudaBuf, dtype: DType) -> Result<()> {
        if buf.dtype() == dtype {
            return Ok(());
        }
        let converted = self.convert(buf, dtype)?;
        buf.storage = converted.storage;
        Ok(())
    }

    /// A new buffer holding `src` converted to `dtype`.
    pub(crate) fn convert(&self, src: &CudaBuf, dtype: DType) -> Result<CudaBuf> {
        let len = src.len();
        let dst = self.zeros_dtype(len, dtype)?;
        if len == 0 {
            return Ok(dst);
        }
        let name = match (src.dtype(), dtype) {
            (DType::F32, DType::Bf16) => "cast_f32_to_bf16",
            (DType::Bf16, DType::F32) => "cast_bf16_to_f32",
            _ => {
                let mut dst = dst;
                self.copy_same(&mut dst, src)?;
                return Ok(dst);
            }
        };
        let s = &self.stream;
        self.launch(
            name,
            grid_stride(len),
            &[
                Arg::Ptr(dst.ptr(s)),
                Arg::Ptr(src.ptr(s)),
                Arg::I64(len as i64),
            ],
        )?;
        Ok(dst)
    }

    /// A new fp32 slice holding `src`'s values.
    /// Drops a buffer's fp32 master copy: for a buffer whose storage a collective overwrote
    /// (the all-gathered parameters of ZeRO-1, whose masters live in the shards).
    pub(crate) fn drop_master(&self, buf: &mut CudaBuf) {
        buf.master = None;
    }

    fn to_f32_slice(&self, src: &CudaBuf) -> Result<CudaSlice<f32>> {
        match self.convert(src, DType::F32)?.storage {
            Storage::F32(s) => Ok(s),
            Storage::Bf16(_) => Err(Error::Device("cast to f32 produced bf16".into())),
        }
    }

    /// The device pointer of `buf` as `dtype`, converting into `tmp` when needed.
    fn ptr_as(&self, buf: &CudaBuf, dtype: DType, tmp: &mut Vec<CudaBuf>) -> Result<u64> {
        if buf.dtype() == dtype {
            return Ok(buf.ptr(&self.stream));
        }
        let c = self.convert(buf, dtype)?;
        let p = c.ptr(&self.stream);
        tmp.push(c);
        Ok(p)
    }

    /// `out = f(x, y)` elementwise with kernel `{op}_{dtype}` (`add_fwd`, `swiglu_fwd`): both
    /// inputs and the output at `x`'s dtype, `y` converted if it differs. The names label the
    /// operands in length errors.
    fn elementwise2(
        &self,
        op: &'static str,
        out: &mut CudaBuf,
        (x_name, x): (&'static str, &CudaBuf),
        (y_name, y): (&'static str, &CudaBuf),
        len: usize,
    ) -> Result<()> {
        check_len(op, x_name, x.len(), len)?;
        check_len(op, y_name, y.len(), len)?;
        let t = x.dtype();
        self.ensure_dtype(out, t)?;
        check_len(op, "out", out.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let mut tmp = Vec::new();
        let yp = self.ptr_as(y, t, &mut tmp)?;
        let s = &self.stream;
        self.launch(
            &format!("{op}_{}", t.suffix()),
            grid_stride(len),
            &[
                Arg::Ptr(out.ptr(s)),
                Arg::Ptr(x.ptr(s)),
                Arg::Ptr(yp),
                Arg::I64(len as i64),
            ],
        )
    }

    fn copy_same(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        match (&mut dst.storage, &src.storage) {
            (Storage::F32(d), Storage::F32(s)) => {
                self.stream.memcpy_dtod(s, d).map_err(dev("copy"))
            }
            (Storage::Bf16(d), Storage::Bf16(s)) => {
                self.stream.memcpy_dtod(s, d).map_err(dev("copy"))
            }
            _ => Err(Error::Device("copy_same: dtypes differ".into())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        op: &'static str,
        trans_a: bool,
        trans_b: bool,
        (m, n, k): (usize, usize, usize),
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        ab_type: DType,
        c: u64,
        ldc: usize,
        c_type: DType,
        beta: f32,
    ) -> Result<()> {
        self.gemm_scaled(
            op,
            trans_a,
            trans_b,
            (m, n, k),
            (a, lda),
            (b, ldb),
            ab_type,
            (c, ldc),
            c_type,
            1.0,
            beta,
        )
    }

    /// Column-major `c = alpha · op(a) · op(b) + beta · c` (cuBLAS `gemm_ex`, fp32 compute).
    #[allow(clippy::too_many_arguments)]
    fn gemm_scaled(
        &self,
        op: &'static str,
        trans_a: bool,
        trans_b: bool,
        (m, n, k): (usize, usize, usize),
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        ab_type: DType,
        (c, ldc): (u64, usize),
        c_type: DType,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        use cudarc::cublas::sys::{
            cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType,
        };
        let ty = |d: DType| match d {
            DType::F32 => cudaDataType::CUDA_R_32F,
            DType::Bf16 => cudaDataType::CUDA_R_16BF,
        };
        let tr = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // SAFETY: column-major GEMM on device buffers whose sizes the caller checked against m, n, k
        // and the leading dimensions; alpha/beta are host scalars (the default pointer mode).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                tr(trans_a),
                tr(trans_b),
                to_i32(op, "m", m)?,
                to_i32(op, "n", n)?,
                to_i32(op, "k", k)?,
                (&alpha) as *const f32 as *const _,
                a as *const _,
                ty(ab_type),
                to_i32(op, "lda", lda)?,
                b as *const _,
                ty(ab_type),
                to_i32(op, "ldb", ldb)?,
                (&beta) as *const f32 as *const _,
                c as *mut _,
                ty(c_type),
                to_i32(op, "ldc", ldc)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(dev(op))?;
        self.after_launch()
    }

    fn att_smem(hd: usize, extra_rows: usize, extra: usize) -> u32 {
        ((2 * ATT_TILE * (hd + 1) + extra_rows * ATT_WARPS as usize * hd + extra) * 4) as u32
    }

    fn check_attn(op: &'static str, s: &AttnShape) -> Result<()> {
        if s.n_kv_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "n_heads {} is not a multiple of n_kv_heads {}",
                    s.n_heads, s.n_kv_heads
                ),
            });
        }
        if s.head_dim == 0 || s.head_dim > ATT_MAX_HD {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "head_dim {} unsupported by the CUDA kernel (1..={ATT_MAX_HD})",
                    s.head_dim
                ),
            });
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Ids = CudaIds;

    /// `cuda:N-f32` or `cuda:N-bf16`.
    fn name(&self) -> String {
        format!("cuda:{}-{}", self.ordinal, self.precision.act().suffix())
    }

    fn zeros(&self, len: usize) -> Result<CudaBuf> {
        self.zeros_dtype(len, self.precision.act())
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        self.upload_dtype(data, self.precision.act())
    }

    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        match &buf.storage {
            Storage::F32(s) => self.stream.clone_dtoh(s).map_err(dev("download")),
            Storage::Bf16(s) => {
                let bits = self.stream.clone_dtoh(s).map_err(dev("download"))?;
                Ok(bits
                    .into_iter()
                    .map(|b| half::bf16::from_bits(b).to_f32())
                    .collect())
            }
        }
    }

    /// In bf16 precision the buffer is bf16 with an exact fp32 master copy of `data`; in fp32
    /// precision it is a plain fp32 buffer.
    fn upload_param(&self, data: &[f32]) -> Result<CudaBuf> {
        let mut buf = self.upload_dtype(data, self.precision.act())?;
        if buf.dtype() == DType::Bf16 {
            buf.master = Some(self.stream.clone_htod(data).map_err(dev("upload"))?);
        }
        Ok(buf)
    }

    /// The fp32 master copy of a bf16 parameter (or the buffer itself when it has none).
    fn download_param(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        match &buf.master {
            Some(m) => self.stream.clone_dtoh(m).map_err(dev("download")),
            None => self.download(buf),
        }
    }

    fn upload_f32(&self, data: &[f32]) -> Result<CudaBuf> {
        self.upload_dtype(data, DType::F32)
    }

    fn zeros_f32(&self, len: usize) -> Result<CudaBuf> {
        self.zeros_dtype(len, DType::F32)
    }

    fn upload_ids(&self, ids: &[u32]) -> Result<CudaIds> {
        let data = self.stream.clone_htod(ids).map_err(dev("upload_ids"))?;
        Ok(CudaIds {
            data,
            max: ids.iter().copied().max(),
        })
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len()
    }

    fn fill_zero(&self, buf: &mut CudaBuf) -> Result<()> {
        match &mut buf.storage {
            Storage::F32(s) => self.stream.memset_zeros(s).map_err(dev("fill_zero"))?,
            Storage::Bf16(s) => self.stream.memset_zeros(s).map_err(dev("fill_zero"))?,
        }
        if let Some(m) = &mut buf.master {
            self.stream.memset_zeros(m).map_err(dev("fill_zero"))?;
        }
        Ok(())
    }

    fn copy(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        check_len("copy", "dst", dst.len(), src.len())?;
        if dst.dtype() == src.dtype() {
            self.copy_same(dst, src)?;
        } else {
            let c = self.convert(src, dst.dtype())?;
            self.copy_same(dst, &c)?;
        }
        if dst.master.is_some() {
            // Keep a parameter's master copy in step with its new value.
            let m = match &src.master {
                Some(sm) => self.stream.clone_dtod(sm).map_err(dev("copy"))?,
                None => self.to_f32_slice(src)?,
            };
            dst.master = Some(m);
        }
        Ok(())
    }

    fn embedding_fwd(
        &self,
        out: &mut CudaBuf,
        ids: &CudaIds,
        table: &CudaBuf,
        n: usize,
        c: usize,
    ) -> Result<()> {
        const OP: &str = "embedding_fwd";
        check_len(OP, "ids", ids.data.len(), n)?;
        if c == 0 || !table.len().is_multiple_of(c) {
            return Err(Error::Shape {
                op: OP,
                detail: format!("table length {} not a multiple of c={c}", table.len()),
            });
        }
        ids.check_below(OP, table.len() / c)?;
        let t = table.dtype();
        self.ensure_dtype(out, t)?;
        check_len(OP, "out", out.len(), n * c)?;
        if n == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, (c as u32).div_ceil(BLOCK), 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let name = format!("embedding_fwd_{}", t.suffix());
        self.launch(
            &name,
            cfg,
            &[
                Arg::Ptr(out.ptr(s)),
                Arg::Ptr(ids.ptr(s)),
                Arg::Ptr(table.ptr(s)),
                Arg::I32(to_i32(OP, "n", n)?),
                Arg::I32(to_i32(OP, "c", c)?),
            ],
        )
    }

    fn embedding_bwd(
        &self,
        dtable: &mut CudaBuf,
        dout: &CudaBuf,
        ids: &CudaIds,
        n: usize,
        c: usize,
    ) -> Result<()> {
        const OP: &str = "embedding_bwd";
        check_len(OP, "ids", ids.data.len(), n)?;
        check_len(OP, "dout", dout.len(), n * c)?;
        if c == 0 || !dtable.len().is_multiple_of(c) {
            return Err(Error::Shape {
                op: OP,
                detail: format!("dtable length {} not a multiple of c={c}", dtable.len()),
            });
        }
        ids.check_below(OP, dtable.len() / c)?;
        self.ensure_dtype(dtable, DType::F32)?;
        if n == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let cfg = LaunchConfig {
            grid_dim: ((c as u32).div_ceil(BLOCK), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let name = format!("embedding_bwd_{}", dout.dtype().suffix());
        self.launch(
            &name,
            cfg,
            &[
                Arg::Ptr(dtable.ptr(s)),
                Arg::Ptr(dout.ptr(s)),
                Arg::Ptr(ids.ptr(s)),
                Arg::I32(to_i32(OP, "n", n)?),
                Arg::I32(to_i32(OP, "c", c)?),
            ],
        )
    }

    fn rmsnorm_fwd(
        &self,
        out: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "rmsnorm_fwd";
        check_len(OP, "x", x.len(), n * c)?;
        check_len(OP, "w", w.len(), c)?;
        let t = x.dtype();
        self.ensure_dtype(out, t)?;
        self.ensure_dtype(rstd, DType::F32)?;
        check_len(OP, "out", out.len(), n * c)?;
        check_len(OP, "rstd", rstd.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let mut tmp = Vec::new();
        let wp = self.ptr_as(w, t, &mut tmp)?;
        let rows_per_block = BLOCK / 32;
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(rows_per_block), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("rmsnorm_fwd_{}", t.suffix()),
            cfg,
            &[
                Arg::Ptr(out.ptr(s)),
                Arg::Ptr(rstd.ptr(s)),
                Arg::Ptr(x.ptr(s)),
                Arg::Ptr(wp),
                Arg::I32(to_i32(OP, "n", n)?),
                Arg::I32(to_i32(OP, "c", c)?),
                Arg::F32(eps),
            ],
        )
    }

    fn rmsnorm_bwd(
        &self,
        dx: &mut CudaBuf,
        dw: &mut CudaBuf,
        dout: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        rstd: &CudaBuf,
        n: usize,
        c: usize,
    ) -> Result<()> {
        const OP: &str = "rmsnorm_bwd";
        check_len(OP, "x", x.len(), n * c)?;
        check_len(OP, "dout", dout.len(), n * c)?;
        check_len(OP, "w", w.len(), c)?;
        check_len(OP, "rstd", rstd.len(), n)?;
        let t = x.dtype();
        self.ensure_dtype(dx, t)?;
        self.ensure_dtype(dw, DType::F32)?;
        check_len(OP, "dx", dx.len(), n * c)?;
        check_len(OP, "dw", dw.len(), c)?;
        if n == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let mut tmp = Vec::new();
        let doutp = self.ptr_as(dout, t, &mut tmp)?;
        let wp = self.ptr_as(w, t, &mut tmp)?;
        let rp = self.ptr_as(rstd, DType::F32, &mut tmp)?;
        let (ni, ci) = (to_i32(OP, "n", n)?, to_i32(OP, "c", c)?);
        let rows_per_block = BLOCK / 32;
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(rows_per_block), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("rmsnorm_bwd_{}", t.suffix()),
            cfg,
            &[
                Arg::Ptr(dx.ptr(s)),
                Arg::Ptr(doutp),
                Arg::Ptr(x.ptr(s)),
                Arg::Ptr(wp),
                Arg::Ptr(rp),
                Arg::I32(ni),
                Arg::I32(ci),
            ],
        )?;
        // dw: fp32 partials per row chunk, then the chunks added in order (deterministic).
        let chunks = n.min(RMS_DW_CHUNKS);
        let partial = self.zeros_dtype(chunks * c, DType::F32)?;
        let cols = (c as u32).div_ceil(BLOCK);
        let cfg = LaunchConfig {
            grid_dim: (cols, chunks as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("rmsnorm_bwd_dw_{}", t.suffix()),
            cfg,
            &[
                Arg::Ptr(partial.ptr(s)),
                Arg::Ptr(doutp),
                Arg::Ptr(x.ptr(s)),
                Arg::Ptr(rp),
                Arg::I32(ni),
                Arg::I32(ci),
            ],
        )?;
        let cfg = LaunchConfig {
            grid_dim: (cols, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            "rmsnorm_bwd_dwsum_f32",
            cfg,
            &[
                Arg::Ptr(dw.ptr(s)),
                Arg::Ptr(partial.ptr(s)),
                Arg::I32(chunks as i32),
                Arg::I32(ci),
            ],
        )
    }

    fn matmul_fwd(
        &self,
        out: &mut CudaBuf,
        inp: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        const OP: &str = "matmul_fwd";
        check_len(OP, "inp", inp.len(), n * ic)?;
        check_len(OP, "w", w.len(), oc * ic)?;
        let t = inp.dtype();
        self.ensure_dtype(out, t)?;
        check_len(OP, "out", out.len(), n * oc)?;
        if n == 0 || oc == 0 {
            return Ok(());
        }
        let mut tmp = Vec::new();
        let wp = self.ptr_as(w, t, &mut tmp)?;
        let s = &self.stream;
        // Row-major out[n,oc] = inp[n,ic]·w[oc,ic]ᵀ is column-major outᵀ(oc×n) = op_T(w)·inpᵀ.
        self.gemm(
            OP,
            true,
            false,
            (oc, n, ic),
            wp,
            ic,
            inp.ptr(s),
            ic,
            t,
            out.ptr(s),
            oc,
            t,
            0.0,
        )
    }

    fn matmul_bwd(
        &self,
        dinp: &mut CudaBuf,
        dw: &mut CudaBuf,
        dout: &CudaBuf,
        inp: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        const OP: &str = "matmul_bwd";
        check_len(OP, "inp", inp.len(), n * ic)?;
        check_len(OP, "w", w.len(), oc * ic)?;
        check_len(OP, "dout", dout.len(), n * oc)?;
        let t = inp.dtype();
        self.ensure_dtype(dinp, t)?;
        self.ensure_dtype(dw, DType::F32)?;
        check_len(OP, "dinp", dinp.len(), n * ic)?;
        check_len(OP, "dw", dw.len(), oc * ic)?;
        if n == 0 || ic == 0 {
            return Ok(());
        }
        let mut tmp = Vec::new();
        let wp = self.ptr_as(w, t, &mut tmp)?;
        let dp = self.ptr_as(dout, t, &mut tmp)?;
        let s = &self.stream;
        // dinpᵀ(ic×n) = wᵀ(ic×oc)·doutᵀ(oc×n), overwriting.
        if oc == 0 {
            return self.fill_zero(dinp);
        }
        self.gemm(
            OP,
            false,
            false,
            (ic, n, oc),
            wp,
            ic,
            dp,
            oc,
            t,
            dinp.ptr(s),
            ic,
            t,
            0.0,
        )?;
        // dwᵀ(ic×oc) += inpᵀ(ic×n)·dout(n×oc), accumulating in fp32.
        self.gemm(
            OP,
            false,
            true,
            (ic, oc, n),
            inp.ptr(s),
            ic,
            dp,
            oc,
            t,
            dw.ptr(s),
            ic,
            DType::F32,
            1.0,
        )
    }

    fn matmul_bwd_data(
        &self,
        dinp: &mut CudaBuf,
        dout: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        const OP: &str = "matmul_bwd_data";
        check_len(OP, "w", w.len(), oc * ic)?;
        check_len(OP, "dout", dout.len(), n * oc)?;
        let t = dout.dtype();
        self.ensure_dtype(dinp, t)?;
        check_len(OP, "dinp", dinp.len(), n * ic)?;
        if n == 0 || ic == 0 {
            return Ok(());
        }
        if oc == 0 {
            return self.fill_zero(dinp);
        }
        let mut tmp = Vec::new();
        let wp = self.ptr_as(w, t, &mut tmp)?;
        let s = &self.stream;
        // dinpᵀ(ic×n) = wᵀ(ic×oc)·doutᵀ(oc×n), overwriting.
        self.gemm(
            OP,
            false,
            false,
            (ic, n, oc),
            wp,
            ic,
            dout.ptr(s),
            oc,
            t,
            dinp.ptr(s),
            ic,
            t,
            0.0,
        )
    }

    fn lora_fwd(
        &self,
        out: &mut CudaBuf,
        xa: &mut CudaBuf,
        scratch: &mut CudaBuf,
        x: &CudaBuf,
        a: &CudaBuf,
        b: &CudaBuf,
        sh: &LoraShape,
    ) -> Result<()> {
        const OP: &str = "lora_fwd";
        let LoraShape { n, ic, r, oc, .. } = *sh;
        Self::check_lora(OP, sh)?;
        check_len(OP, "x", x.len(), n * ic)?;
        check_len(OP, "a", a.len(), r * ic)?;
        check_len(OP, "b", b.len(), oc * r)?;
        check_len(OP, "out", out.len(), n * oc)?;
        let t = x.dtype();
        self.ensure_dtype(xa, t)?;
        check_len(OP, "xa", xa.len(), n * r)?;
        if out.dtype() != t {
            return Err(Error::Device(format!("{OP}: out and x differ in dtype")));
        }
        if n == 0 || r == 0 {
            return Ok(());
        }
        let mut tmp = Vec::new();
        let ap = self.ptr_as(a, t, &mut tmp)?;
        let bp = self.ptr_as(b, t, &mut tmp)?;
        let xd = self.lora_input(OP, scratch, x, sh)?;
        let s = &self.stream;
        // xaᵀ(r×n) = op_T(a)·xdᵀ; then outᵀ(oc×n) += scale · op_T(b)·xaᵀ.
        self.gemm(
            OP,
            true,
            false,
            (r, n, ic),
            ap,
            ic,
            xd,
            ic,
            t,
            xa.ptr(s),
            r,
            t,
            0.0,
        )?;
        self.gemm_scaled(
            OP,
            true,
            false,
            (oc, n, r),
            (bp, r),
            (xa.ptr(s), r),
            t,
            (out.ptr(s), oc),
            t,
            sh.scale,
            1.0,
        )
    }

    fn lora_bwd(
        &self,
        dx: Option<&mut CudaBuf>,
        da: &mut CudaBuf,
        db: &mut CudaBuf,
        dxa: &mut CudaBuf,
        scratch: &mut CudaBuf,
        dout: &CudaBuf,
        x: &CudaBuf,
        xa: &CudaBuf,
        a: &CudaBuf,
        b: &CudaBuf,
        sh: &LoraShape,
    ) -> Result<()> {
        const OP: &str = "lora_bwd";
        let LoraShape { n, ic, r, oc, .. } = *sh;
        Self::check_lora(OP, sh)?;
        check_len(OP, "x", x.len(), n * ic)?;
        check_len(OP, "xa", xa.len(), n * r)?;
        check_len(OP, "dout", dout.len(), n * oc)?;
        check_len(OP, "a", a.len(), r * ic)?;
        check_len(OP, "b", b.len(), oc * r)?;
        let t = x.dtype();
        self.ensure_dtype(da, DType::F32)?;
        self.ensure_dtype(db, DType::F32)?;
        self.ensure_dtype(dxa, t)?;
        check_len(OP, "da", da.len(), r * ic)?;
        check_len(OP, "db", db.len(), oc * r)?;
        check_len(OP, "dxa", dxa.len(), n * r)?;
        if n == 0 || r == 0 {
            return Ok(());
        }
        let mut tmp = Vec::new();
        let ap = self.ptr_as(a, t, &mut tmp)?;
        let bp = self.ptr_as(b, t, &mut tmp)?;
        let dp = self.ptr_as(dout, t, &mut tmp)?;
        let xap = self.ptr_as(xa, t, &mut tmp)?;
        let s = &self.stream;
        // dbᵀ(r×oc) += scale · xaᵀ(r×n)·dout(n×oc), in fp32.
        self.gemm_scaled(
            OP,
            false,
            true,
            (r, oc, n),
            (xap, r),
            (dp, oc),
            t,
            (db.ptr(s), r),
            DType::F32,
            sh.scale,
            1.0,
        )?;
        // dxaᵀ(r×n) = scale · bᵀ(r×oc)·doutᵀ(oc×n).
        self.gemm_scaled(
            OP,
            false,
            false,
            (r, n, oc),
            (bp, r),
            (dp, oc),
            t,
            (dxa.ptr(s), r),
            t,
            sh.scale,
            0.0,
        )?;
        // daᵀ(ic×r) += xdᵀ(ic×n)·dxa(n×r), in fp32.
        let xd = self.lora_input(OP, scratch, x, sh)?;
        self.gemm(
            OP,
            false,
            true,
            (ic, r, n),
            xd,
            ic,
            dxa.ptr(s),
            r,
            t,
            da.ptr(s),
            ic,
            DType::F32,
            1.0,
        )?;
        let Some(dx) = dx else {
            return Ok(());
        };
        check_len(OP, "dx", dx.len(), n * ic)?;
        if dx.dtype() != t {
            return Err(Error::Device(format!("{OP}: dx and x differ in dtype")));
        }
        if sh.dropout == 0.0 {
            // dxᵀ(ic×n) += aᵀ(ic×r)·dxaᵀ(r×n).
            return self.gemm(
                OP,
                false,
                false,
                (ic, n, r),
                ap,
                ic,
                dxa.ptr(s),
                r,
                t,
                dx.ptr(s),
                ic,
                t,
                1.0,
            );
        }
        // scratch = dxa·a, then dx += drop(scratch) with the forward's mask.
        self.gemm(
            OP,
            false,
            false,
            (ic, n, r),
            ap,
            ic,
            dxa.ptr(s),
            r,
            t,
            scratch.ptr(s),
            ic,
            t,
            0.0,
        )?;
        let len = n * ic;
        self.launch(
            &format!("lora_dropout_add_{}", t.suffix()),
            grid_stride(len),
            &[
                Arg::Ptr(dx.ptr(s)),
                Arg::Ptr(scratch.ptr(s)),
                Arg::F32(sh.dropout),
                Arg::F32(1.0 / (1.0 - sh.dropout)),
                Arg::I64(sh.seed as i64),
                Arg::I64(len as i64),
            ],
        )
    }

    fn rope_fwd(
        &self,
        x: &mut CudaBuf,
        positions: &CudaIds,
        n: usize,
        heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<()> {
        self.rope("rope_fwd", x, positions, n, heads, head_dim, theta)
    }

    fn rope_bwd(
        &self,
        dx: &mut CudaBuf,
        positions: &CudaIds,
        n: usize,
        heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<()> {
        self.rope("rope_bwd", dx, positions, n, heads, head_dim, theta)
    }

    fn attention_fwd(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        segment_ids: &CudaIds,
        sh: AttnShape,
    ) -> Result<()> {
        const OP: &str = "attention_fwd";
        Self::check_attn(OP, &sh)?;
        let (b, t_, nh, nkv, hd) = (sh.b, sh.t, sh.n_heads, sh.n_kv_heads, sh.head_dim);
        check_len(OP, "q", q.len(), b * t_ * nh * hd)?;
        check_len(OP, "k", k.len(), b * t_ * nkv * hd)?;
        check_len(OP, "v", v.len(), b * t_ * nkv * hd)?;
        check_len(OP, "segment_ids", segment_ids.data.len(), b * t_)?;
        let t = q.dtype();
        self.ensure_dtype(out, t)?;
        self.ensure_dtype(lse, DType::F32)?;
        check_len(OP, "out", out.len(), b * t_ * nh * hd)?;
        check_len(OP, "lse", lse.len(), b * nh * t_)?;
        if b * t_ == 0 {
            return Ok(());
        }
        let mut tmp = Vec::new();
        let kp = self.ptr_as(k, t, &mut tmp)?;
        let vp = self.ptr_as(v, t, &mut tmp)?;
        let s = &self.stream;
        let cfg = LaunchConfig {
            grid_dim: ((t_ as u32).div_ceil(ATT_WARPS), (b * nh) as u32, 1),
            block_dim: (32 * ATT_WARPS, 1, 1),
            shared_mem_bytes: Self::att_smem(hd, 1, 0),
        };
        self.launch(
            &format!("attention_fwd_{}", t.suffix()),
            cfg,
            &[
                Arg::Ptr(out.ptr(s)),
                Arg::Ptr(lse.ptr(s)),
                Arg::Ptr(q.ptr(s)),
                Arg::Ptr(kp),
                Arg::Ptr(vp),
                Arg::Ptr(segment_ids.ptr(s)),
                Arg::I32(to_i32(OP, "b", b)?),
                Arg::I32(to_i32(OP, "t", t_)?),
                Arg::I32(nh as i32),
                Arg::I32(nkv as i32),
                Arg::I32(hd as i32),
            ],
        )
    }

    fn attention_bwd(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dout: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        segment_ids: &CudaIds,
        sh: AttnShape,
    ) -> Result<()> {
        const OP: &str = "attention_bwd";
        Self::check_attn(OP, &sh)?;
        let (b, t_, nh, nkv, hd) = (sh.b, sh.t, sh.n_heads, sh.n_kv_heads, sh.head_dim);
        let qlen = b * t_ * nh * hd;
        let kvlen = b * t_ * nkv * hd;
        check_len(OP, "q", q.len(), qlen)?;
        check_len(OP, "k", k.len(), kvlen)?;
        check_len(OP, "v", v.len(), kvlen)?;
        check_len(OP, "out", out.len(), qlen)?;
        check_len(OP, "dout", dout.len(), qlen)?;
        check_len(OP, "lse", lse.len(), b * nh * t_)?;
        check_len(OP, "segment_ids", segment_ids.data.len(), b * t_)?;
        let t = q.dtype();
        self.ensure_dtype(dq, t)?;
        self.ensure_dtype(dk, t)?;
        self.ensure_dtype(dv, t)?;
        check_len(OP, "dq", dq.len(), qlen)?;
        check_len(OP, "dk", dk.len(), kvlen)?;
        check_len(OP, "dv", dv.len(), kvlen)?;
        if b * t_ == 0 {
            return Ok(());
        }
        let mut tmp = Vec::new();
        let kp = self.ptr_as(k, t, &mut tmp)?;
        let vp = self.ptr_as(v, t, &mut tmp)?;
        let op_ = self.ptr_as(out, t, &mut tmp)?;
        let dop = self.ptr_as(dout, t, &mut tmp)?;
        let lp = self.ptr_as(lse, DType::F32, &mut tmp)?;
        let delta = self.zeros_dtype(b * nh * t_, DType::F32)?;
        let s = &self.stream;
        let (bi, ti) = (to_i32(OP, "b", b)?, to_i32(OP, "t", t_)?);
        let (nhi, nkvi, hdi) = (nh as i32, nkv as i32, hd as i32);
        let rows = (b * t_ * nh) as u32;
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(ATT_WARPS), 1, 1),
            block_dim: (32 * ATT_WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("attention_bwd_delta_{}", t.suffix()),
            cfg,
            &[
                Arg::Ptr(delta.ptr(s)),
                Arg::Ptr(dop),
                Arg::Ptr(op_),
                Arg::I32(bi),
                Arg::I32(ti),
                Arg::I32(nhi),
                Arg::I32(hdi),
            ],
        )?;
        let cfg = LaunchConfig {
            grid_dim: ((t_ as u32).div_ceil(ATT_WARPS), (b * nh) as u32, 1),
            block_dim: (32 * ATT_WARPS, 1, 1),
            shared_mem_bytes: Self::att_smem(hd, 2, 0),
        };
        let seg = segment_ids.ptr(s);
        self.launch(
            &format!("attention_bwd_dq_{}", t.suffix()),
            cfg,
            &[
                Arg::Ptr(dq.ptr(s)),
                Arg::Ptr(dop),
                Arg::Ptr(q.ptr(s)),
                Arg::Ptr(kp),
                Arg::Ptr(vp),
                Arg::Ptr(lp),
                Arg::Ptr(delta.ptr(s)),
                Arg::Ptr(seg),
                Arg::I32(bi),
                Arg::I32(ti),
                Arg::I32(nhi),
                Arg::I32(nkvi),
                Arg::I32(hdi),
            ],
        )?;
        let cfg = LaunchConfig {
            grid_dim: ((t_ as u32).div_ceil(ATT_WARPS), (b * nkv) as u32, 1),
            block_dim: (32 * ATT_WARPS, 1, 1),
            shared_mem_bytes: Self::att_smem(hd, 2, 2 * ATT_TILE),
        };
        self.launch(
            &format!("attention_bwd_dkv_{}", t.suffix()),
            cfg,
            &[
                Arg::Ptr(dk.ptr(s)),
                Arg::Ptr(dv.ptr(s)),
                Arg::Ptr(dop),
                Arg::Ptr(q.ptr(s)),
                Arg::Ptr(kp),
                Arg::Ptr(vp),
                Arg::Ptr(lp),
                Arg::Ptr(delta.ptr(s)),
                Arg::Ptr(seg),
                Arg::I32(bi),
                Arg::I32(ti),
                Arg::I32(nhi),
                Arg::I32(nkvi),
                Arg::I32(hdi),
            ],
        )
    }

    fn swiglu_fwd(
        &self,
        out: &mut CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        len: usize,
    ) -> Result<()> {
        self.elementwise2("swiglu_fwd", out, ("gate", gate), ("up", up), len)
    }

    fn swiglu_bwd(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dout: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        len: usize,
    ) -> Result<()> {
        const OP: &str = "swiglu_bwd";
        check_len(OP, "gate", gate.len(), len)?;
        check_len(OP, "up", up.len(), len)?;
        check_len(OP, "dout", dout.len(), len)?;
        let t = gate.dtype();
        self.ensure_dtype(dgate, t)?;
        self.ensure_dtype(dup, t)?;
        check_len(OP, "dgate", dgate.len(), len)?;
        check_len(OP, "dup", dup.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let mut tmp = Vec::new();
        let up_ = self.ptr_as(up, t, &mut tmp)?;
        let dp = self.ptr_as(dout, t, &mut tmp)?;
        let s = &self.stream;
        self.launch(
            &format!("swiglu_bwd_{}", t.suffix()),
            grid_stride(len),
            &[
                Arg::Ptr(dgate.ptr(s)),
                Arg::Ptr(dup.ptr(s)),
                Arg::Ptr(dp),
                Arg::Ptr(gate.ptr(s)),
                Arg::Ptr(up_),
                Arg::I64(len as i64),
            ],
        )
    }

    fn add_fwd(&self, out: &mut CudaBuf, a: &CudaBuf, b: &CudaBuf, len: usize) -> Result<()> {
        self.elementwise2("add_fwd", out, ("a", a), ("b", b), len)
    }

    fn add_inplace(&self, acc: &mut CudaBuf, x: &CudaBuf, len: usize) -> Result<()> {
        const OP: &str = "add_inplace";
        check_len(OP, "acc", acc.len(), len)?;
        check_len(OP, "x", x.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let name = format!(
            "add_inplace_{}_{}",
            acc.dtype().suffix(),
            x.dtype().suffix()
        );
        self.launch(
            &name,
            grid_stride(len),
            &[
                Arg::Ptr(acc.ptr(s)),
                Arg::Ptr(x.ptr(s)),
                Arg::I64(len as i64),
            ],
        )
    }

    fn cross_entropy_fwd_bwd(
        &self,
        logits: &mut CudaBuf,
        losses: &mut CudaBuf,
        targets: &CudaIds,
        weights: &CudaBuf,
        n: usize,
        v: usize,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_fwd_bwd";
        check_len(OP, "logits", logits.len(), n * v)?;
        check_len(OP, "targets", targets.data.len(), n)?;
        check_len(OP, "weights", weights.len(), n)?;
        targets.check_below(OP, v)?;
        self.ensure_dtype(losses, DType::F32)?;
        check_len(OP, "losses", losses.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let t = logits.dtype();
        let mut tmp = Vec::new();
        let wp = self.ptr_as(weights, DType::F32, &mut tmp)?;
        let s = &self.stream;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("cross_entropy_fwdbwd_{}", t.suffix()),
            cfg,
            &[
                Arg::Ptr(logits.ptr(s)),
                Arg::Ptr(losses.ptr(s)),
                Arg::Ptr(targets.ptr(s)),
                Arg::Ptr(wp),
                Arg::I32(to_i32(OP, "n", n)?),
                Arg::I32(to_i32(OP, "v", v)?),
            ],
        )
    }

    fn adamw_step(
        &self,
        params: &mut CudaBuf,
        grads: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        hp: &AdamWParams,
    ) -> Result<()> {
        const OP: &str = "adamw_step";
        let len = params.len();
        check_len(OP, "grads", grads.len(), len)?;
        check_len(OP, "m", m.len(), len)?;
        check_len(OP, "v", v.len(), len)?;
        if hp.step == 0 {
            return Err(Error::Shape {
                op: OP,
                detail: "step is 1-based; got 0".into(),
            });
        }
        self.ensure_dtype(m, DType::F32)?;
        self.ensure_dtype(v, DType::F32)?;
        if len == 0 {
            return Ok(());
        }
        let mut tmp = Vec::new();
        let gp = self.ptr_as(grads, DType::F32, &mut tmp)?;
        let bc1 = (1.0 - (hp.beta1 as f64).powf(hp.step as f64)) as f32;
        let bc2 = (1.0 - (hp.beta2 as f64).powf(hp.step as f64)) as f32;
        let scalars = [
            Arg::I64(len as i64),
            Arg::F32(hp.lr),
            Arg::F32(hp.beta1),
            Arg::F32(hp.beta2),
            Arg::F32(hp.eps),
            Arg::F32(hp.weight_decay),
            Arg::F32(bc1),
            Arg::F32(bc2),
            Arg::F32(hp.grad_scale),
        ];
        let s = &self.stream;
        match params.dtype() {
            DType::F32 => {
                let mut args = vec![
                    Arg::Ptr(params.ptr(s)),
                    Arg::Ptr(gp),
                    Arg::Ptr(m.ptr(s)),
                    Arg::Ptr(v.ptr(s)),
                ];
                args.extend(scalars);
                self.launch("adamw_step_f32", grid_stride(len), &args)
            }
            DType::Bf16 => {
                if params.master.is_none() {
                    params.master = Some(self.to_f32_slice(params)?);
                }
                let mp = params
                    .master
                    .as_ref()
                    .map(|ms| ms.device_ptr(s).0)
                    .unwrap_or_default();
                let mut args = vec![
                    Arg::Ptr(params.ptr(s)),
                    Arg::Ptr(mp),
                    Arg::Ptr(gp),
                    Arg::Ptr(m.ptr(s)),
                    Arg::Ptr(v.ptr(s)),
                ];
                args.extend(scalars);
                self.launch("adamw_step_bf16", grid_stride(len), &args)
            }
        }
    }

    fn sum_squares(&self, x: &CudaBuf) -> Result<f64> {
        let len = x.len();
        if len == 0 {
            return Ok(0.0);
        }
        let partials = self
            .stream
            .alloc_zeros::<f64>(GN_BLOCKS)
            .map_err(dev("alloc"))?;
        let s = &self.stream;
        let cfg = LaunchConfig {
            grid_dim: (GN_BLOCKS as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("global_norm_fwd_{}", x.dtype().suffix()),
            cfg,
            &[
                Arg::Ptr(partials.device_ptr(s).0),
                Arg::Ptr(x.ptr(s)),
                Arg::I64(len as i64),
            ],
        )?;
        let host = self
            .stream
            .clone_dtoh(&partials)
            .map_err(dev("sum_squares"))?;
        Ok(host.iter().sum())
    }

    fn scale(&self, x: &mut CudaBuf, s_: f32) -> Result<()> {
        let len = x.len();
        if len == 0 {
            return Ok(());
        }
        let s = &self.stream;
        self.launch(
            &format!("scale_inplace_{}", x.dtype().suffix()),
            grid_stride(len),
            &[Arg::Ptr(x.ptr(s)), Arg::F32(s_), Arg::I64(len as i64)],
        )?;
        if let Some(m) = &x.master {
            self.launch(
                "scale_inplace_f32",
                grid_stride(len),
                &[
                    Arg::Ptr(m.device_ptr(s).0),
                    Arg::F32(s_),
                    Arg::I64(len as i64),
                ],
            )?;
        }
        Ok(())
    }
}

impl CudaBackend {
    fn check_lora(op: &'static str, sh: &LoraShape) -> Result<()> {
        if (0.0..1.0).contains(&sh.dropout) {
            Ok(())
        } else {
            Err(Error::Shape {
                op,
                detail: format!("dropout {} is outside [0, 1)", sh.dropout),
            })
        }
    }

    /// The adapter's input as a device pointer: `x`, or `drop(x)` written into `scratch`
    /// (converted to `x`'s dtype and checked to hold `n·ic` elements).
    fn lora_input(
        &self,
        op: &'static str,
        scratch: &mut CudaBuf,
        x: &CudaBuf,
        sh: &LoraShape,
    ) -> Result<u64> {
        let s = &self.stream;
        if sh.dropout == 0.0 {
            return Ok(x.ptr(s));
        }
        let t = x.dtype();
        self.ensure_dtype(scratch, t)?;
        let len = sh.n * sh.ic;
        if scratch.len() < len {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "scratch has {} elements, needs at least {len}",
                    scratch.len()
                ),
            });
        }
        self.launch(
            &format!("lora_dropout_{}", t.suffix()),
            grid_stride(len),
            &[
                Arg::Ptr(scratch.ptr(s)),
                Arg::Ptr(x.ptr(s)),
                Arg::F32(sh.dropout),
                Arg::F32(1.0 / (1.0 - sh.dropout)),
                Arg::I64(sh.seed as i64),
                Arg::I64(len as i64),
            ],
        )?;
        Ok(scratch.ptr(s))
    }

    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        op: &'static str,
        x: &mut CudaBuf,
        positions: &CudaIds,
        n: usize,
        heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<()> {
        check_len(op, "x", x.len(), n * heads * head_dim)?;
        check_len(op, "positions", positions.data.len(), n)?;
        if !head_dim.is_multiple_of(2) {
            return Err(Error::Shape {
                op,
                detail: format!("head_dim {head_dim} must be even"),
            });
        }
        let total = n * heads * head_dim / 2;
        if total == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let cfg = LaunchConfig {
            grid_dim: (total.div_ceil(BLOCK as usize) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("{op}_{}", x.dtype().suffix()),
            cfg,
            &[
                Arg::Ptr(x.ptr(s)),
                Arg::Ptr(positions.ptr(s)),
                Arg::I32(to_i32(op, "n", n)?),
                Arg::I32(to_i32(op, "heads", heads)?),
                Arg::I32(to_i32(op, "head_dim", head_dim)?),
                Arg::F32(theta),
            ],
        )
    }
}
