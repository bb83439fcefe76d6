//! The statistics of a score: accuracy with its standard error and 95% interval, and the
//! paired comparison of two models on the same items.

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Accuracy of per-item scores (each the mean over that item's samples, in [0, 1]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    /// Mean over items.
    pub mean: f64,
    /// Standard error of the mean (items are the unit; samples of one item are not
    /// independent of each other).
    pub stderr: f64,
    /// 95% interval: Wilson's for one sample per item, mean ± 1.96 se otherwise; in [0, 1].
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

/// Accuracy of `scores` (one per item) where each item had `samples` samples.
pub fn accuracy(scores: &[f64], samples: usize) -> Accuracy {
    let n = scores.len();
    if n == 0 {
        return Accuracy { mean: f64::NAN, stderr: f64::NAN, low: f64::NAN, high: f64::NAN };
    }
    let mean = scores.iter().sum::<f64>() / n as f64;
    if samples <= 1 {
        let se = (mean * (1.0 - mean) / n as f64).sqrt();
        let (low, high) = wilson(mean, n as f64);
        return Accuracy { mean, stderr: se, low, high };
    }
    let se = if n > 1 {
        let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    } else {
        0.0
    };
    Accuracy { mean, stderr: se, low: (mean - Z95 * se).max(0.0), high: (mean + Z95 * se).min(1.0) }
}

/// Wilson's score interval for a proportion `p` of `n` trials.
fn wilson(p: f64, n: f64) -> (f64, f64) {
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Macro average of several benchmarks' accuracies: their mean, with the standard error of
/// a mean of independent estimates.
pub fn macro_average(parts: &[Accuracy]) -> Accuracy {
    let k = parts.len() as f64;
    if parts.is_empty() {
        return accuracy(&[], 1);
    }
    let mean = parts.iter().map(|a| a.mean).sum::<f64>() / k;
    let se = parts.iter().map(|a| a.stderr * a.stderr).sum::<f64>().sqrt() / k;
    Accuracy { mean, stderr: se, low: (mean - Z95 * se).max(0.0), high: (mean + Z95 * se).min(1.0) }
}

/// Two models compared on the same items.
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    /// Shared items.
    pub items: usize,
    /// Mean of (new − baseline) per-item scores.
    pub delta: f64,
    /// Its standard error (from the per-item differences).
    pub stderr: f64,
    /// delta / stderr (0 when both are 0).
    pub z: f64,
    /// Items the new model gets right and the baseline wrong (binary scores), or where the
    /// new model's score is higher.
    pub wins: usize,
    /// The reverse.
    pub losses: usize,
    /// `mcnemar` (one sample per item: exact two-sided binomial test on the discordant
    /// items) or `paired-z` (several samples: normal approximation on the differences).
    pub test: &'static str,
    /// Two-sided p-value.
    pub p_value: f64,
}

/// Compares per-item scores of a new model against a baseline on the same items, in the
/// same order.
pub fn paired(new: &[f64], baseline: &[f64], samples: usize) -> Paired {
    let n = new.len().min(baseline.len());
    let diffs: Vec<f64> = new.iter().zip(baseline).map(|(a, b)| a - b).collect();
    let wins = diffs.iter().filter(|d| **d > 0.0).count();
    let losses = diffs.iter().filter(|d| **d < 0.0).count();
    if n == 0 {
        return Paired {
            items: 0,
            delta: f64::NAN,
            stderr: f64::NAN,
            z: f64::NAN,
            wins,
            losses,
            test: "none",
            p_value: f64::NAN,
        };
    }
    let delta = diffs.iter().sum::<f64>() / n as f64;
    let stderr = if n > 1 {
        let var = diffs.iter().map(|d| (d - delta).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    } else {
        0.0
    };
    let z = if stderr > 0.0 { delta / stderr } else { 0.0 };
    if samples <= 1 {
        Paired { items: n, delta, stderr, z, wins, losses, test: "mcnemar", p_value: mcnemar_exact(wins, losses) }
    } else {
        let p = if stderr > 0.0 {
            2.0 * (1.0 - normal_cdf(z.abs()))
        } else if delta == 0.0 {
            1.0
        } else {
            0.0
        };
        Paired { items: n, delta, stderr, z, wins, losses, test: "paired-z", p_value: p.clamp(0.0, 1.0) }
    }
}

/// Exact two-sided McNemar test: P(X ≤ min(b, c)) × 2 for X ~ Binomial(b + c, ½), capped at 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Sum of C(n, i) / 2^n for i ≤ k, in log space (n can be thousands).
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut total = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        total += (ln_choose + ln_half_n).exp();
    }
    (2.0 * total).min(1.0)
}

/// The standard normal CDF (Abramowitz–Stegun 7.1.26 on erf; error below 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs() / std::f64::consts::SQRT_2);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-(x * x) / 2.0).exp();
    if x >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_of_binary_scores() {
        let s: Vec<f64> = (0..100).map(|i| if i < 60 { 1.0 } else { 0.0 }).collect();
        let a = accuracy(&s, 1);
        assert!((a.mean - 0.6).abs() < 1e-12);
        assert!((a.stderr - (0.6f64 * 0.4 / 100.0).sqrt()).abs() < 1e-12);
        // Wilson's interval for 60/100 (published: 0.502–0.691).
        assert!((a.low - 0.5020).abs() < 1e-3 && (a.high - 0.6906).abs() < 1e-3, "{a:?}");
        let all = accuracy(&[1.0; 10], 1);
        assert!(all.high > 0.999_999, "{all:?}");
        assert!(all.low > 0.6 && all.low < 0.8, "{all:?}");
        assert!(accuracy(&[], 1).mean.is_nan());
    }

    #[test]
    fn mcnemar_matches_the_binomial() {
        // b = 0, c = 6: 2 * 0.5^6.
        assert!((mcnemar_exact(0, 6) - 2.0 / 64.0).abs() < 1e-12);
        // b = 3, c = 3: p = 1.
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        // b = 10, c = 25: the binomial sum gives 0.016674
        assert!((mcnemar_exact(10, 25) - 0.016_674).abs() < 1e-5, "{}", mcnemar_exact(10, 25));
        // Large counts stay finite.
        let p = mcnemar_exact(4_000, 4_300);
        assert!(p > 0.0 && p < 0.05, "{p}");
        assert_eq!(mcnemar_exact(0, 0), 1.0);
    }

    #[test]
    fn paired_comparison() {
        let base = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let new = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let p = paired(&new, &base, 1);
        assert_eq!((p.wins, p.losses, p.items, p.test), (5, 0, 8, "mcnemar"));
        assert!((p.delta - 5.0 / 8.0).abs() < 1e-12);
        assert!((p.p_value - 2.0 / 32.0).abs() < 1e-12);
        let q = paired(&[0.5, 0.75, 1.0], &[0.25, 0.5, 0.5], 4);
        assert_eq!(q.test, "paired-z");
        assert!(q.z > 0.0 && q.p_value < 0.5);
        assert!((normal_cdf(1.959_963_984_540_054) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.0) - 0.158_655_25).abs() < 1e-6);
    }

    #[test]
    fn macro_average_of_benchmarks() {
        let a = accuracy(&[1.0, 0.0], 1);
        let b = accuracy(&[1.0, 1.0, 1.0, 0.0], 1);
        let m = macro_average(&[a, b]);
        assert!((m.mean - 0.625).abs() < 1e-12);
        assert!((m.stderr - (a.stderr.powi(2) + b.stderr.powi(2)).sqrt() / 2.0).abs() < 1e-12);
    }
}
