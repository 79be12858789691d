//! A keyed green-list watermark and its detector, after Kirchenbauer et al. 2023 ("A Watermark for
//! Large Language Models", the "soft" red-list scheme with a context width of one token).
//!
//! At each decoding step the previous token and a secret key choose a "green list", a fraction γ
//! of the vocabulary, and δ is added to the logit of every green token before sampling. Text
//! written this way holds more green tokens than chance; anyone with the key can count them
//! without the model. See docs/watermark.md for the usage and for where detection weakens.
//!
//! # The hash (portable: other implementations can reproduce it exactly)
//!
//! The reference implementation (jwkirchenbauer/lm-watermarking) draws each green list with
//! torch's RNG permutation, which is not portable. Ours is a plain keyed hash:
//!
//! * **Key.** The key string `K` becomes `key = XXH3_64(utf8(K))`, 64-bit XXH3 with seed 0 and
//!   the default secret.
//! * **Green test.** For the previous token id `prev` and a candidate token id `token` (both
//!   `u32`), `h = XXH3_64_withSeed(le32(prev) ‖ le32(token), seed = key)`, hashing the 8 bytes of
//!   the two ids, each little-endian, `prev` first. The token is green iff `h < threshold`, with
//!   `threshold = floor(γ · 2^64)` where γ is the `f32` widened to `f64`: that product is exact,
//!   since 2^64 is a power of two.
//! * **Bias.** `logit[token] += δ` for every green `token` of the vocabulary, where the previous
//!   token is the last token of the context (the prompt's last token at the first step).
//!
//! In Python, with the `xxhash` package:
//!
//! ```text
//! key   = xxhash.xxh3_64_intdigest(K.encode())
//! green = xxhash.xxh3_64_intdigest(struct.pack("<II", prev, token), seed=key) < int(gamma * 2**64)
//! ```
//!
//! (`int(gamma * 2**64)` equals the threshold for γ exactly representable in `f32`, such as 0.25
//! or 0.5; in general use `float(numpy.float32(gamma))`.)
//!
//! # Detection
//!
//! [`Watermark::score`] takes the token ids of a text and tests position `i ≥ 1` against its
//! predecessor `tokens[i - 1]`: the first token's predecessor (the prompt's last token) is
//! unknown to a detector that has only the text. [`Watermark::score_after`] also scores the first
//! token, when that predecessor is known.
//!
//! Each distinct `(prev, token)` bigram is scored once: a repeated one is the same coin flip
//! again, not new evidence. This is the reference detector's `ignore_repeated_ngrams` option.
//! Counting every position made repetitive human text look watermarked. With the key
//! "cli-test", the code block in our README, with its runs of spaces, scored z = 5.36 that way
//! (src/cmd/watermark.rs tests it). With `T` distinct bigrams scored and `G` of them green,
//!
//! `z = (G − γT) / sqrt(T γ (1 − γ))`, `p = P(N(0,1) > z)` (one-sided),
//!
//! and the text is flagged when `z > Z_THRESHOLD` (4.0, p ≈ 3.2·10⁻⁵).
use crate::Error;
use xxhash_rust::xxh3::xxh3_64;

/// A text is flagged as watermarked when its z-score exceeds this (one-sided p ≈ 3.17·10⁻⁵).
pub const Z_THRESHOLD: f64 = 4.0;

/// 2^64 as an `f64` (exact).
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// The watermark's secret and strength: `key` picks the green lists, `gamma` is the green
/// fraction of the vocabulary, `delta` the logit bias added to green tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Watermark {
    /// `XXH3_64` of the key string's UTF-8 bytes (see the module docs).
    pub key: u64,
    /// The green fraction γ, in (0, 1). Typical: 0.25 (the paper's demo also used 0.5).
    pub gamma: f32,
    /// The bias δ ≥ 0 added to green logits. Typical: 2.0. Detection does not need it.
    pub delta: f32,
}

