//! Model-based property test of `mmu_notifier::interval_tree::IntervalTree`.
//!
//! Random sequences of inserts (including of keys already present, which must be refused),
//! removals (including of entries not present), clears and overlap queries run against the
//! tree and against a naive model: a `Vec` of live entries. The expected answer to a query is
//! the model's overlapping entries sorted by `(start, key)`, the order the tree documents.
//! Structural invariants (fill, order, equal depths, cached first keys and maxima, count) are
//! validated after every operation.

use core::ops::ControlFlow;

use mmu_notifier::interval_tree::IntervalTree;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Insert `[min(a, b), max(a, b)]` under key `k`.
    Insert(u64, u64, u64),
    /// Insert with possibly inverted bounds (stored as given).
    InsertRaw(u64, u64, u64),
    /// Remove the live entry selected by the index (modulo the count).
    Remove(usize),
    /// Remove `(start, key)`, present or not.
    RemoveAny(u64, u64),
    /// Query `[min(a, b), max(a, b)]`.
    Query(u64, u64),
    /// Query `[a, u64::MAX]`.
    QueryToMax(u64),
    /// Query with possibly inverted bounds (inverted matches nothing).
    QueryRaw(u64, u64),
    /// Mutate the value of the selected live entry.
    Touch(usize),
    /// Remove everything.
    Clear,
}

/// Endpoints from a few regimes: a tiny key space (many duplicates and overlaps), the very
/// top of the `u64` range, and anything at all.
fn endpoint() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..16,
        2 => (u64::MAX - 8)..=u64::MAX,
        1 => any::<u64>(),
    ]
}

/// Keys from a small space, so that `(start, key)` collides now and then.
fn key() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..4, 1 => any::<u64>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        48 => (endpoint(), endpoint(), key()).prop_map(|(a, b, k)| Op::Insert(a, b, k)),
        4 => (endpoint(), endpoint(), key()).prop_map(|(a, b, k)| Op::InsertRaw(a, b, k)),
        24 => any::<usize>().prop_map(Op::Remove),
        6 => (endpoint(), key()).prop_map(|(s, k)| Op::RemoveAny(s, k)),
        24 => (endpoint(), endpoint()).prop_map(|(a, b)| Op::Query(a, b)),
        8 => endpoint().prop_map(Op::QueryToMax),
        4 => (endpoint(), endpoint()).prop_map(|(a, b)| Op::QueryRaw(a, b)),
        4 => any::<usize>().prop_map(Op::Touch),
        1 => Just(Op::Clear),
    ]
}

/// Live entries: (start, last, key, value).
type Model = Vec<(u64, u64, u64, u64)>;

fn expected(model: &Model, s: u64, l: u64) -> Model {
    if s > l {
        return Vec::new();
    }
    let mut hits: Model = model
        .iter()
        .copied()
        .filter(|&(ms, ml, _, _)| ms <= l && ml >= s)
        .collect();
    hits.sort_by_key(|h| (h.0, h.2));
    hits
}

