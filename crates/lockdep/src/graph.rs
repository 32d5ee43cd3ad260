//! The dependency graph and its cycle search.
//!
//! An edge `A -> B` says "B was acquired while A was held". A cycle of such edges is a
//! possible deadlock: every thread in it could be holding one lock and waiting for the next.
//!
//! # Read locks: dependency kinds and strong paths
//!
//! Not every cycle can deadlock once readers are involved. Each edge carries the set of
//! *kinds* it was recorded with, named by how the two ends were held (kernel ≥ 5.10):
//! the first letter is the held lock, `E` exclusive or `S` shared; the second the acquired
//! one, `R` recursive read or `N` anything else. A recursive reader never waits for a
//! waiting writer, so a lock entered through a `*R` edge cannot block anyone who then holds
//! it shared: a path that goes `-(*R)-> L -(S*)->` does not chain waits through `L`. A path
//! without that adjacency is *strong*, and a deadlock is a closed strong path
//! (`Documentation/locking/lockdep-design.rst`, "Recursive read locks", and
//! `check_path`/`__bfs` in `kernel/locking/lockdep.c`). So `X -(ER)-> Y -(ER)-> Z -(ER)-> X` is a
//! deadlock, and `X -(EN)-> Y -(SR)-> Z -(SN)-> X` is not.
//!
//! The search is a breadth-first search over states `(class, entered through an R edge?)`:
//! from a state entered through `R`, only `E*` kinds may be followed.

use std::collections::VecDeque;
use std::panic::Location;
use std::sync::Arc;

use crate::class::ClassInfo;
use crate::Read;

/// `E -> N`: held exclusive, acquired non-recursive.
pub(crate) const DEP_EN: u8 = 1;
/// `S -> N`.
pub(crate) const DEP_SN: u8 = 2;
/// `E -> R`.
pub(crate) const DEP_ER: u8 = 4;
/// `S -> R`.
pub(crate) const DEP_SR: u8 = 8;
const DEP_E_ANY: u8 = DEP_EN | DEP_ER;
const DEP_N_ANY: u8 = DEP_EN | DEP_SN;

/// The kind bit of an edge from a lock held as `prev` to one acquired as `next`.
pub(crate) fn dep_bit(prev: Read, next: Read) -> u8 {
    match (prev == Read::Exclusive, next == Read::Recursive) {
        (true, false) => DEP_EN,
        (false, false) => DEP_SN,
        (true, true) => DEP_ER,
        (false, true) => DEP_SR,
    }
}

/// The kinds as text: `"EN"`, `"EN|SR"`.
pub(crate) fn dep_names(kinds: u8) -> String {
    [
        (DEP_EN, "EN"),
        (DEP_SN, "SN"),
        (DEP_ER, "ER"),
        (DEP_SR, "SR"),
    ]
    .iter()
    .filter(|(b, _)| kinds & b != 0)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join("|")
}

/// Where and by whom an edge was first recorded.
pub(crate) struct EdgeOrigin {
    /// Where the held lock had been acquired.
    pub(crate) from_loc: &'static Location<'static>,
    /// Where the new lock was being acquired.
    pub(crate) to_loc: &'static Location<'static>,
    pub(crate) thread: Arc<str>,
}

pub(crate) struct Edge {
    pub(crate) to: u32,
    pub(crate) kinds: u8,
    pub(crate) origin: EdgeOrigin,
}

#[derive(Default)]
pub(crate) struct Node {
    pub(crate) class: Option<&'static ClassInfo>,
    pub(crate) after: Vec<Edge>,
}

/// The graph, guarded by its validator context's graph lock.
#[derive(Default)]
pub(crate) struct Graph {
    pub(crate) nodes: Vec<Node>,
}

/// One step of a path found by [`Graph::find_strong_path`]: the edge `from -> to`.
pub(crate) struct Step {
    pub(crate) from: u32,
    pub(crate) edge: usize,
}

