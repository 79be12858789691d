//! LoRA on one linear layer (see [`crate::Backend::lora_fwd`]): `out += scale · drop(x)·aᵀ·bᵀ`,
//! as peft's `lora_B(lora_A(dropout(x))) * scaling`, with `a: [r, ic]`, `b: [oc, r]`.
//!
//! Every product is one [`gemm_scaled`] call with strides for the transposes, as in
//! [`super::matmul`]; the dropout mask is [`lora_keep`] of the element index, so the backward
//! redraws the forward's mask instead of storing it.
use rayon::prelude::*;

use super::matmul::{Threads, gemm_scaled};
use super::{ELEM_CHUNK, expect_len, mul};
use crate::backend::{LoraShape, lora_keep};
use crate::{Error, Result};

fn check(op: &'static str, s: &LoraShape) -> Result<()> {
    if !(0.0..1.0).contains(&s.dropout) {
        return Err(Error::Shape {
            op,
            detail: format!("dropout {} is outside [0, 1)", s.dropout),
        });
    }
    Ok(())
}

/// `dst[i] = src[i] · keep(i) / (1 − p)` (`dst` may be `src`'s copy: in-place callers pass
/// the same values).
fn dropout_into(dst: &mut [f32], src: &[f32], p: f32, seed: u64) {
    let inv = 1.0 / (1.0 - p);
    dst.par_chunks_mut(ELEM_CHUNK)
        .zip(src.par_chunks(ELEM_CHUNK))
        .enumerate()
        .for_each(|(c, (d, x))| {
            let base = (c * ELEM_CHUNK) as u64;
            for (j, (d, &x)) in d.iter_mut().zip(x).enumerate() {
                *d = if lora_keep(seed, base + j as u64, p) {
                    x * inv
                } else {
                    0.0
                };
            }
        });
}

/// The first `len` elements of `scratch`, which must hold at least that many.
fn at_least<'a>(op: &'static str, scratch: &'a mut [f32], len: usize) -> Result<&'a mut [f32]> {
    let have = scratch.len();
    scratch.get_mut(..len).ok_or_else(|| Error::Shape {
        op,
        detail: format!("scratch has {have} elements, needs at least {len}"),
    })
}

/// The adapter's input: `x` itself, or `drop(x)` written into `scratch`.
fn dropped<'a>(
    op: &'static str,
    scratch: &'a mut [f32],
    x: &'a [f32],
    s: &LoraShape,
) -> Result<&'a [f32]> {
    if s.dropout == 0.0 {
        return Ok(x);
    }
    let scratch = at_least(op, scratch, x.len())?;
    dropout_into(scratch, x, s.dropout, s.seed);
    Ok(scratch)
}

