//! Exact and near-duplicate detection over normalised text.
//!
//! Exact: BLAKE3 of the normalised stem, context and the sorted normalised option texts
//! (so reordered options are still duplicates). Near: MinHash signatures (`PERMS`
//! permutations over hashed word 3-shingles, character 3-shingles for text without
//! spaces such as Chinese) bucketed by LSH (`BANDS` bands of `PERMS / BANDS` rows); a
//! candidate pair is a duplicate when the signature agreement (the Jaccard estimate) is at
//! least the threshold. The first item (input order) of a group is kept.

use std::collections::HashMap;

use super::format::normalise;
use crate::questions::Question;

/// MinHash permutations.
pub const PERMS: usize = 64;
/// LSH bands (rows per band = PERMS / BANDS): with 16 × 4 a pair at Jaccard 0.8 is a
/// candidate with probability 0.9997, at 0.5 with 0.64.
pub const BANDS: usize = 16;
const ROWS: usize = PERMS / BANDS;
/// Most earlier items compared per bucket (bounds the work on huge buckets).
const BUCKET_CAP: usize = 16;

/// The normalised text an item is compared on.
pub fn normalised_text(q: &Question) -> String {
    let mut s =
        String::with_capacity(q.question.len() + 32 * q.options.len() + q.context.as_ref().map_or(0, |c| c.len()));
    normalise(&q.question, &mut s);
    if let Some(c) = &q.context {
        s.push_str(" \u{1}");
        normalise(c, &mut s);
    }
    let mut opts: Vec<String> = q
        .options
        .iter()
        .map(|c| {
            let mut t = String::with_capacity(c.text.len());
            normalise(&c.text, &mut t);
            t
        })
        .collect();
    opts.sort_unstable();
    for o in opts {
        s.push_str(" \u{2}");
        s.push_str(&o);
    }
    s
}

/// Exact-duplicate key.
pub fn exact_key(norm: &str) -> [u8; 16] {
    let h = blake3::hash(norm.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.as_bytes()[..16]);
    k
}

