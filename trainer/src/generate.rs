//! Sampling with a KV-cache: temperature, top-k, top-p, stop tokens.
//!
//! Each call of [`Generator::feed`] runs the new tokens through the backend's ops (norms,
//! projections, RoPE, SwiGLU) and attends over the cached keys and values on the host (the op
//! contract's attention takes equal-length q and k, so the cached path is done here; its cost is
//! `O(new · cached)` per layer, small next to the projections).
use koala_kernels::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::Llama;
use crate::weights::PER_LAYER;
use crate::{Error, Result};

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1.0 = all).
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// Generation stops after any of these tokens (it is kept in the output).
    pub stop_tokens: Vec<u32>,
    pub seed: u64,
}

impl Default for SampleParams {
    fn default() -> Self {
        // EasyLM's serving defaults: top_k 50, top_p 1.0.
        SampleParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            max_new_tokens: 128,
            stop_tokens: Vec::new(),
            seed: 0,
        }
    }
}

/// A KV-cached decoder over a [`Llama`].
pub struct Generator {
    /// Per layer, `[pos, kv_dim]` keys (after RoPE) and values.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Number of cached positions.
    pub len: usize,
}

impl Generator {
    /// An empty cache for `model`.
    pub fn new<B: Backend>(model: &Llama<B>) -> Self {
        let l = model.cfg.num_hidden_layers;
        Generator {
            k: vec![Vec::new(); l],
            v: vec![Vec::new(); l],
            len: 0,
        }
    }

