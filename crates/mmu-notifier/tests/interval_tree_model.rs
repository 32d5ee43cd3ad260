//! Model-based property test of `mmu_notifier::interval_tree::IntervalTree`.
//!
//! Random sequences of inserts, removals (including of stale ids), clears and
//! overlap queries run against the tree and against a naive model: a `Vec` of
//! live intervals kept in insertion order. The expected answer to a query is
//! the model's overlapping intervals, stably sorted by `start`, i.e. ordered
//! by `start` with ties in insertion order, which is the order the tree
//! documents. Structural invariants are validated after every operation.

use core::ops::ControlFlow;

use mmu_notifier::interval_tree::{IntervalTree, NodeId};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Insert `[min(a, b), max(a, b)]`.
    Insert(u64, u64),
    /// `try_insert` with possibly inverted bounds.
    TryInsert(u64, u64),
    /// Remove the live interval selected by the index (modulo the count).
    Remove(usize),
    /// Remove an id that was already removed (must be rejected).
    RemoveStale(usize),
    /// Query `[min(a, b), max(a, b)]`.
    Query(u64, u64),
    /// Query `[a, u64::MAX]`.
    QueryToMax(u64),
    /// Query with possibly inverted bounds (inverted matches nothing).
    QueryRaw(u64, u64),
    /// Mutate the value of the selected live interval.
    Touch(usize),
    /// Remove everything.
    Clear,
}

/// Endpoints from a few regimes: a tiny key space (many duplicates and
/// overlaps), the very top of the `u64` range, and anything at all.
fn endpoint() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..16,
        2 => (u64::MAX - 8)..=u64::MAX,
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        48 => (endpoint(), endpoint()).prop_map(|(a, b)| Op::Insert(a, b)),
        8 => (endpoint(), endpoint()).prop_map(|(a, b)| Op::TryInsert(a, b)),
        24 => any::<usize>().prop_map(Op::Remove),
        4 => any::<usize>().prop_map(Op::RemoveStale),
        24 => (endpoint(), endpoint()).prop_map(|(a, b)| Op::Query(a, b)),
        8 => endpoint().prop_map(Op::QueryToMax),
        4 => (endpoint(), endpoint()).prop_map(|(a, b)| Op::QueryRaw(a, b)),
        4 => any::<usize>().prop_map(Op::Touch),
        1 => Just(Op::Clear),
    ]
}

/// Live entries in insertion order: (id, start, last, value).
type Model = Vec<(NodeId, u64, u64, u64)>;

fn expected(model: &Model, s: u64, l: u64) -> Vec<(NodeId, u64, u64, u64)> {
    if s > l {
        return Vec::new();
    }
    let mut hits: Vec<_> = model
        .iter()
        .copied()
        .filter(|&(_, ms, ml, _)| ms <= l && ml >= s)
        .collect();
    // Stable: equal starts stay in insertion order.
    hits.sort_by_key(|h| h.1);
    hits
}