impl Graph {
    pub(crate) fn node_mut(&mut self, class: &'static ClassInfo) -> &mut Node {
        let id = class.id as usize;
        if self.nodes.len() <= id {
            self.nodes.resize_with(id + 1, Node::default);
        }
        let n = &mut self.nodes[id];
        n.class.get_or_insert(class);
        n
    }

    pub(crate) fn edge(&self, from: u32, to: u32) -> Option<&Edge> {
        self.nodes
            .get(from as usize)?
            .after
            .iter()
            .find(|e| e.to == to)
    }

    pub(crate) fn edge_at(&self, step: &Step) -> &Edge {
        &self.nodes[step.from as usize].after[step.edge]
    }

    pub(crate) fn class(&self, id: u32) -> Option<&'static ClassInfo> {
        self.nodes.get(id as usize).and_then(|n| n.class)
    }

    /// Records `from -> to` with kind `bit`.
    pub(crate) fn add_edge(
        &mut self,
        from: &'static ClassInfo,
        to: &'static ClassInfo,
        bit: u8,
        origin: impl FnOnce() -> EdgeOrigin,
    ) {
        self.node_mut(to);
        let n = self.node_mut(from);
        if let Some(e) = n.after.iter_mut().find(|e| e.to == to.id) {
            e.kinds |= bit;
        } else {
            n.after.push(Edge {
                to: to.id,
                kinds: bit,
                origin: origin(),
            });
        }
    }

    /// A strong path from `start` to `target`, if one exists, as the list of edges.
    ///
    /// `start_via_r`: `start` is being acquired as a recursive reader (the closing edge
    /// enters it through `R`). `target_exclusive`: `target` is held exclusively (the closing
    /// edge leaves it through `E`); otherwise arriving at `target` through an `R` edge does
    /// not close a strong cycle.
    pub(crate) fn find_strong_path(
        &self,
        start: u32,
        start_via_r: bool,
        target: u32,
        target_exclusive: bool,
    ) -> Option<Vec<Step>> {
        let n = self.nodes.len();
        if start as usize >= n {
            return None;
        }
        // State index: node * 2 + (entered through R).
        let mut parent: Vec<Option<(usize, usize)>> = vec![None; n * 2];
        let mut seen = vec![false; n * 2];
        let st = |node: u32, r: bool| node as usize * 2 + usize::from(r);
        let mut queue = VecDeque::new();
        seen[st(start, start_via_r)] = true;
        queue.push_back((start, start_via_r));
        while let Some((u, ur)) = queue.pop_front() {
            if u == target && (target_exclusive || !ur) {
                let mut path = Vec::new();
                let mut s = st(u, ur);
                while let Some((prev_state, edge)) = parent[s] {
                    path.push(Step {
                        from: (prev_state / 2) as u32,
                        edge,
                    });
                    s = prev_state;
                }
                path.reverse();
                return Some(path);
            }
            for (i, e) in self.nodes[u as usize].after.iter().enumerate() {
                let allowed = if ur { e.kinds & DEP_E_ANY } else { e.kinds };
                if allowed == 0 {
                    continue;
                }
                let vr = allowed & DEP_N_ANY == 0;
                let (sn, sv) = (st(e.to, false), st(e.to, vr));
                // Entered through N dominates entered through R: it may leave by any kind.
                if seen[sn] || seen[sv] {
                    continue;
                }
                seen[sv] = true;
                parent[sv] = Some((st(u, ur), i));
                queue.push_back((e.to, vr));
            }
        }
        None
    }

    /// Removes every edge from or to the given classes (a dynamic key was dropped).
    pub(crate) fn forget(&mut self, ids: &[u32]) {
        for &id in ids {
            if let Some(n) = self.nodes.get_mut(id as usize) {
                n.after.clear();
                n.class = None;
            }
        }
        for n in &mut self.nodes {
            n.after.retain(|e| !ids.contains(&e.to));
        }
    }
}