#[inline]
fn fx(h: u64, x: u64) -> u64 {
    (h.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

#[inline]
fn hash_str(s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for chunk in s.as_bytes().chunks(8) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        h = fx(h, u64::from_le_bytes(b));
    }
    fx(h, s.len() as u64)
}

#[inline]
fn mixer(x: u64) -> u64 {
    // splitmix64 finaliser.
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Per-permutation multipliers and offsets (fixed: signatures are comparable across runs).
fn perm_params() -> &'static [(u64, u64); PERMS] {
    static P: std::sync::LazyLock<[(u64, u64); PERMS]> = std::sync::LazyLock::new(|| {
        let mut p = [(0u64, 0u64); PERMS];
        for (i, x) in p.iter_mut().enumerate() {
            *x = (mixer(2 * i as u64 + 1) | 1, mixer(2 * i as u64 + 2));
        }
        p
    });
    &P
}

/// A MinHash signature (the high 32 bits of each permutation's minimum).
pub type Signature = [u32; PERMS];

/// The MinHash signature of normalised text.
pub fn signature(norm: &str) -> Signature {
    let mut shingles: Vec<u64> = Vec::with_capacity(norm.len() / 5 + 4);
    let words: Vec<&str> = norm.split(' ').filter(|w| !w.is_empty()).collect();
    let few_spaces = words.len() * 12 < norm.chars().count();
    if few_spaces {
        // Character 3-shingles (CJK and other unspaced scripts).
        let chars: Vec<char> = norm.chars().collect();
        for w in chars.windows(3) {
            let x = (w[0] as u64) << 42 ^ (w[1] as u64) << 21 ^ w[2] as u64;
            shingles.push(mixer(x));
        }
        if chars.len() < 3 {
            shingles.push(hash_str(norm));
        }
    } else {
        let hs: Vec<u64> = words.iter().map(|w| hash_str(w)).collect();
        for w in hs.windows(3) {
            shingles.push(fx(fx(w[0], w[1]), w[2]));
        }
        if hs.len() < 3 {
            shingles.push(hs.iter().fold(0, |h, &x| fx(h, x)));
        }
    }
    shingles.sort_unstable();
    shingles.dedup();
    let mut mins = [u64::MAX; PERMS];
    let params = perm_params();
    for &s in &shingles {
        for (m, (a, b)) in mins.iter_mut().zip(params.iter()) {
            let v = s.wrapping_mul(*a).wrapping_add(*b);
            if v < *m {
                *m = v;
            }
        }
    }
    let mut sig = [0u32; PERMS];
    for (o, m) in sig.iter_mut().zip(mins) {
        *o = (m >> 32) as u32;
    }
    sig
}

/// The estimated Jaccard similarity of two signatures.
pub fn similarity(a: &Signature, b: &Signature) -> f64 {
    a.iter().zip(b.iter()).filter(|(x, y)| x == y).count() as f64 / PERMS as f64
}

/// Hasher for keys that are already uniformly mixed hashes.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = fx(self.0, b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap = HashMap<u64, u32, std::hash::BuildHasherDefault<IdHasher>>;

/// LSH index over the signatures of kept items: per band, the newest item of each
/// bucket, and for each item the previous one of its bucket (a chain, newest first).
#[derive(Default)]
pub struct Lsh {
    heads: Vec<IdMap>,
    next: Vec<Vec<u32>>,
}

impl Lsh {
    /// An empty index.
    pub fn new() -> Self {
        Lsh { heads: (0..BANDS).map(|_| IdMap::default()).collect(), next: vec![Vec::new(); BANDS] }
    }

    fn band_key(sig: &Signature, band: usize) -> u64 {
        sig[band * ROWS..(band + 1) * ROWS].iter().fold(mixer(band as u64), |h, &x| fx(h, x as u64))
    }

    /// The most similar indexed item at or above `threshold`, if any (`sigs` holds the
    /// signatures of indexed items by their index).
    pub fn query(&self, sig: &Signature, sigs: &[Signature], threshold: f64) -> Option<(u32, f64)> {
        let mut best: Option<(u32, f64)> = None;
        for band in 0..BANDS {
            let mut j = self.heads[band].get(&Self::band_key(sig, band)).copied();
            let mut seen = 0;
            while let Some(k) = j {
                if seen >= BUCKET_CAP {
                    break;
                }
                seen += 1;
                let s = similarity(sig, &sigs[k as usize]);
                if s >= threshold && best.is_none_or(|(bj, bs)| s > bs || (s == bs && k < bj)) {
                    best = Some((k, s));
                }
                j = self.next[band].get(k as usize).copied().filter(|&n| n != u32::MAX);
            }
        }
        best
    }

    /// Indexes item `i` (items are indexed in order: 0, 1, 2, …).
    pub fn insert(&mut self, i: u32, sig: &Signature) {
        for band in 0..BANDS {
            let prev = self.heads[band].insert(Self::band_key(sig, band), i);
            let next = &mut self.next[band];
            if next.len() <= i as usize {
                next.resize(i as usize + 1, u32::MAX);
            }
            next[i as usize] = prev.unwrap_or(u32::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_duplicates_are_similar_and_others_not() {
        let a = "a 45 year old man presents with crushing chest pain radiating to the left arm and diaphoresis for two hours which of the following is the most likely diagnosis";
        let b = "a 47 year old man presents with crushing chest pain radiating to the left arm and diaphoresis for two hours which of the following is the most likely diagnosis";
        let c = "a 6 year old girl has a rash on her cheeks after a mild fever and joint pain which virus is the most likely cause of these findings in this child";
        let (sa, sb, sc) = (signature(a), signature(b), signature(c));
        assert!(similarity(&sa, &sb) > 0.7, "{}", similarity(&sa, &sb));
        assert!(similarity(&sa, &sc) < 0.2);
        let mut lsh = Lsh::new();
        let sigs = vec![sa];
        lsh.insert(0, &sa);
        assert_eq!(lsh.query(&sb, &sigs, 0.7).map(|x| x.0), Some(0));
        assert_eq!(lsh.query(&sc, &sigs, 0.7), None);
        // Unspaced text uses character shingles.
        let z1 = signature("上消化道出血可单纯表现为呕血或黑便也可两者兼有这取决于");
        let z2 = signature("上消化道出血可单纯表现为呕血或黑便也可两者兼有这主要取决于");
        assert!(similarity(&z1, &z2) > 0.6, "{}", similarity(&z1, &z2));
    }
}