/// The result of scoring one text.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Detection {
    /// T: the positions scored.
    pub tokens_scored: usize,
    /// G: how many of them were green.
    pub green: usize,
    /// `(G − γT) / sqrt(T γ (1 − γ))`; 0 when nothing was scored.
    pub z: f64,
    /// The one-sided p-value `P(N(0,1) > z)`; 1 when nothing was scored.
    pub p_value: f64,
    /// `z > Z_THRESHOLD`.
    pub flagged: bool,
}

impl Watermark {
    /// A watermark from a key string, γ and δ. Errors name the invalid field: γ must lie in
    /// (0, 1) and δ must be finite and ≥ 0.
    pub fn new(key: &str, gamma: f32, delta: f32) -> Result<Self, Error> {
        if !(gamma > 0.0 && gamma < 1.0) {
            return Err(Error::Invalid(format!(
                "watermark gamma: must be in (0, 1), got {gamma}"
            )));
        }
        if !(delta >= 0.0 && delta.is_finite()) {
            return Err(Error::Invalid(format!(
                "watermark delta: must be finite and >= 0, got {delta}"
            )));
        }
        Ok(Watermark {
            key: xxh3_64(key.as_bytes()),
            gamma,
            delta,
        })
    }

    /// `floor(γ · 2^64)`: hashes below it are green. Saturates at `u64::MAX` (the `as` cast).
    fn threshold(&self) -> u64 {
        (f64::from(self.gamma) * TWO_POW_64) as u64
    }

    /// `XXH3_64_withSeed(le32(prev) ‖ le32(token), key)`, through [`StepHasher`].
    #[inline]
    fn hash(key: u64, prev: u32, token: u32) -> u64 {
        StepHasher::new(key, prev).hash(token)
    }

    /// Whether `token` is on the green list that follows `prev` (see the module docs).
    #[inline]
    pub fn is_green(&self, prev: u32, token: u32) -> bool {
        Self::hash(self.key, prev, token) < self.threshold()
    }

    /// Adds δ to the logit of every green token, where `logits[i]` is token id `i`'s logit and
    /// `prev` is the last token of the context. One 8-byte XXH3 per vocabulary entry, with no
    /// branch, which the compiler vectorises: ~77 µs for a 32k vocabulary on one core of our
    /// 2-core CI VM (release build), half the time of a branch on each green test.
    pub fn bias(&self, prev: u32, logits: &mut [f32]) {
        if self.delta == 0.0 {
            return;
        }
        let (step, threshold) = (StepHasher::new(self.key, prev), self.threshold());
        let delta_bits = self.delta.to_bits();
        for (token, logit) in (0u32..).zip(logits.iter_mut()) {
            // A bit mask (all ones when green) rather than a branch: each green test is a coin
            // flip with p = γ, which a branch mispredicts.
            let mask = 0u32.wrapping_sub(u32::from(step.hash(token) < threshold));
            *logit += f32::from_bits(delta_bits & mask);
        }
    }

    /// Scores a text's token ids: position `i ≥ 1` against `tokens[i - 1]`, each distinct
    /// `(prev, token)` bigram once, so `T ≤ len − 1`. Use this when only the text is known (the
    /// first token's predecessor is not).
    pub fn score(&self, tokens: &[u32]) -> Detection {
        self.score_pairs(tokens.windows(2).map(|w| (w[0], w[1])))
    }

    /// As [`score`](Self::score), but the first token is scored too, against `prev` (the
    /// context's last token, as during generation), so `T ≤ len`.
    pub fn score_after(&self, prev: u32, tokens: &[u32]) -> Detection {
        let prevs = std::iter::once(prev).chain(tokens.iter().copied());
        self.score_pairs(prevs.zip(tokens.iter().copied()))
    }

