//! Bradley–Terry maximum likelihood on aggregated pair counts, and the seeded bootstrap.
//!
//! Battles are first tallied per (pair, outcome) — `wins of the first system`, `ties`,
//! `wins of the second` for each pair `i < j` — so a fit costs O(pairs) per Newton step however
//! many battles there are. A tie (or both-bad) is half a win for each side, as
//! [`Winner::score_a`](crate::Winner::score_a) scores it.
//!
//! The model: P(i beats j) = σ(θᵢ − θⱼ), fitted by Newton's method with a step-halving line search
//! on the log-likelihood plus a vanishing ridge `RIDGE/2·‖θ‖²` (scikit-learn's
//! `LogisticRegression(C = 1/RIDGE, fit_intercept=False)` minimises the same objective, which is
//! what `scripts/gen_bt_fixtures.py` cross-checks). The ridge keeps a system that won (or lost)
//! every battle finite and centres θ at mean 0; on any real data it moves ratings by far less than
//! 0.01 Elo. The Elo-scale rating is `1000 + 400·log10(e^θ)`, so ratings average 1000.
use rayon::prelude::*;

/// The ridge weight λ of the objective (see the module doc).
pub const RIDGE: f64 = 1e-6;
/// Elo points per natural-log unit of strength: 400 / ln 10.
pub const ELO_PER_NAT: f64 = 400.0 / std::f64::consts::LN_10;
/// The mean rating.
pub const ELO_MEAN: f64 = 1000.0;

/// Outcome tallies between `n` systems, per unordered pair `i < j`, from `i`'s side.
#[derive(Clone, Debug, PartialEq)]
pub struct PairCounts {
    n: usize,
    /// `[wins_i, ties, wins_j]` per pair, in [`PairCounts::pair_index`] order.
    counts: Vec<[u64; 3]>,
}

impl PairCounts {
    /// Empty tallies for `n` systems.
    pub fn new(n: usize) -> Self {
        PairCounts {
            n,
            counts: vec![[0; 3]; n * n.saturating_sub(1) / 2],
        }
    }

    /// Number of systems.
    pub fn systems(&self) -> usize {
        self.n
    }

    /// Number of unordered pairs, `n(n−1)/2`.
    pub fn pairs(&self) -> usize {
        self.counts.len()
    }

    /// The index of the pair `i < j`.
    pub fn pair_index(&self, i: usize, j: usize) -> usize {
        debug_assert!(i < j && j < self.n);
        i * self.n - i * (i + 1) / 2 + (j - i - 1)
    }

    /// The pair `(i, j)`, `i < j`, of every index, in index order.
    pub fn pair_list(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::with_capacity(self.pairs());
        for i in 0..self.n {
            for j in i + 1..self.n {
                v.push((i, j));
            }
        }
        v
    }

    /// Adds one battle between `i` and `j` (`i != j`) with `i`'s score 1, ½ or 0.
    pub fn add(&mut self, i: usize, j: usize, score_i: f64) {
        let (lo, hi, s) = if i < j {
            (i, j, score_i)
        } else {
            (j, i, 1.0 - score_i)
        };
        let p = self.pair_index(lo, hi);
        self.counts[p][outcome(s) as usize] += 1;
    }

    /// `[wins_i, ties, wins_j]` of pair index `p`.
    pub fn get(&self, p: usize) -> [u64; 3] {
        self.counts[p]
    }

    /// All tallies, in pair-index order; category `3·p + k` is outcome `k` of pair `p`.
    pub fn as_slice(&self) -> &[[u64; 3]] {
        &self.counts
    }

    /// Total number of battles.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Battles each system took part in.
    pub fn battles_per_system(&self) -> Vec<u64> {
        let mut b = vec![0; self.n];
        for ((i, j), c) in self.pair_list().into_iter().zip(&self.counts) {
            let t: u64 = c.iter().sum();
            b[i] += t;
            b[j] += t;
        }
        b
    }
}

/// Outcome category from the first system's score: 0 win, 1 tie, 2 loss.
fn outcome(score: f64) -> u8 {
    if score > 0.75 {
        0
    } else if score < 0.25 {
        2
    } else {
        1
    }
}

/// `ln σ(x)`, computed without overflow.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The penalised negative log-likelihood.
fn objective(theta: &[f64], pairs: &[(usize, usize)], counts: &[[u64; 3]]) -> f64 {
    let mut f = 0.5 * RIDGE * theta.iter().map(|t| t * t).sum::<f64>();
    for (&(i, j), c) in pairs.iter().zip(counts) {
        let n = (c[0] + c[1] + c[2]) as f64;
        if n == 0.0 {
            continue;
        }
        let s = c[0] as f64 + 0.5 * c[1] as f64;
        let d = theta[i] - theta[j];
        f -= s * log_sigmoid(d) + (n - s) * log_sigmoid(-d);
    }
    f
}

