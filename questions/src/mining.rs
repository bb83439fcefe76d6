//! Adaptive hard mining (Fleming-R1 §3.3): after RL stage 1, the policy's repeated
//! failures — difficult items above all — become stage 2's training set, and the set is
//! re-mined as the policy improves. The pass rates come from rollouts scored by the strict
//! extractor; which items are hard, how much each weighs and how the set changed between
//! two minings is decided here, once, for the `mine-hard` operator and for stage 2's
//! re-mining in the torch worker alike.

use std::collections::{BTreeMap, HashSet};

/// One item's rollouts.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemRate {
    /// Rollouts scored.
    pub rollouts: u32,
    /// Rollouts whose answer was correct.
    pub correct: u32,
    /// The item's difficulty tier, if labelled.
    pub difficulty: Option<String>,
}

impl ItemRate {
    /// Share of correct rollouts (0 without rollouts).
    pub fn pass_rate(&self) -> f64 {
        if self.rollouts == 0 { 0.0 } else { self.correct as f64 / self.rollouts as f64 }
    }
}

/// Which items are hard and how much each weighs.
#[derive(Clone, Debug, PartialEq)]
pub struct HardRule {
    /// Items whose pass rate is at or below this are hard.
    pub max_pass_rate: f64,
    /// Sampling weight of a hard item by difficulty tier (tiers not listed weigh 1).
    pub tier_weights: BTreeMap<String, f64>,
}

impl HardRule {
    /// The weight of a hard item, or `None` when the item is not hard.
    pub fn weight(&self, r: &ItemRate) -> Option<f64> {
        if r.rollouts == 0 || r.pass_rate() > self.max_pass_rate {
            return None;
        }
        Some(r.difficulty.as_deref().and_then(|d| self.tier_weights.get(d)).copied().unwrap_or(1.0))
    }
}

/// How many items have each count of correct rollouts (index = correct), for items with
/// `rollouts` rollouts each.
pub fn histogram(rates: &[ItemRate], rollouts: u32) -> Vec<u64> {
    let mut h = vec![0u64; rollouts as usize + 1];
    for r in rates {
        if let Some(slot) = h.get_mut(r.correct.min(rollouts) as usize) {
            *slot += 1;
        }
    }
    h
}

/// How a hard set changed between two minings: items that entered and items that left.
pub fn churn(previous: &HashSet<String>, next: &HashSet<String>) -> (usize, usize) {
    (next.difference(previous).count(), previous.difference(next).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(correct: u32, tier: &str) -> ItemRate {
        ItemRate { rollouts: 4, correct, difficulty: Some(tier.to_string()) }
    }

    #[test]
    fn hard_items_are_at_or_below_the_threshold_and_difficult_ones_weigh_more() {
        let rule = HardRule { max_pass_rate: 0.25, tier_weights: [("difficult".to_string(), 2.0)].into() };
        assert_eq!(rule.weight(&rate(0, "difficult")), Some(2.0));
        assert_eq!(rule.weight(&rate(1, "moderate")), Some(1.0));
        assert_eq!(rule.weight(&rate(2, "difficult")), None);
        assert_eq!(rule.weight(&ItemRate { rollouts: 0, correct: 0, difficulty: None }), None, "unscored");
        let h = histogram(&[rate(0, "easy"), rate(0, "easy"), rate(4, "easy")], 4);
        assert_eq!(h, vec![2, 0, 0, 0, 1]);
        let a: HashSet<String> = ["x", "y"].iter().map(|s| s.to_string()).collect();
        let b: HashSet<String> = ["y", "z", "w"].iter().map(|s| s.to_string()).collect();
        assert_eq!(churn(&a, &b), (2, 1));
    }
}