pub(crate) fn forward(
    out: &mut [f32],
    xa: &mut [f32],
    scratch: &mut [f32],
    x: &[f32],
    a: &[f32],
    b: &[f32],
    s: &LoraShape,
) -> Result<()> {
    const OP: &str = "lora_fwd";
    check(OP, s)?;
    let LoraShape { n, ic, r, oc, .. } = *s;
    expect_len(OP, "out", out.len(), mul(OP, &[n, oc])?)?;
    expect_len(OP, "xa", xa.len(), mul(OP, &[n, r])?)?;
    expect_len(OP, "x", x.len(), mul(OP, &[n, ic])?)?;
    expect_len(OP, "a", a.len(), mul(OP, &[r, ic])?)?;
    expect_len(OP, "b", b.len(), mul(OP, &[oc, r])?)?;
    let xd = dropped(OP, scratch, x, s)?;
    // xa[n, r] = xd[n, ic] · aᵀ (rhs[kk, j] = a[j, kk]).
    gemm_scaled(
        Threads::Pool,
        false,
        n,
        r,
        ic,
        xa,
        r,
        1,
        xd,
        ic,
        1,
        a,
        1,
        ic,
        1.0,
    );
    // out[n, oc] += scale · xa[n, r] · bᵀ.
    gemm_scaled(
        Threads::Pool,
        true,
        n,
        oc,
        r,
        out,
        oc,
        1,
        xa,
        r,
        1,
        b,
        1,
        r,
        s.scale,
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dx: Option<&mut [f32]>,
    da: &mut [f32],
    db: &mut [f32],
    dxa: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    x: &[f32],
    xa: &[f32],
    a: &[f32],
    b: &[f32],
    s: &LoraShape,
) -> Result<()> {
    const OP: &str = "lora_bwd";
    check(OP, s)?;
    let LoraShape { n, ic, r, oc, .. } = *s;
    expect_len(OP, "da", da.len(), mul(OP, &[r, ic])?)?;
    expect_len(OP, "db", db.len(), mul(OP, &[oc, r])?)?;
    expect_len(OP, "dxa", dxa.len(), mul(OP, &[n, r])?)?;
    expect_len(OP, "dout", dout.len(), mul(OP, &[n, oc])?)?;
    expect_len(OP, "x", x.len(), mul(OP, &[n, ic])?)?;
    expect_len(OP, "xa", xa.len(), mul(OP, &[n, r])?)?;
    expect_len(OP, "a", a.len(), mul(OP, &[r, ic])?)?;
    expect_len(OP, "b", b.len(), mul(OP, &[oc, r])?)?;
    if let Some(dx) = &dx {
        expect_len(OP, "dx", dx.len(), mul(OP, &[n, ic])?)?;
    }
    // db[oc, r] += scale · doutᵀ[oc, n] · xa[n, r].
    gemm_scaled(
        Threads::Pool,
        true,
        oc,
        r,
        n,
        db,
        r,
        1,
        dout,
        1,
        oc,
        xa,
        r,
        1,
        s.scale,
    );
    // dxa[n, r] = scale · dout[n, oc] · b[oc, r].
    gemm_scaled(
        Threads::Pool,
        false,
        n,
        r,
        oc,
        dxa,
        r,
        1,
        dout,
        oc,
        1,
        b,
        r,
        1,
        s.scale,
    );
    // da[r, ic] += dxaᵀ[r, n] · drop(x)[n, ic].
    let xd = dropped(OP, scratch, x, s)?;
    gemm_scaled(
        Threads::Pool,
        true,
        r,
        ic,
        n,
        da,
        ic,
        1,
        dxa,
        1,
        r,
        xd,
        ic,
        1,
        1.0,
    );
    let Some(dx) = dx else {
        return Ok(());
    };
    if s.dropout == 0.0 {
        // dx[n, ic] += dxa[n, r] · a[r, ic].
        gemm_scaled(
            Threads::Pool,
            true,
            n,
            ic,
            r,
            dx,
            ic,
            1,
            dxa,
            r,
            1,
            a,
            ic,
            1,
            1.0,
        );
        return Ok(());
    }
    // dx += drop(dxa · a): the product into scratch, the mask on it, then the add.
    let scratch = at_least(OP, scratch, n * ic)?;
    gemm_scaled(
        Threads::Pool,
        false,
        n,
        ic,
        r,
        scratch,
        ic,
        1,
        dxa,
        r,
        1,
        a,
        ic,
        1,
        1.0,
    );
    let inv = 1.0 / (1.0 - s.dropout);
    dx.par_chunks_mut(ELEM_CHUNK)
        .zip(scratch.par_chunks(ELEM_CHUNK))
        .enumerate()
        .for_each(|(c, (d, g))| {
            let base = (c * ELEM_CHUNK) as u64;
            for (j, (d, &g)) in d.iter_mut().zip(g).enumerate() {
                if lora_keep(s.seed, base + j as u64, s.dropout) {
                    *d += g * inv;
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive f64 reference of the forward and backward (dropout included).
    #[allow(clippy::type_complexity)]
    fn naive(
        x: &[f32],
        a: &[f32],
        b: &[f32],
        dout: &[f32],
        s: &LoraShape,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let LoraShape { n, ic, r, oc, .. } = *s;
        let keep = |i: usize| {
            if lora_keep(s.seed, i as u64, s.dropout) {
                (1.0 / (1.0 - s.dropout)) as f64
            } else {
                0.0
            }
        };
        let xd: Vec<f64> = (0..n * ic).map(|i| x[i] as f64 * keep(i)).collect();
        let mut xa = vec![0.0; n * r];
        for t in 0..n {
            for j in 0..r {
                xa[t * r + j] = (0..ic).map(|k| xd[t * ic + k] * a[j * ic + k] as f64).sum();
            }
        }
        let mut out = vec![0.0; n * oc];
        for t in 0..n {
            for o in 0..oc {
                out[t * oc + o] = s.scale as f64
                    * (0..r)
                        .map(|j| xa[t * r + j] * b[o * r + j] as f64)
                        .sum::<f64>();
            }
        }
        let mut dxa = vec![0.0; n * r];
        for t in 0..n {
            for j in 0..r {
                dxa[t * r + j] = s.scale as f64
                    * (0..oc)
                        .map(|o| dout[t * oc + o] as f64 * b[o * r + j] as f64)
                        .sum::<f64>();
            }
        }
        let mut db = vec![0.0; oc * r];
        for o in 0..oc {
            for j in 0..r {
                db[o * r + j] = s.scale as f64
                    * (0..n)
                        .map(|t| dout[t * oc + o] as f64 * xa[t * r + j])
                        .sum::<f64>();
            }
        }
        let mut da = vec![0.0; r * ic];
        for j in 0..r {
            for k in 0..ic {
                da[j * ic + k] = (0..n).map(|t| dxa[t * r + j] * xd[t * ic + k]).sum();
            }
        }
        let mut dx = vec![0.0; n * ic];
        for t in 0..n {
            for k in 0..ic {
                let i = t * ic + k;
                dx[i] = keep(i)
                    * (0..r)
                        .map(|j| dxa[t * r + j] * a[j * ic + k] as f64)
                        .sum::<f64>();
            }
        }
        (out, da, db, dx)
    }

    fn close(name: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "{name}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn forward_and_backward_match_a_naive_reference() {
        let lcg = |seed: u32, len: usize| -> Vec<f32> {
            let mut z = seed;
            (0..len)
                .map(|_| {
                    z = z.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (z >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        for dropout in [0.0f32, 0.3] {
            let s = LoraShape {
                n: 7,
                ic: 13,
                r: 3,
                oc: 11,
                scale: 2.0,
                dropout,
                seed: 42,
            };
            let (x, a, b) = (lcg(1, 7 * 13), lcg(2, 3 * 13), lcg(3, 11 * 3));
            let dout = lcg(4, 7 * 11);
            let base = lcg(5, 7 * 11);
            let mut out = base.clone();
            let mut xa = vec![0.0; 7 * 3];
            let mut scratch = vec![0.0; if dropout > 0.0 { 7 * 13 } else { 0 }];
            forward(&mut out, &mut xa, &mut scratch, &x, &a, &b, &s).unwrap();
            let (want_out, want_da, want_db, want_dx) = naive(&x, &a, &b, &dout, &s);
            let delta: Vec<f32> = out.iter().zip(&base).map(|(o, b)| o - b).collect();
            close("out", &delta, &want_out);
            let dx0 = lcg(6, 7 * 13);
            let (mut dx, mut da, mut db) = (dx0.clone(), vec![0.0; 3 * 13], vec![0.0; 11 * 3]);
            let mut dxa = vec![0.0; 7 * 3];
            backward(
                Some(&mut dx[..]),
                &mut da,
                &mut db,
                &mut dxa,
                &mut scratch,
                &dout,
                &x,
                &xa,
                &a,
                &b,
                &s,
            )
            .unwrap();
            close("da", &da, &want_da);
            close("db", &db, &want_db);
            let ddx: Vec<f32> = dx.iter().zip(&dx0).map(|(d, d0)| d - d0).collect();
            close("dx", &ddx, &want_dx);
        }
    }

    #[test]
    fn the_mask_is_splitmix64() {
        // SplitMix64 seeded with 0 starts 0xe220a8397b1dcdaf (Vigna's reference output): the
        // first element's uniform is its top 24 bits.
        let u = 0xe2_20a8 as f32 / 16_777_216.0;
        assert!(lora_keep(0, 0, u));
        assert!(!lora_keep(0, 0, u + 1e-6));
    }

    #[test]
    fn bad_dropout_and_short_buffers_are_errors() {
        let s = LoraShape {
            n: 2,
            ic: 2,
            r: 1,
            oc: 2,
            scale: 1.0,
            dropout: 1.0,
            seed: 0,
        };
        let mut v = vec![0.0; 4];
        let mut xa = vec![0.0; 2];
        let e = forward(
            &mut v.clone(),
            &mut xa,
            &mut v,
            &[0.0; 4],
            &[0.0; 2],
            &[0.0; 2],
            &s,
        );
        assert!(e.unwrap_err().to_string().contains("dropout"));
        let s = LoraShape { dropout: 0.5, ..s };
        let mut empty = Vec::new();
        let e = forward(
            &mut v, &mut xa, &mut empty, &[0.0; 4], &[0.0; 2], &[0.0; 2], &s,
        );
        assert!(e.unwrap_err().to_string().contains("needs at least 4"));
    }
}