    /// Scores each distinct `(prev, token)` pair of `pairs` once.
    fn score_pairs(&self, pairs: impl Iterator<Item = (u32, u32)>) -> Detection {
        let mut seen = std::collections::HashSet::new();
        let (mut scored, mut green) = (0, 0);
        for (p, t) in pairs {
            if seen.insert((p, t)) {
                scored += 1;
                green += usize::from(self.is_green(p, t));
            }
        }
        self.detection(scored, green)
    }

    /// The z-score and p-value of `green` green tokens out of `scored`.
    pub fn detection(&self, scored: usize, green: usize) -> Detection {
        let (z, p_value) = if scored == 0 {
            (0.0, 1.0)
        } else {
            let (t, g, gamma) = (scored as f64, green as f64, f64::from(self.gamma));
            let z = (g - gamma * t) / (t * gamma * (1.0 - gamma)).sqrt();
            (z, normal_sf(z))
        };
        Detection {
            tokens_scored: scored,
            green,
            z,
            p_value,
            flagged: z > Z_THRESHOLD,
        }
    }
}

/// XXH3-64 of the 8 bytes `le32(prev) ‖ le32(token)` with a seed, written out for that one input
/// length (XXH3's 4-to-8-byte path) so that the part fixed by `(seed, prev)` is computed once per
/// decoding step: what is left per token is an xor, two rotations and two multiplications. It
/// equals `xxhash_rust::xxh3::xxh3_64_with_seed` (tested).
#[derive(Clone, Copy)]
struct StepHasher {
    /// `(u64(prev) << 32) ^ bitflip`, where `bitflip = (secret[8..16] ^ secret[16..24]) − seed'`.
    high: u64,
}

impl StepHasher {
    /// Bytes 8..16 and 16..24 of XXH3's default secret, read little-endian.
    const SECRET_8: u64 = 0x1cad_21f7_2c81_017c;
    const SECRET_16: u64 = 0xdb97_9083_e96d_d4de;
    /// XXH3's `rrmxmx` multiplier.
    const PRIME_MX2: u64 = 0x9fb2_1c65_1e98_df25;

    #[inline]
    fn new(seed: u64, prev: u32) -> Self {
        let seed = seed ^ (u64::from((seed as u32).swap_bytes()) << 32);
        let bitflip = (Self::SECRET_8 ^ Self::SECRET_16).wrapping_sub(seed);
        StepHasher {
            high: (u64::from(prev) << 32) ^ bitflip,
        }
    }

    #[inline]
    fn hash(self, token: u32) -> u64 {
        // input64 = le32(last 4 bytes) + (le32(first 4 bytes) << 32), keyed by the bitflip.
        let mut h = self.high ^ u64::from(token);
        h ^= h.rotate_left(49) ^ h.rotate_left(24);
        h = h.wrapping_mul(Self::PRIME_MX2);
        h ^= (h >> 35).wrapping_add(8); // + the input length
        h = h.wrapping_mul(Self::PRIME_MX2);
        h ^ (h >> 28)
    }
}