/// Fits log-strengths θ (mean 0) to the tallies. `pairs` is [`PairCounts::pair_list`].
pub fn fit_theta(n: usize, pairs: &[(usize, usize)], counts: &[[u64; 3]]) -> Vec<f64> {
    let mut theta = vec![0.0; n];
    if n < 2 {
        return theta;
    }
    let mut grad = vec![0.0; n];
    let mut hess = vec![0.0; n * n];
    let mut f = objective(&theta, pairs, counts);
    for _ in 0..500 {
        grad.iter_mut()
            .zip(&theta)
            .for_each(|(g, t)| *g = -RIDGE * t);
        hess.iter_mut().for_each(|h| *h = 0.0);
        for i in 0..n {
            hess[i * n + i] = RIDGE;
        }
        for (&(i, j), c) in pairs.iter().zip(counts) {
            let m = (c[0] + c[1] + c[2]) as f64;
            if m == 0.0 {
                continue;
            }
            let s = c[0] as f64 + 0.5 * c[1] as f64;
            let p = sigmoid(theta[i] - theta[j]);
            let g = s - m * p;
            grad[i] += g;
            grad[j] -= g;
            let w = m * p * (1.0 - p);
            hess[i * n + i] += w;
            hess[j * n + j] += w;
            hess[i * n + j] -= w;
            hess[j * n + i] -= w;
        }
        // The objective is flat along 1 but for the ridge; θ and the gradient stay orthogonal to 1,
        // so adding c·11ᵀ/n leaves the Newton step unchanged and makes the system well conditioned.
        let c = (0..n).map(|i| hess[i * n + i]).sum::<f64>() / (n * n) as f64;
        hess.iter_mut().for_each(|h| *h += c);
        let Some(step) = solve(&mut hess, &grad, n) else {
            break;
        };
        let mut t = 1.0;
        let mut improved = false;
        let mut cand = theta.clone();
        for _ in 0..60 {
            for k in 0..n {
                cand[k] = theta[k] + t * step[k];
            }
            let fc = objective(&cand, pairs, counts);
            if fc <= f {
                improved = true;
                f = fc;
                break;
            }
            t *= 0.5;
        }
        if !improved {
            break;
        }
        let moved = step.iter().map(|s| (s * t).abs()).fold(0.0, f64::max);
        std::mem::swap(&mut theta, &mut cand);
        if moved < 1e-11 {
            break;
        }
    }
    let mean = theta.iter().sum::<f64>() / n as f64;
    theta.iter_mut().for_each(|t| *t -= mean);
    theta
}

