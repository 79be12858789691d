//! Matmul (a linear layer without bias), through the `gemm` crate.
//!
//! Contract (see [`crate::Backend::matmul_fwd`]), HF weight layout `w: [oc, ic]`:
//! * forward: `out[n, oc] = inp[n, ic] · wᵀ`;
//! * backward: `dinp[n, ic] = dout[n, oc] · w` (activation gradient: overwrites) and
//!   `dw[oc, ic] += doutᵀ · inp` (weight gradient: accumulates).
//!
//! All three products are one `gemm::gemm` call each, with strides expressing the transposes (no
//! copies). Parallelism is `gemm`'s own `Parallelism::Rayon`, on the current rayon pool: it splits
//! the output into tiles fixed by the shapes, keeps the depth loop sequential, and gives each tile to
//! one thread, so results do not depend on the thread count (checked by the determinism tests).
use gemm::{Parallelism, gemm};

use super::{expect_len, mul};
use crate::Result;

/// How a `gemm` call may use threads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// Split over the current rayon pool (top-level matmuls).
    Pool,
    /// One thread (inside an op's own parallel tasks, e.g. attention per head).
    One,
}

/// `dst[m, n] (=|+=) lhs[m, k] · rhs[k, n]`, strides in elements (`rs` = row stride, `cs` = column
/// stride). Every buffer must be large enough for its strides (asserted; callers check shapes
/// first, so the assert never fires on user input).
///
/// Determinism: a given call site must always pass the same [`Threads`] (gemm blocks differently
/// for `Parallelism::None` and `Parallelism::Rayon`); within one variant the result does not depend
/// on the number of threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
    threads: Threads,
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    gemm_scaled(
        threads, accumulate, m, n, k, dst, dst_rs, dst_cs, lhs, lhs_rs, lhs_cs, rhs, rhs_rs,
        rhs_cs, 1.0,
    );
}

/// [`gemm_strided`] with the product scaled: `dst (=|+=) scale · lhs · rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_scaled(
    threads: Threads,
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The furthest element each operand's strides reach must be in bounds.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(m, n, dst_rs, dst_cs) < dst.len(),
        "gemm dst out of bounds"
    );
    if k > 0 {
        assert!(
            last(m, k, lhs_rs, lhs_cs) < lhs.len(),
            "gemm lhs out of bounds"
        );
        assert!(
            last(k, n, rhs_rs, rhs_cs) < rhs.len(),
            "gemm rhs out of bounds"
        );
    }
    // SAFETY: the asserts above keep every strided access of gemm inside the three slices; dst is
    // borrowed mutably and does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            match threads {
                // Rayon(0) = the current pool's size; Rayon even for a 1-thread pool, so that the
                // blocking is the same whatever the pool size.
                Threads::Pool => Parallelism::Rayon(0),
                Threads::One => Parallelism::None,
            },
        );
    }
}

pub(crate) fn forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<()> {
    const OP: &str = "matmul_fwd";
    expect_len(OP, "out", out.len(), mul(OP, &[n, oc])?)?;
    expect_len(OP, "inp", inp.len(), mul(OP, &[n, ic])?)?;
    expect_len(OP, "w", w.len(), mul(OP, &[oc, ic])?)?;
    // rhs = wᵀ: rhs[kk, j] = w[j, kk] → row stride 1, column stride ic.
    gemm_strided(
        Threads::Pool,
        false,
        n,
        oc,
        ic,
        out,
        oc,
        1,
        inp,
        ic,
        1,
        w,
        1,
        ic,
    );
    Ok(())
}

/// `dinp[n, ic] = dout[n, oc] · w[oc, ic]` (overwrites), for a frozen `w`.
pub(crate) fn backward_data(
    dinp: &mut [f32],
    dout: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<()> {
    const OP: &str = "matmul_bwd_data";
    expect_len(OP, "dinp", dinp.len(), mul(OP, &[n, ic])?)?;
    expect_len(OP, "dout", dout.len(), mul(OP, &[n, oc])?)?;
    expect_len(OP, "w", w.len(), mul(OP, &[oc, ic])?)?;
    gemm_strided(
        Threads::Pool,
        false,
        n,
        ic,
        oc,
        dinp,
        ic,
        1,
        dout,
        oc,
        1,
        w,
        ic,
        1,
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<()> {
    const OP: &str = "matmul_bwd";
    expect_len(OP, "dinp", dinp.len(), mul(OP, &[n, ic])?)?;
    expect_len(OP, "dw", dw.len(), mul(OP, &[oc, ic])?)?;
    expect_len(OP, "dout", dout.len(), mul(OP, &[n, oc])?)?;
    expect_len(OP, "inp", inp.len(), mul(OP, &[n, ic])?)?;
    expect_len(OP, "w", w.len(), mul(OP, &[oc, ic])?)?;
    // dinp[n, ic] = dout[n, oc] · w[oc, ic]
    gemm_strided(
        Threads::Pool,
        false,
        n,
        ic,
        oc,
        dinp,
        ic,
        1,
        dout,
        oc,
        1,
        w,
        ic,
        1,
    );
    // dw[oc, ic] += doutᵀ[oc, n] · inp[n, ic]; lhs[o, t] = dout[t, o] → row stride 1, col stride oc.
    gemm_strided(
        Threads::Pool,
        true,
        oc,
        ic,
        n,
        dw,
        ic,
        1,
        dout,
        1,
        oc,
        inp,
        ic,
        1,
    );
    Ok(())
}