fn check_query(
    tree: &IntervalTree<u64>,
    model: &Model,
    s: u64,
    l: u64,
) -> Result<(), TestCaseError> {
    let want = expected(model, s, l);
    let mut got = Vec::new();
    tree.for_each_overlap(s, l, |a, b, k, v| {
        got.push((a, b, k, *v));
        ControlFlow::Continue(())
    });
    prop_assert_eq!(&got, &want, "overlaps [{:#x}, {:#x}]", s, l);
    prop_assert_eq!(
        tree.first_overlap(s, l),
        want.first().map(|h| (h.0, h.1, h.2))
    );

    // Early exit after the second hit.
    let mut seen = Vec::new();
    tree.for_each_overlap(s, l, |a, _, k, _| {
        seen.push((a, k));
        if seen.len() == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let want_prefix: Vec<_> = want.iter().take(2).map(|h| (h.0, h.2)).collect();
    prop_assert_eq!(seen, want_prefix);
    Ok(())
}

fn insert(
    tree: &mut IntervalTree<u64>,
    model: &mut Model,
    (s, l, k): (u64, u64, u64),
    value: u64,
) -> Result<(), TestCaseError> {
    let present = model.iter().any(|m| (m.0, m.2) == (s, k));
    match tree.insert(s, l, k, value) {
        Ok(()) => {
            prop_assert!(!present, "({:#x}, {}) inserted twice", s, k);
            model.push((s, l, k, value));
        }
        Err(v) => {
            prop_assert!(present, "({:#x}, {}) refused but absent", s, k);
            prop_assert_eq!(v, value);
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut tree = IntervalTree::new();
    let mut model: Model = Vec::new();
    let mut next_value = 0u64;

    for op in ops {
        match op {
            Op::Insert(a, b, k) => {
                insert(&mut tree, &mut model, (a.min(b), a.max(b), k), next_value)?;
                next_value += 1;
            }
            Op::InsertRaw(s, l, k) => {
                insert(&mut tree, &mut model, (s, l, k), next_value)?;
                next_value += 1;
            }
            Op::Remove(i) => {
                if model.is_empty() {
                    continue;
                }
                let (s, l, k, v) = model.swap_remove(i % model.len());
                prop_assert_eq!(tree.last_of(s, k), Some(l));
                prop_assert_eq!(tree.remove(s, k), Some(v));
                prop_assert!(!tree.contains(s, k));
                prop_assert_eq!(tree.get(s, k), None);
            }
            Op::RemoveAny(s, k) => {
                let at = model.iter().position(|m| (m.0, m.2) == (s, k));
                let want = at.map(|i| model.swap_remove(i).3);
                prop_assert_eq!(tree.remove(s, k), want);
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
                let v = tree.get_mut(entry.0, entry.2);
                prop_assert!(v.is_some());
                if let Some(v) = v {
                    *v += 1_000_000;
                    entry.3 += 1_000_000;
                }
            }
            Op::Clear => {
                tree.clear();
                model.clear();
            }
        }
        if let Err(e) = tree.validate() {
            return Err(TestCaseError::fail(e));
        }
        prop_assert_eq!(tree.len(), model.len());
        prop_assert_eq!(tree.is_empty(), model.is_empty());
    }

    // Final full comparison, including iteration order and lookups.
    check_query(&tree, &model, 0, u64::MAX)?;
    for &(s, l, k, v) in &model {
        prop_assert_eq!(tree.get(s, k), Some(&v));
        prop_assert_eq!(tree.last_of(s, k), Some(l));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matches_naive_model(ops in proptest::collection::vec(op(), 1..400)) {
        run(ops)?;
    }
}

/// Deterministic larger run: enough entries for a tree four levels deep, splits and merges
/// at every level, with queries checked against the model along the way.
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
    // Grow to a few thousand entries, then churn, then shrink to nothing.
    for phase in [0u64, 1, 2] {
        for i in 0..6000 {
            let r = rnd();
            let a = rnd() % 4096;
            let b = a + rnd() % 64;
            let k = rnd() % 8;
            let insert_share = [9, 5, 1][phase as usize];
            ops.push(match r % 10 {
                n if n < insert_share => Op::Insert(a, b, k),
                _ if i % 7 == 0 => Op::QueryToMax(a),
                _ if i % 3 == 0 => Op::Query(a, b),
                _ => Op::Remove(rnd() as usize),
            });
        }
    }
    run(ops).unwrap();
}

/// Ordered runs: ascending and descending inserts split nodes off centre (the new slot past
/// the end or before the start of a full node), at every level of a four-level tree, with
/// queries, removals and further inserts into the gaps checked against the model.
#[test]
fn ordered_runs_match_model() {
    let n = 3000u64;
    let mut ops = Vec::new();
    // Ascending from the middle up, descending from the middle down: both ends grow.
    for i in 0..n {
        ops.push(Op::Insert(4 * (n + i), 4 * (n + i) + 2, i % 3));
        ops.push(Op::Insert(4 * (n - 1 - i), 4 * (n - 1 - i) + 5, i % 3));
        if i % 97 == 0 {
            ops.push(Op::Query(4 * i, 4 * i + 8));
            ops.push(Op::QueryToMax(4 * (2 * n - i)));
        }
    }
    // Fill gaps (inserts in the middle of nodes), then remove a stride.
    for i in (0..2 * n).step_by(5) {
        ops.push(Op::Insert(4 * i + 1, 4 * i + 1, 7));
    }
    for i in 0..n as usize {
        ops.push(Op::Remove(i * 7919));
        if i % 101 == 0 {
            ops.push(Op::Query(4 * i as u64, 4 * i as u64 + 64));
        }
    }
    run(ops).unwrap();
}