    /// Runs `tokens` (positions `len..len+tokens.len()`) and returns the logits of the last one.
    pub fn feed<B: Backend>(
        &mut self,
        be: &B,
        model: &Llama<B>,
        tokens: &[u32],
    ) -> Result<Vec<f32>> {
        let m = tokens.len();
        if m == 0 {
            return Err(Error::Invalid("feed: no tokens".into()));
        }
        let cfg = &model.cfg;
        let p = &model.params;
        let (c, q, kv, im, v) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        let (h, kvh, hd, theta, eps) = (
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
            cfg.rope_theta,
            cfg.rms_norm_eps,
        );
        let ids = be.upload_ids(tokens)?;
        let pos: Vec<u32> = (self.len..self.len + m).map(|x| x as u32).collect();
        let pos = be.upload_ids(&pos)?;
        let mut x = be.zeros(m * c)?;
        be.embedding_fwd(&mut x, &ids, &p[0], m, c)?;
        let (mut hbuf, mut rstd) = (be.zeros(m * c)?, be.zeros(m)?);
        let (mut qb, mut kb, mut vb) = (be.zeros(m * q)?, be.zeros(m * kv)?, be.zeros(m * kv)?);
        let (mut o, mut x2) = (be.zeros(m * c)?, be.zeros(m * c)?);
        let (mut g, mut u, mut s) = (be.zeros(m * im)?, be.zeros(m * im)?, be.zeros(m * im)?);
        let group = h / kvh;
        let scale = 1.0 / (hd as f32).sqrt();
        for l in 0..cfg.num_hidden_layers {
            let w = 1 + l * PER_LAYER;
            be.rmsnorm_fwd(&mut hbuf, &mut rstd, &x, &p[w], m, c, eps)?;
            be.matmul_fwd(&mut qb, &hbuf, &p[w + 1], m, c, q)?;
            be.matmul_fwd(&mut kb, &hbuf, &p[w + 2], m, c, kv)?;
            be.matmul_fwd(&mut vb, &hbuf, &p[w + 3], m, c, kv)?;
            be.rope_fwd(&mut qb, &pos, m, h, hd, theta)?;
            be.rope_fwd(&mut kb, &pos, m, kvh, hd, theta)?;
            let qh = be.download(&qb)?;
            self.k[l].extend(be.download(&kb)?);
            self.v[l].extend(be.download(&vb)?);
            let (kc, vc) = (&self.k[l], &self.v[l]);
            let mut att = vec![0.0f32; m * q];
            for i in 0..m {
                let pi = self.len + i; // attends 0..=pi
                for head in 0..h {
                    let kvhd = head / group;
                    let qv = &qh[i * q + head * hd..i * q + (head + 1) * hd];
                    let scores: Vec<f32> = (0..=pi)
                        .map(|j| {
                            let kr = &kc[j * kv + kvhd * hd..j * kv + (kvhd + 1) * hd];
                            qv.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale
                        })
                        .collect();
                    let mx = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|s| (s - mx).exp()).collect();
                    let z: f32 = e.iter().sum();
                    let out = &mut att[i * q + head * hd..i * q + (head + 1) * hd];
                    for (j, ej) in e.iter().enumerate() {
                        let vr = &vc[j * kv + kvhd * hd..j * kv + (kvhd + 1) * hd];
                        let pj = ej / z;
                        for (o, vv) in out.iter_mut().zip(vr) {
                            *o += pj * vv;
                        }
                    }
                }
            }
            let attb = be.upload(&att)?;
            be.matmul_fwd(&mut o, &attb, &p[w + 4], m, q, c)?;
            be.add_fwd(&mut x2, &x, &o, m * c)?;
            be.rmsnorm_fwd(&mut hbuf, &mut rstd, &x2, &p[w + 5], m, c, eps)?;
            be.matmul_fwd(&mut g, &hbuf, &p[w + 6], m, c, im)?;
            be.matmul_fwd(&mut u, &hbuf, &p[w + 7], m, c, im)?;
            be.swiglu_fwd(&mut s, &g, &u, m * im)?;
            be.matmul_fwd(&mut o, &s, &p[w + 8], m, im, c)?;
            be.add_fwd(&mut x, &x2, &o, m * c)?;
        }
        self.len += m;
        let xh = be.download(&x)?;
        let last = be.upload(&xh[(m - 1) * c..])?;
        let (mut hf, mut r1) = (be.zeros(c)?, be.zeros(1)?);
        let norm_i = 1 + cfg.num_hidden_layers * PER_LAYER;
        let head_i = if cfg.tie_word_embeddings {
            0
        } else {
            norm_i + 1
        };
        be.rmsnorm_fwd(&mut hf, &mut r1, &last, &p[norm_i], 1, c, eps)?;
        let mut logits = be.zeros(v)?;
        be.matmul_fwd(&mut logits, &hf, &p[head_i], 1, c, v)?;
        Ok(be.download(&logits)?)
    }

    /// Feeds `prompt`, then samples up to `max_new_tokens` tokens; returns the new tokens.
    /// `on_token` sees each token as it is produced and may stop generation by returning false
    /// (used for stop strings, which need the tokenizer).
    pub fn generate<B: Backend>(
        &mut self,
        be: &B,
        model: &Llama<B>,
        prompt: &[u32],
        sp: &SampleParams,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(sp.seed);
        let mut logits = self.feed(be, model, prompt)?;
        let mut out = Vec::new();
        for _ in 0..sp.max_new_tokens {
            let tok = sample(&logits, sp, &mut rng);
            out.push(tok);
            if !on_token(tok) || sp.stop_tokens.contains(&tok) {
                break;
            }
            logits = self.feed(be, model, &[tok])?;
        }
        Ok(out)
    }
}

/// Picks a token from `logits` with temperature, top-k and top-p (nucleus) filtering.
pub fn sample(logits: &[f32], sp: &SampleParams, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |a, (i, &x)| {
                if x > a.1 { (i, x) } else { a }
            })
            .0 as u32
    };
    if sp.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if sp.top_k > 0 {
        idx.truncate(sp.top_k);
    }
    let mx = logits[idx[0]];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - mx) / sp.temperature) as f64).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if sp.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= sp.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let r: f64 = rng.random::<f64>();
    let mut acc = 0.0;
    for (p, &i) in probs.iter().zip(&idx) {
        acc += p;
        if r < acc {
            return i as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_filters() {
        let logits = [0.0f32, 5.0, 4.9, -3.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let greedy = SampleParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample(&logits, &greedy, &mut rng), 1);
        let k1 = SampleParams {
            top_k: 1,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &k1, &mut rng), 1);
        }
        let top2 = SampleParams {
            top_k: 0,
            top_p: 0.9,
            ..Default::default()
        };
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[sample(&logits, &top2, &mut rng) as usize] += 1;
        }
        assert_eq!((seen[0], seen[3]), (0, 0), "{seen:?}");
        assert!(seen[1] > 100 && seen[2] > 100, "{seen:?}");
    }
}