fn check_query(
    tree: &IntervalTree<u64>,
    model: &Model,
    s: u64,
    l: u64,
) -> Result<(), TestCaseError> {
    let want = expected(model, s, l);
    let got: Vec<_> = tree
        .overlaps(s, l)
        .map(|(id, a, b, v)| (id, a, b, *v))
        .collect();
    prop_assert_eq!(&got, &want, "overlaps [{:#x}, {:#x}]", s, l);

    let mut cb = Vec::new();
    tree.for_each_overlap(s, l, |id, a, b, v| {
        cb.push((id, a, b, *v));
        ControlFlow::Continue(())
    });
    prop_assert_eq!(&cb, &want, "for_each_overlap [{:#x}, {:#x}]", s, l);

    prop_assert_eq!(tree.first_overlap(s, l), want.first().map(|h| h.0));

    // Early exit after the second hit.
    let mut seen = Vec::new();
    tree.for_each_overlap(s, l, |id, _, _, _| {
        seen.push(id);
        if seen.len() == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let want_prefix: Vec<_> = want.iter().take(2).map(|h| h.0).collect();
    prop_assert_eq!(seen, want_prefix);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut tree = IntervalTree::new();
    let mut model: Model = Vec::new();
    let mut dead: Vec<NodeId> = Vec::new();
    let mut next_value = 0u64;

    for op in ops {
        match op {
            Op::Insert(a, b) => {
                let (s, l) = (a.min(b), a.max(b));
                let id = tree.insert(s, l, next_value);
                prop_assert!(!model.iter().any(|m| m.0 == id), "id reused while live");
                prop_assert!(!dead.contains(&id), "stale id handed out again");
                model.push((id, s, l, next_value));
                next_value += 1;
            }
            Op::TryInsert(s, l) => match tree.try_insert(s, l, next_value) {
                Some(id) => {
                    prop_assert!(s <= l);
                    prop_assert!(!dead.contains(&id), "stale id handed out again");
                    model.push((id, s, l, next_value));
                    next_value += 1;
                }
                None => prop_assert!(s > l),
            },
            Op::Remove(i) => {
                if model.is_empty() {
                    continue;
                }
                let (id, s, l, v) = model.remove(i % model.len());
                prop_assert_eq!(tree.interval(id), Some((s, l)));
                prop_assert_eq!(tree.remove(id), Some(v));
                prop_assert!(!tree.contains(id));
                dead.push(id);
            }
            Op::RemoveStale(i) => {
                if dead.is_empty() {
                    continue;
                }
                let id = dead[i % dead.len()];
                prop_assert_eq!(tree.remove(id), None);
                prop_assert_eq!(tree.get(id), None);
                prop_assert_eq!(tree.interval(id), None);
            }
            Op::Query(a, b) => check_query(&tree, &model, a.min(b), a.max(b))?,
            Op::QueryToMax(a) => check_query(&tree, &model, a, u64::MAX)?,
            Op::QueryRaw(a, b) => check_query(&tree, &model, a, b)?,
            Op::Touch(i) => {
                if model.is_empty() {
                    continue;
                }
                let i = i % model.len();
                let entry = &mut model[i];
                let v = tree.get_mut(entry.0);
                prop_assert!(v.is_some());
                if let Some(v) = v {
                    *v += 1_000_000;
                    entry.3 += 1_000_000;
                }
            }
            Op::Clear => {
                tree.clear();
                dead.extend(model.drain(..).map(|m| m.0));
            }
        }
        if let Err(e) = tree.validate() {
            return Err(TestCaseError::fail(e));
        }
        prop_assert_eq!(tree.len(), model.len());
        prop_assert_eq!(tree.is_empty(), model.is_empty());
    }

    // Final full comparison, including iteration order and lookups.
    let all: Vec<_> = tree.iter().map(|(id, s, l, v)| (id, s, l, *v)).collect();
    prop_assert_eq!(all, expected(&model, 0, u64::MAX));
    for &(id, s, l, v) in &model {
        prop_assert_eq!(tree.get(id), Some(&v));
        prop_assert_eq!(tree.interval(id), Some((s, l)));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matches_naive_model(ops in proptest::collection::vec(op(), 1..200)) {
        run(ops)?;
    }
}

/// Deterministic larger run: enough nodes to exercise deep rebalancing, with
/// queries checked against the model at intervals.
#[test]
fn large_churn_matches_model() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ops = Vec::new();
    for i in 0..6000 {
        let r = rnd();
        let a = rnd() % 4096;
        let b = a + rnd() % 64;
        ops.push(match r % 10 {
            0..=4 => Op::Insert(a, b),
            5..=7 => Op::Remove(rnd() as usize),
            _ if i % 7 == 0 => Op::QueryToMax(a),
            _ => Op::Query(a, b),
        });
    }
    run(ops).unwrap();
}