/// The standard normal survival function `P(N(0,1) > z) = erfc(z / √2) / 2`, to about 1e-14
/// relative accuracy over the whole range (it underflows to 0 past z ≈ 38).
pub fn normal_sf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function: a positive-term Taylor series below 2.5 and a continued
/// fraction (modified Lentz) from 2.5 on; `erfc(−x) = 2 − erfc(x)`.
fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        // erf(x) = 2/√π · e^{−x²} · Σ_{n≥0} 2ⁿ x^{2n+1} / (1·3·…·(2n+1)); every term is positive.
        // At x < 2.5, erfc ≥ 4e-4, so 1 − erf loses at most ~4 of 16 digits.
        let x2 = x * x;
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            sum += term;
        }
        1.0 - 2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum
    } else {
        // erfc(x) = e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …))))).
        let tiny = 1e-300;
        let mut f = x;
        let mut c = x;
        let mut d = 0.0;
        for k in 1..200 {
            let a = f64::from(k) / 2.0;
            d = x + a * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = x + a / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x * x).exp() / (f * std::f64::consts::PI.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn wm() -> Watermark {
        Watermark::new("koala-secret", 0.25, 2.0).unwrap()
    }

    #[test]
    fn hash_matches_python_xxhash() {
        // Computed with the Python `xxhash` 3.x package (independent C implementation):
        // key = xxh3_64_intdigest(b"koala-secret");
        // h = xxh3_64_intdigest(struct.pack("<II", prev, token), seed=key).
        let w = wm();
        assert_eq!(w.key, 3_258_478_070_463_516_073);
        let cases: [(u32, u32, u64); 4] = [
            (0, 0, 7_660_655_681_893_956_778),
            (1, 2, 3_091_837_230_614_650_172),
            (29871, 450, 10_640_298_312_302_337_457),
            (u32::MAX, 31999, 4_680_106_219_621_272_345),
        ];
        for (prev, token, h) in cases {
            assert_eq!(Watermark::hash(w.key, prev, token), h, "({prev}, {token})");
            assert_eq!(w.is_green(prev, token), h < 4_611_686_018_427_387_904);
        }
        assert_eq!(w.threshold(), 1 << 62);
        assert!(w.is_green(1, 2));
        assert!(!w.is_green(0, 0));
    }

    #[test]
    fn step_hasher_equals_xxh3_with_seed() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..100_000 {
            let (key, prev, token) = (
                rng.random::<u64>(),
                rng.random::<u32>(),
                rng.random::<u32>(),
            );
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&prev.to_le_bytes());
            bytes[4..].copy_from_slice(&token.to_le_bytes());
            let want = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, key);
            assert_eq!(
                Watermark::hash(key, prev, token),
                want,
                "{key} {prev} {token}"
            );
        }
        for key in [0, 1, u64::MAX, 0xffff_ffff, 1 << 32] {
            for (prev, token) in [(0, 0), (u32::MAX, u32::MAX), (0, u32::MAX), (u32::MAX, 0)] {
                let mut bytes = [0u8; 8];
                bytes[..4].copy_from_slice(&prev.to_le_bytes());
                bytes[4..].copy_from_slice(&token.to_le_bytes());
                let want = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, key);
                assert_eq!(Watermark::hash(key, prev, token), want);
            }
        }
    }

    #[test]
    fn new_validates_and_names_the_field() {
        for g in [0.0, 1.0, -0.1, 1.5, f32::NAN] {
            let e = Watermark::new("k", g, 2.0).unwrap_err().to_string();
            assert!(e.contains("gamma"), "{e}");
        }
        for d in [-1.0, f32::NAN, f32::INFINITY] {
            let e = Watermark::new("k", 0.25, d).unwrap_err().to_string();
            assert!(e.contains("delta"), "{e}");
        }
        assert!(Watermark::new("k", 0.5, 0.0).is_ok());
        assert_ne!(
            Watermark::new("a", 0.25, 2.0).unwrap().key,
            Watermark::new("b", 0.25, 2.0).unwrap().key
        );
    }

    #[test]
    fn green_fraction_is_gamma() {
        for gamma in [0.25f32, 0.5, 0.1] {
            let w = Watermark::new("fraction", gamma, 2.0).unwrap();
            let (mut n, mut green) = (0usize, 0usize);
            for prev in 0..50u32 {
                for token in 0..4000u32 {
                    n += 1;
                    green += usize::from(w.is_green(prev * 7919, token));
                }
            }
            let g = f64::from(gamma);
            let sd = (n as f64 * g * (1.0 - g)).sqrt();
            let dev = (green as f64 - g * n as f64) / sd;
            assert!(dev.abs() < 5.0, "gamma {gamma}: {green}/{n}, {dev:.2} sd");
        }
    }

    #[test]
    fn green_lists_differ_by_prev_and_key() {
        let (a, b) = (wm(), Watermark::new("other", 0.25, 2.0).unwrap());
        let list = |w: &Watermark, prev| {
            (0..2000u32)
                .map(|t| w.is_green(prev, t))
                .collect::<Vec<_>>()
        };
        assert_ne!(list(&a, 5), list(&a, 6));
        assert_ne!(list(&a, 5), list(&b, 5));
    }

    #[test]
    fn bias_adds_delta_exactly_to_green_tokens() {
        let w = wm();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let before: Vec<f32> = (0..32000)
            .map(|_| rng.random::<f32>() * 20.0 - 10.0)
            .collect();
        for prev in [0u32, 1, 29871, u32::MAX] {
            let mut after = before.clone();
            w.bias(prev, &mut after);
            let mut green = 0;
            for (t, (&b, &a)) in before.iter().zip(&after).enumerate() {
                if w.is_green(prev, t as u32) {
                    assert_eq!(a, b + w.delta);
                    green += 1;
                } else {
                    assert_eq!(a, b);
                }
            }
            assert!((7500..8500).contains(&green), "{green}");
        }
        let mut zero = Watermark::new("k", 0.25, 0.0).unwrap();
        let mut l = before.clone();
        zero.bias(3, &mut l);
        assert_eq!(l, before);
        zero.delta = 1.0;
        zero.bias(3, &mut l);
        assert_ne!(l, before);
    }

    #[test]
    #[allow(clippy::excessive_precision)] // mpmath's 17 significant digits, as printed.
    fn normal_sf_matches_mpmath() {
        // erfc(z/√2)/2 from mpmath at 30 digits.
        let cases = [
            (0.0, 0.5),
            (0.5, 0.3085375387259869),
            (1.0, 0.15865525393145705),
            (1.5, 0.066807201268858066),
            (2.0, 0.022750131948179207),
            (2.5, 0.0062096653257761352),
            (3.0, 0.0013498980316300945),
            (3.5, 0.00023262907903552504),
            (3.9, 4.8096344017602735e-5),
            (4.0, 3.1671241833119921e-5),
            (4.5, 3.3976731247300604e-6),
            (5.0, 2.8665157187919391e-7),
            (6.0, 9.8658764503769814e-10),
            (7.0, 1.279812543885835e-12),
            (8.0, 6.2209605742717841e-16),
            (10.0, 7.6198530241605261e-24),
            (15.0, 3.6709661993127509e-51),
            (20.0, 2.7536241186062337e-89),
            (30.0, 4.9067139271481871e-198),
            (37.0, 5.7255712225245768e-300),
            (-1.0, 0.84134474606854295),
            (-3.0, 0.99865010196836991),
            (-6.0, 0.99999999901341235),
        ];
        for (z, want) in cases {
            let got = normal_sf(z);
            let rel = ((got - want) / want).abs();
            assert!(
                rel < 1e-12,
                "sf({z}) = {got:e}, want {want:e} (rel {rel:e})"
            );
        }
        // Around the series / continued-fraction switch (x = 2.5, z ≈ 3.5355): continuous.
        let z0 = 2.5 * std::f64::consts::SQRT_2;
        let (lo, hi) = (normal_sf(z0 - 1e-9), normal_sf(z0 + 1e-9));
        assert!(lo > hi && (lo - hi) / hi < 1e-7);
        assert_eq!(normal_sf(50.0), 0.0);
        assert_eq!(normal_sf(-50.0), 1.0);
    }

    #[test]
    fn z_and_p_by_hand() {
        let w = wm();
        // T = 100, G = 50, γ = 0.25: z = (50 − 25) / sqrt(100·0.25·0.75) = 25 / 4.330127 = 5.773503.
        let d = w.detection(100, 50);
        assert_eq!((d.tokens_scored, d.green), (100, 50));
        assert!((d.z - 25.0 / 18.75f64.sqrt()).abs() < 1e-12);
        assert!((d.z - 5.773_502_691_896_258).abs() < 1e-12);
        assert!(d.flagged);
        // T = 48, G = 12 + 4·sqrt(9) = 24: z = 12/3 = 4 exactly, not flagged (z must exceed 4).
        let d = w.detection(48, 24);
        assert_eq!(d.z, 4.0);
        assert!((d.p_value - 3.167_124_183_311_992e-5).abs() < 1e-17);
        assert!(!d.flagged);
        let d = w.detection(48, 25);
        assert!(d.z > 4.0 && d.flagged);
        // Exactly the expected count: z = 0, p = 1/2.
        let d = w.detection(200, 50);
        assert_eq!((d.z, d.p_value, d.flagged), (0.0, 0.5, false));
        // Nothing scored.
        let d = w.detection(0, 0);
        assert_eq!((d.z, d.p_value, d.flagged), (0.0, 1.0, false));
        assert_eq!(w.score(&[]).tokens_scored, 0);
        assert_eq!(w.score(&[7]).tokens_scored, 0);
    }

    #[test]
    fn score_counts_each_position_against_its_predecessor() {
        let w = wm();
        let toks = [5u32, 17, 17, 900, 3, 29871, 450];
        let g = toks.windows(2).filter(|p| w.is_green(p[0], p[1])).count();
        let d = w.score(&toks);
        assert_eq!((d.tokens_scored, d.green), (6, g));
        let d = w.score_after(1, &toks);
        assert_eq!(d.tokens_scored, 7);
        assert_eq!(d.green, g + usize::from(w.is_green(1, 5)));
    }

    #[test]
    fn repeated_bigrams_are_scored_once() {
        let w = wm();
        // Find a green (prev, token) pair and a red one.
        let green = (0..).find(|&t| w.is_green(7, t)).unwrap();
        let red = (0..).find(|&t| !w.is_green(7, t)).unwrap();
        // "7 green 7 green 7 green …": two distinct bigrams, (7, green) and (green, 7).
        let toks: Vec<u32> = (0..100).flat_map(|_| [7, green]).collect();
        let d = w.score(&toks);
        assert_eq!(d.tokens_scored, 2);
        assert_eq!(d.green, 1 + usize::from(w.is_green(green, 7)));
        assert!(!d.flagged);
        // Every position counted, the same text would be "watermarked".
        let all = toks.windows(2).filter(|p| w.is_green(p[0], p[1])).count();
        assert!(w.detection(199, all).flagged);
        let d = w.score_after(7, &[red, red, red]);
        assert_eq!(d.tokens_scored, 2); // (7, red) and (red, red)
    }

    #[test]
    fn random_text_is_never_flagged() {
        let w = wm();
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let mut max_z = f64::MIN;
        for _ in 0..1000 {
            let toks: Vec<u32> = (0..200).map(|_| rng.random_range(0..32000)).collect();
            let d = w.score(&toks);
            assert_eq!(d.tokens_scored, 199);
            assert!(!d.flagged, "{d:?}");
            max_z = max_z.max(d.z);
        }
        assert!(max_z < Z_THRESHOLD, "{max_z}");
    }

    /// Entropy in nats of the distribution proportional to `w`.
    fn entropy(w: &[f64]) -> f64 {
        let s: f64 = w.iter().sum();
        -w.iter()
            .map(|&x| x / s)
            .filter(|&p| p > 0.0)
            .map(|p| p * p.ln())
            .sum::<f64>()
    }

    /// `n` texts of `len` tokens from a synthetic "language model" over a prime-sized vocabulary:
    /// at each step a Zipf distribution, `p(rank r) ∝ r^(−s)`, over a fresh random ranking of
    /// the tokens (`token = (a·r + b) mod vocab`), with every green token's weight multiplied by
    /// `e^δ` when `wm` is given, which is sampling from `softmax(logits + δ·green)`. Returns the
    /// texts and the entropy of the unbiased distribution in nats.
    fn synthetic(
        wm: Option<&Watermark>,
        s: f64,
        vocab: u32,
        n: usize,
        len: usize,
        seed: u64,
    ) -> (Vec<Vec<u32>>, f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let zipf: Vec<f64> = (1..=vocab).map(|r| f64::from(r).powf(-s)).collect();
        let boost = wm.map_or(1.0, |w| f64::from(w.delta).exp());
        let mut weights = vec![0f64; vocab as usize];
        let texts = (0..n)
            .map(|_| {
                let mut prev = rng.random_range(0..vocab);
                (0..len)
                    .map(|_| {
                        let (a, b) = (rng.random_range(1..vocab), rng.random_range(0..vocab));
                        let mut total = 0.0;
                        for (r, &p) in (0u32..).zip(&zipf) {
                            let tok = ((u64::from(a) * u64::from(r) + u64::from(b))
                                % u64::from(vocab)) as usize;
                            let green = wm.is_some_and(|w| w.is_green(prev, tok as u32));
                            weights[tok] = if green { p * boost } else { p };
                            total += weights[tok];
                        }
                        let mut u = rng.random::<f64>() * total;
                        prev = vocab - 1;
                        for (tok, &w) in (0u32..).zip(&weights) {
                            if u < w {
                                prev = tok;
                                break;
                            }
                            u -= w;
                        }
                        prev
                    })
                    .collect()
            })
            .collect();
        (texts, entropy(&zipf))
    }

    #[test]
    fn watermarked_text_is_detected_at_200_tokens() {
        let w = wm();
        // s = 1.4 over 509 tokens: ~3.2 nats per step, about what a chat model emits.
        let (texts, h) = synthetic(Some(&w), 1.4, 509, 200, 200, 7);
        assert!((2.5..4.0).contains(&h), "entropy {h}");
        let zs: Vec<f64> = texts.iter().map(|t| w.score(t).z).collect();
        let flagged = zs.iter().filter(|&&z| z > Z_THRESHOLD).count();
        let min = zs.iter().copied().fold(f64::MAX, f64::min);
        eprintln!("entropy {h:.2} nats: {flagged}/200 flagged, min z {min:.2}");
        assert!(
            flagged >= 190,
            "{flagged}/200 flagged (entropy {h:.2} nats)"
        );
        // The same model without the watermark: nothing flagged, z centred near 0.
        let (plain, _) = synthetic(None, 1.4, 509, 200, 200, 8);
        let zs: Vec<f64> = plain.iter().map(|t| w.score(t).z).collect();
        assert!(zs.iter().all(|&z| z < Z_THRESHOLD));
        let mean = zs.iter().sum::<f64>() / zs.len() as f64;
        assert!(mean.abs() < 0.5, "mean z {mean}");
        // A different key sees no watermark.
        let other = Watermark::new("not-the-key", 0.25, 2.0).unwrap();
        assert!(texts.iter().all(|t| !other.score(t).flagged));
    }

    #[test]
    fn detection_weakens_on_low_entropy_and_short_text() {
        let w = wm();
        // Low entropy (s = 4: the top token has p ≈ 0.92): δ = 2 rarely overturns the model's
        // choice, so most texts go undetected at 200 tokens.
        let (texts, h) = synthetic(Some(&w), 4.0, 509, 100, 200, 9);
        assert!(h < 0.6, "entropy {h}");
        let low = texts.iter().filter(|t| w.score(t).flagged).count();
        // Short text (16 tokens) at the normal entropy: too few tokens to reach z > 4 often.
        let (texts, _) = synthetic(Some(&w), 1.4, 509, 100, 16, 10);
        let short = texts.iter().filter(|t| w.score(t).flagged).count();
        eprintln!("entropy {h:.2} nats: {low}/100 flagged; 16 tokens: {short}/100 flagged");
        assert!(low < 30, "low entropy: {low}/100 flagged");
        assert!(short < 70, "short: {short}/100 flagged");
    }
}
