//! The pipeline's graph as an SVG drawing: stages in layers left to right (a stage sits one
//! layer right of its furthest upstream stage), ordered within a layer by the mean position
//! of their neighbours (a few sweeps of the barycenter heuristic, which keeps most edges
//! short and uncrossed), each box coloured by its status.

use std::fmt::Write;

use super::html::escape;
use super::{StageView, Status};

const NODE_W: f64 = 170.0;
const NODE_H: f64 = 40.0;
const GAP_X: f64 = 60.0;
const GAP_Y: f64 = 16.0;
const MARGIN: f64 = 8.0;

/// Where each stage's box goes: `(layer, row)` per stage, in the order given.
pub fn layout(upstream: &[Vec<usize>]) -> Vec<(usize, usize)> {
    let n = upstream.len();
    let mut layer = vec![0usize; n];
    // Stages come in topological order from the pipeline; iterate to a fixed point anyway
    // so any order gives the longest-path layering.
    let mut changed = true;
    let mut rounds = 0;
    while changed && rounds <= n {
        changed = false;
        rounds += 1;
        for i in 0..n {
            let want = upstream[i].iter().filter(|&&u| u < n).map(|&u| layer[u] + 1).max().unwrap_or(0);
            if want > layer[i] {
                layer[i] = want;
                changed = true;
            }
        }
    }
    let layers = layer.iter().copied().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (i, &l) in layer.iter().enumerate() {
        rows[l].push(i);
    }
    let mut downstream = vec![Vec::new(); n];
    for (i, ups) in upstream.iter().enumerate() {
        for &u in ups.iter().filter(|&&u| u < n) {
            downstream[u].push(i);
        }
    }
    let mut pos = vec![0.0f64; n];
    let set_pos = |rows: &Vec<Vec<usize>>, pos: &mut Vec<f64>| {
        for r in rows {
            for (k, &i) in r.iter().enumerate() {
                pos[i] = k as f64;
            }
        }
    };
    set_pos(&rows, &mut pos);
    for sweep in 0..4 {
        let down = sweep % 2 == 0;
        let order: Vec<usize> =
            if down { (1..layers).collect() } else { (0..layers.saturating_sub(1)).rev().collect() };
        for l in order {
            let neighbours = |i: usize| if down { &upstream[i] } else { &downstream[i] };
            let mut keyed: Vec<(f64, usize)> = rows[l]
                .iter()
                .map(|&i| {
                    let ns: Vec<f64> = neighbours(i).iter().filter(|&&j| j < n).map(|&j| pos[j]).collect();
                    let key = if ns.is_empty() { pos[i] } else { ns.iter().sum::<f64>() / ns.len() as f64 };
                    (key, i)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            rows[l] = keyed.into_iter().map(|(_, i)| i).collect();
            for (k, &i) in rows[l].iter().enumerate() {
                pos[i] = k as f64;
            }
        }
    }
    let mut out = vec![(0, 0); n];
    for (l, r) in rows.iter().enumerate() {
        for (k, &i) in r.iter().enumerate() {
            out[i] = (l, k);
        }
    }
    out
}

/// The fill colour of a status (the legend uses the same).
pub fn colour(status: Status) -> &'static str {
    match status {
        Status::Cached => "#cfeccf",
        Status::Stale => "#ffe1a8",
        Status::Blocked => "#e0e0e0",
        Status::CheckFailed | Status::Failed => "#f5b7b1",
        Status::NeverRan => "#ffffff",
    }
}

/// The DAG as an inline `<svg>`: one `<g class="stage">` per stage, with its status in
/// `data-status` and a link to its row of the stage table.
pub fn svg(stages: &[StageView]) -> String {
    let upstream: Vec<Vec<usize>> = stages.iter().map(|s| s.upstream.clone()).collect();
    let at = layout(&upstream);
    let layers = at.iter().map(|a| a.0 + 1).max().unwrap_or(1);
    let rows = at.iter().map(|a| a.1 + 1).max().unwrap_or(1);
    let width = MARGIN * 2.0 + layers as f64 * (NODE_W + GAP_X) - GAP_X;
    let height = MARGIN * 2.0 + rows as f64 * (NODE_H + GAP_Y) - GAP_Y;
    let xy = |i: usize| {
        let (l, r) = at[i];
        (MARGIN + l as f64 * (NODE_W + GAP_X), MARGIN + r as f64 * (NODE_H + GAP_Y))
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="dag" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="pipeline graph">"#
    );
    for (i, st) in stages.iter().enumerate() {
        let (x2, y2) = xy(i);
        for &u in st.upstream.iter().filter(|&&u| u < stages.len()) {
            let (x1, y1) = xy(u);
            let (ax, ay) = (x1 + NODE_W, y1 + NODE_H / 2.0);
            let (bx, by) = (x2, y2 + NODE_H / 2.0);
            let mid = (ax + bx) / 2.0;
            let _ = write!(
                s,
                r##"<path class="edge" d="M{ax:.1},{ay:.1} C{mid:.1},{ay:.1} {mid:.1},{by:.1} {bx:.1},{by:.1}" fill="none" stroke="#888"/>"##
            );
        }
    }
    for (i, st) in stages.iter().enumerate() {
        let (x, y) = xy(i);
        let name = escape(&clip(&st.name, 22));
        let op = escape(&clip(&st.op, 24));
        let _ = write!(
            s,
            r##"<a href="#stage-{id}"><g class="stage" data-stage="{full}" data-status="{status}"><title>{full}: {status}{why}</title><rect x="{x:.1}" y="{y:.1}" width="{NODE_W}" height="{NODE_H}" rx="5" fill="{fill}" stroke="#555"/><text x="{tx:.1}" y="{ty1:.1}">{name}</text><text class="op" x="{tx:.1}" y="{ty2:.1}">[{op}]</text></g></a>"##,
            id = escape(&st.name),
            full = escape(&st.name),
            status = st.status.label(),
            why = if st.reason.is_empty() { String::new() } else { format!(" — {}", escape(&st.reason)) },
            fill = colour(st.status),
            tx = x + 8.0,
            ty1 = y + 17.0,
            ty2 = y + 33.0,
        );
    }
    s.push_str("</svg>");
    s
}

/// At most `n` characters, with an ellipsis when cut (never splits a character).
fn clip(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        return text.to_string();
    }
    let mut out: String = text.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_follow_the_longest_path_and_rows_are_distinct() {
        // 0 → 1 → 3, 0 → 2 → 3, 0 → 3
        let up = vec![vec![], vec![0], vec![0], vec![0, 1, 2]];
        let at = layout(&up);
        assert_eq!(at.iter().map(|a| a.0).collect::<Vec<_>>(), vec![0, 1, 1, 2]);
        assert_ne!(at[1], at[2]);
    }

    #[test]
    fn barycenter_ordering_uncrosses_two_chains() {
        // Two chains a0 → a1 and b0 → b1 given crossed: a1 listed after b1.
        let up = vec![vec![], vec![], vec![1], vec![0]];
        let at = layout(&up);
        assert_eq!(at[0].1 < at[1].1, at[3].1 < at[2].1, "{at:?}");
    }

    #[test]
    fn clip_counts_characters_not_bytes() {
        assert_eq!(clip("ééééé", 3), "éé…");
        assert_eq!(clip("abc", 3), "abc");
    }
}
