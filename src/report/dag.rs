//! The pipeline's graph as an SVG drawing: stages in layers left to right (a stage sits one
//! layer right of its furthest upstream stage), ordered within a layer by the mean position
//! of their neighbours (a few sweeps of the barycenter heuristic, which keeps most edges
//! short and uncrossed), each box coloured by its status.

use std::fmt::Write;

use super::html::{clip, escape};
use super::{StageView, Status};

const NODE_W: f64 = 170.0;
const NODE_H: f64 = 40.0;
const GAP_X: f64 = 60.0;
const GAP_Y: f64 = 16.0;
const MARGIN: f64 = 8.0;

/// A place in the drawing: `(layer, row)`.
pub type Slot = (usize, usize);

/// One edge and the way it takes.
#[derive(Clone, Debug)]
pub struct Route {
    /// The upstream stage.
    pub from: usize,
    /// The downstream stage.
    pub to: usize,
    /// The slots it passes through in the layers between its ends, one per layer: long
    /// edges run in their own slots, never behind a box.
    pub via: Vec<Slot>,
}

/// Where the boxes and edges go.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The slot of each stage, in the order given.
    pub at: Vec<Slot>,
    /// Every edge.
    pub edges: Vec<Route>,
}

/// Lays the graph out: `upstream[i]` are the stages stage `i` reads from.
pub fn layout(upstream: &[Vec<usize>]) -> Layout {
    let n = upstream.len();
    let ups = |i: usize| upstream[i].iter().copied().filter(move |&u| u < n && u != i);
    let mut layer = vec![0usize; n];
    // Stages come in topological order from the pipeline; iterate to a fixed point anyway
    // so any order gives the longest-path layering (bounded, in case of a cycle).
    let mut changed = true;
    let mut rounds = 0;
    while changed && rounds <= n {
        changed = false;
        rounds += 1;
        for i in 0..n {
            let want = ups(i).map(|u| layer[u] + 1).max().unwrap_or(0);
            if want > layer[i] {
                layer[i] = want;
                changed = true;
            }
        }
    }
    // An edge over several layers gets a virtual node in each layer between, so the
    // ordering below places it like a box and its line keeps to its own slot.
    let mut node_layer = layer.clone();
    let mut node_up: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut chains = Vec::new();
    for v in 0..n {
        for u in ups(v) {
            let mut prev = u;
            let mut via = Vec::new();
            for l in layer[u] + 1..layer[v] {
                let d = node_up.len();
                node_up.push(vec![prev]);
                node_layer.push(l);
                via.push(d);
                prev = d;
            }
            node_up[v].push(prev);
            chains.push((u, v, via));
        }
    }
    let total = node_up.len();
    let layers = node_layer.iter().copied().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (i, &l) in node_layer.iter().enumerate() {
        rows[l].push(i);
    }
    let mut node_down = vec![Vec::new(); total];
    for (i, us) in node_up.iter().enumerate() {
        for &u in us {
            node_down[u].push(i);
        }
    }
    let mut pos = vec![0.0f64; total];
    for r in &rows {
        for (k, &i) in r.iter().enumerate() {
            pos[i] = k as f64;
        }
    }
    for sweep in 0..4 {
        let down = sweep % 2 == 0;
        let order: Vec<usize> =
            if down { (1..layers).collect() } else { (0..layers.saturating_sub(1)).rev().collect() };
        for l in order {
            let neighbours = |i: usize| if down { &node_up[i] } else { &node_down[i] };
            let mut keyed: Vec<(f64, usize)> = rows[l]
                .iter()
                .map(|&i| {
                    let ns = neighbours(i);
                    let key =
                        if ns.is_empty() { pos[i] } else { ns.iter().map(|&j| pos[j]).sum::<f64>() / ns.len() as f64 };
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
    let mut slot = vec![(0, 0); total];
    for (l, r) in rows.iter().enumerate() {
        for (k, &i) in r.iter().enumerate() {
            slot[i] = (l, k);
        }
    }
    Layout {
        at: slot[..n].to_vec(),
        edges: chains
            .into_iter()
            .map(|(from, to, via)| Route { from, to, via: via.into_iter().map(|d| slot[d]).collect() })
            .collect(),
    }
}

/// The fill colour of a status (the legend uses the same).
pub fn colour(status: Status) -> &'static str {
    match status {
        Status::Cached => "#cfeccf",
        Status::Stale => "#ffe1a8",
        Status::Blocked => "#e0e0e0",
        Status::CheckFailed | Status::Failed => "#f5b7b1",
        Status::NeverRan => "#ffffff",
        Status::Running => "#a9d1f5",
    }
}

/// The DAG as an inline `<svg>`: one `<g class="stage">` per stage, with its status in
/// `data-status`, linked to the address `link` gives for its name.
pub fn svg(stages: &[StageView], link: &dyn Fn(&str) -> String) -> String {
    let upstream: Vec<Vec<usize>> = stages.iter().map(|s| s.upstream.clone()).collect();
    let plan = layout(&upstream);
    let layers = plan.at.iter().chain(plan.edges.iter().flat_map(|e| e.via.iter())).map(|a| a.0 + 1).max().unwrap_or(1);
    let rows = plan.at.iter().chain(plan.edges.iter().flat_map(|e| e.via.iter())).map(|a| a.1 + 1).max().unwrap_or(1);
    let width = MARGIN * 2.0 + layers as f64 * (NODE_W + GAP_X) - GAP_X;
    let height = MARGIN * 2.0 + rows as f64 * (NODE_H + GAP_Y) - GAP_Y;
    let corner = |(l, r): (usize, usize)| (MARGIN + l as f64 * (NODE_W + GAP_X), MARGIN + r as f64 * (NODE_H + GAP_Y));
    let xy = |i: usize| corner(plan.at[i]);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="dag" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="pipeline graph">"#
    );
    for Route { from, to, via } in &plan.edges {
        let (x1, y1) = xy(*from);
        let (x2, y2) = xy(*to);
        let mut d = format!("M{:.1},{:.1}", x1 + NODE_W, y1 + NODE_H / 2.0);
        let mut at = (x1 + NODE_W, y1 + NODE_H / 2.0);
        let curve_to = |d: &mut String, from: (f64, f64), to: (f64, f64)| {
            let mid = (from.0 + to.0) / 2.0;
            let _ = write!(d, " C{mid:.1},{:.1} {mid:.1},{:.1} {:.1},{:.1}", from.1, to.1, to.0, to.1);
        };
        for &slot in via {
            let (x, y) = corner(slot);
            let enter = (x, y + NODE_H / 2.0);
            curve_to(&mut d, at, enter);
            let _ = write!(d, " L{:.1},{:.1}", x + NODE_W, enter.1);
            at = (x + NODE_W, enter.1);
        }
        curve_to(&mut d, at, (x2, y2 + NODE_H / 2.0));
        let _ = write!(s, r##"<path class="edge" d="{d}" fill="none" stroke="#888"/>"##);
    }
    for (i, st) in stages.iter().enumerate() {
        let (x, y) = xy(i);
        let name = escape(&clip(&st.name, 22));
        let op = escape(&clip(&st.op, 24));
        let _ = write!(
            s,
            r##"<a href="{href}"><g class="stage" data-stage="{full}" data-status="{status}"><title>{full}: {status}{why}</title><rect x="{x:.1}" y="{y:.1}" width="{NODE_W}" height="{NODE_H}" rx="5" fill="{fill}" stroke="#555"/><text x="{tx:.1}" y="{ty1:.1}">{name}</text><text class="op" x="{tx:.1}" y="{ty2:.1}">[{op}]</text></g></a>"##,
            href = link(&st.name),
            full = escape(&st.name),
            status = st.status.label(),
            why = match (&st.progress, st.reason.is_empty()) {
                (Some(p), _) => format!(" — {}", escape(p)),
                (None, true) => String::new(),
                (None, false) => format!(" — {}", escape(&st.reason)),
            },
            fill = colour(st.status),
            tx = x + 8.0,
            ty1 = y + 17.0,
            ty2 = y + 33.0,
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_follow_the_longest_path_and_rows_are_distinct() {
        // 0 → 1 → 3, 0 → 2 → 3, 0 → 3
        let up = vec![vec![], vec![0], vec![0], vec![0, 1, 2]];
        let plan = layout(&up);
        let at = &plan.at;
        assert_eq!(at.iter().map(|a| a.0).collect::<Vec<_>>(), vec![0, 1, 1, 2]);
        assert_ne!(at[1], at[2]);
        // 0 → 3 spans two layers: it passes through a slot of layer 1 that no box holds.
        let long = plan.edges.iter().find(|e| e.from == 0 && e.to == 3).expect("edge 0 → 3");
        assert_eq!(long.via.len(), 1);
        assert_eq!(long.via[0].0, 1);
        assert!(!at.contains(&long.via[0]), "{plan:?}");
        assert!(plan.edges.iter().filter(|e| e.from != 0 || e.to != 3).all(|e| e.via.is_empty()));
    }

    #[test]
    fn barycenter_ordering_uncrosses_two_chains() {
        // Two chains a0 → a1 and b0 → b1 given crossed: a1 listed after b1.
        let up = vec![vec![], vec![], vec![1], vec![0]];
        let at = layout(&up).at;
        assert_eq!(at[0].1 < at[1].1, at[3].1 < at[2].1, "{at:?}");
    }
}