/// Solves `a·x = b` (a symmetric positive definite, row-major n×n; overwritten) by Gaussian
/// elimination with partial pivoting. `None` if singular.
fn solve(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut x = b.to_vec();
    for col in 0..n {
        let piv =
            (col..n).max_by(|&r, &s| a[r * n + col].abs().total_cmp(&a[s * n + col].abs()))?;
        if a[piv * n + col].abs() < 1e-300 || !a[piv * n + col].is_finite() {
            return None;
        }
        if piv != col {
            for k in 0..n {
                a.swap(piv * n + k, col * n + k);
            }
            x.swap(piv, col);
        }
        let d = a[col * n + col];
        for r in col + 1..n {
            let f = a[r * n + col] / d;
            if f == 0.0 {
                continue;
            }
            for k in col..n {
                a[r * n + k] -= f * a[col * n + k];
            }
            x[r] -= f * x[col];
        }
    }
    for col in (0..n).rev() {
        let mut s = x[col];
        for k in col + 1..n {
            s -= a[col * n + k] * x[k];
        }
        x[col] = s / a[col * n + col];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Elo-scale ratings (mean 1000) fitted to the tallies.
pub fn fit_elo(counts: &PairCounts) -> Vec<f64> {
    fit_theta(counts.systems(), &counts.pair_list(), counts.as_slice())
        .into_iter()
        .map(|t| ELO_MEAN + ELO_PER_NAT * t)
        .collect()
}

/// SplitMix64: a small, fast, seedable generator (each bootstrap round gets its own stream).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Walker/Vose alias table over the (pair, outcome) categories, weighted by their battle counts:
/// one draw picks a battle uniformly at random (with replacement) and returns its category, in
/// O(1) and without touching a per-battle array.
#[derive(Clone, Debug)]
struct Alias {
    /// Category of each column.
    cat: Vec<u32>,
    /// Acceptance threshold of each column, scaled to 2³².
    keep: Vec<u64>,
    /// Category taken when the column's coin fails.
    other: Vec<u32>,
}

impl Alias {
    fn new(weights: &[u64]) -> Self {
        let cats: Vec<(u32, u64)> = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(c, w)| (c as u32, *w))
            .collect();
        let k = cats.len();
        let total: u64 = cats.iter().map(|c| c.1).sum();
        // Scaled weights: w·k/total, in units where 1.0 = a full column.
        let mut p: Vec<f64> = cats
            .iter()
            .map(|c| c.1 as f64 * k as f64 / total as f64)
            .collect();
        let mut keep = vec![1.0f64; k];
        let mut other: Vec<u32> = cats.iter().map(|c| c.0).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..k).partition(|&i| p[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = p[s];
            other[s] = cats[l].0;
            p[l] -= 1.0 - p[s];
            if p[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Alias {
            cat: cats.iter().map(|c| c.0).collect(),
            keep: keep
                .into_iter()
                .map(|q| (q.clamp(0.0, 1.0) * 4_294_967_296.0) as u64)
                .collect(),
            other,
        }
    }

    fn draw(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_u64();
        let col = (((u >> 32) * self.cat.len() as u64) >> 32) as usize;
        if (u & 0xffff_ffff) < self.keep[col] {
            self.cat[col] as usize
        } else {
            self.other[col] as usize
        }
    }
}

/// One bootstrap round's results.
#[derive(Clone, Debug)]
pub struct Round {
    /// Elo rating per system.
    pub ratings: Vec<f64>,
    /// Adjusted win rate of the first system per pair (`NaN` where the pair drew no battle).
    pub win_rates: Vec<f64>,
}

/// `rounds` bootstrap resamples of the battles (each the same size as the data, drawn with
/// replacement), each refitted. Round `r` uses its own stream seeded from `(seed, r)`, so results
/// do not depend on the thread count.
pub fn bootstrap(counts: &PairCounts, rounds: usize, seed: u64) -> Vec<Round> {
    let flat: Vec<u64> = counts.as_slice().iter().flatten().copied().collect();
    let total: u64 = flat.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    let alias = Alias::new(&flat);
    let pairs = counts.pair_list();
    let n = counts.systems();
    (0..rounds)
        .into_par_iter()
        .map(|r| {
            let mut rng =
                SplitMix64::new(seed ^ (r as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
            // Warm the stream so neighbouring seeds decorrelate.
            rng.next_u64();
            let mut tally = vec![0u64; flat.len()];
            for _ in 0..total {
                tally[alias.draw(&mut rng)] += 1;
            }
            let c: Vec<[u64; 3]> = tally.chunks_exact(3).map(|t| [t[0], t[1], t[2]]).collect();
            let ratings = fit_theta(n, &pairs, &c)
                .into_iter()
                .map(|t| ELO_MEAN + ELO_PER_NAT * t)
                .collect();
            let win_rates = c
                .iter()
                .map(|t| {
                    let m = (t[0] + t[1] + t[2]) as f64;
                    (t[0] as f64 + 0.5 * t[1] as f64) / m
                })
                .collect();
            Round { ratings, win_rates }
        })
        .collect()
}

/// The `q`-quantile (0..=1) of `values` with linear interpolation (numpy's default), ignoring
/// NaNs; `NaN` if none are left.
pub fn percentile(values: &mut Vec<f64>, q: f64) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_index_is_dense() {
        let c = PairCounts::new(5);
        let idx: Vec<usize> = c
            .pair_list()
            .into_iter()
            .map(|(i, j)| c.pair_index(i, j))
            .collect();
        assert_eq!(idx, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn two_systems_match_the_closed_form() {
        // 30 wins, 10 ties, 10 losses: score 35 of 50, so p = 0.7 and Δθ = ln(0.7/0.3).
        let mut c = PairCounts::new(2);
        for _ in 0..30 {
            c.add(0, 1, 1.0);
        }
        for _ in 0..10 {
            c.add(1, 0, 0.5);
        }
        for _ in 0..10 {
            c.add(1, 0, 1.0);
        }
        assert_eq!(c.get(0), [30, 10, 10]);
        let r = fit_elo(&c);
        let want = ELO_PER_NAT * (0.7f64 / 0.3).ln();
        assert!((r[0] - r[1] - want).abs() < 1e-3, "{r:?} {want}");
        assert!(((r[0] + r[1]) / 2.0 - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn a_clean_sweep_stays_finite() {
        let mut c = PairCounts::new(3);
        for _ in 0..20 {
            c.add(0, 1, 1.0);
            c.add(1, 2, 0.5);
        }
        let r = fit_elo(&c);
        assert!(r.iter().all(|v| v.is_finite()), "{r:?}");
        assert!(r[0] > r[1] + 1000.0 && (r[1] - r[2]).abs() < 1.0, "{r:?}");
    }

    #[test]
    fn alias_draws_follow_the_weights() {
        let a = Alias::new(&[0, 10, 30, 60]);
        let mut rng = SplitMix64::new(7);
        let mut n = [0u64; 4];
        for _ in 0..200_000 {
            n[a.draw(&mut rng)] += 1;
        }
        assert_eq!(n[0], 0);
        for (k, w) in [(1, 0.1), (2, 0.3), (3, 0.6)] {
            let f = n[k] as f64 / 200_000.0;
            assert!((f - w).abs() < 0.01, "{n:?}");
        }
    }

    #[test]
    fn percentile_interpolates() {
        let mut v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.025), 2.5);
        assert_eq!(percentile(&mut v, 0.975), 97.5);
    }
}
