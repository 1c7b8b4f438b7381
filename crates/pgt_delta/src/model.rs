//! An in-memory model of the delta rules over Z-sets (maps from rows to integer
//! weights). The SQL in the other modules implements these same rules; the
//! property tests here check the identities themselves on random data:
//!
//! - scan: `old = new − Δ`;
//! - join (telescoping): `Σᵢ B(new<ᵢ, Δᵢ, old>ᵢ) = B(new…) − B(old…)` for a
//!   three-way inner join with arbitrary changes to every input;
//! - aggregate: the algebraic updates of COUNT / SUM / AVG and the merge of MIN
//!   with its rescan condition agree with recomputation (so HAVING, evaluated on
//!   the new state, crosses correctly in both directions).

use std::collections::BTreeMap;

/// A Z-set: row → weight (rows with weight 0 are absent).
pub type ZSet<R> = BTreeMap<R, i64>;

/// Adds `w` copies of `row` to `z`, dropping it at weight 0.
pub fn add<R: Ord + Clone>(z: &mut ZSet<R>, row: R, w: i64) {
    let e = z.entry(row.clone()).or_insert(0);
    *e += w;
    if *e == 0 {
        z.remove(&row);
    }
}

/// `a + b`.
pub fn plus<R: Ord + Clone>(a: &ZSet<R>, b: &ZSet<R>) -> ZSet<R> {
    let mut out = a.clone();
    for (r, w) in b {
        add(&mut out, r.clone(), *w);
    }
    out
}

/// `a − b`.
pub fn minus<R: Ord + Clone>(a: &ZSet<R>, b: &ZSet<R>) -> ZSet<R> {
    let mut out = a.clone();
    for (r, w) in b {
        add(&mut out, r.clone(), -*w);
    }
    out
}

/// Inner join of three relations of `(key, value)` rows on equal keys, projecting
/// `(key, v1, v2, v3)`; weights multiply (the bilinear join of Z-sets).
pub fn join3(a: &ZSet<(i8, i8)>, b: &ZSet<(i8, i8)>, c: &ZSet<(i8, i8)>) -> ZSet<(i8, i8, i8, i8)> {
    let mut out = ZSet::new();
    for ((ka, va), wa) in a {
        for ((kb, vb), wb) in b {
            if ka != kb {
                continue;
            }
            for ((kc, vc), wc) in c {
                if kb == kc {
                    add(&mut out, (*ka, *va, *vb, *vc), wa * wb * wc);
                }
            }
        }
    }
    out
}

/// The state the stream table keeps for one group of `(group, value)` rows:
/// count, count of non-null values, sum and min of the non-null values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupState {
    /// `__pgt_count`
    pub count: i64,
    /// `__pgt_aux_count_j`
    pub nonnull: i64,
    /// `__pgt_aux_sum_j` (None when `nonnull` = 0)
    pub sum: Option<i64>,
    /// `__pgt_aux_min_j` (None when `nonnull` = 0)
    pub min: Option<i64>,
}

/// The state of group `g` recomputed from scratch over `rows` (positive weights).
pub fn recompute(rows: &ZSet<(i8, Option<i8>)>, g: i8) -> GroupState {
    let mut s = GroupState::default();
    for ((rg, v), w) in rows {
        if *rg != g {
            continue;
        }
        s.count += w;
        if let Some(v) = v {
            s.nonnull += w;
            s.sum = Some(s.sum.unwrap_or(0) + i64::from(*v) * w);
            s.min = Some(s.min.map_or(i64::from(*v), |m| m.min(i64::from(*v))));
        }
    }
    if s.nonnull == 0 {
        s.sum = None;
        s.min = None;
    }
    s
}

/// The algebraic update of `old` by the group's delta rows, as `aggregate.rs`
/// computes it; `None` means "rescan" (a deleted value may have been the minimum).
pub fn update(old: &GroupState, delta: &ZSet<(i8, Option<i8>)>, g: i8) -> Option<GroupState> {
    let mut dcount = 0;
    let mut dnn = 0;
    let mut dsum = 0;
    let mut ins_min: Option<i64> = None;
    let mut del_min: Option<i64> = None;
    for ((rg, v), w) in delta {
        if *rg != g {
            continue;
        }
        dcount += w;
        if let Some(v) = v {
            let v = i64::from(*v);
            dnn += w;
            dsum += w * v;
            if *w > 0 {
                ins_min = Some(ins_min.map_or(v, |m| m.min(v)));
            } else {
                del_min = Some(del_min.map_or(v, |m| m.min(v)));
            }
        }
    }
    if let (Some(d), Some(m)) = (del_min, old.min) {
        if old.nonnull > 0 && d <= m {
            return None;
        }
    }
    let nonnull = old.nonnull + dnn;
    let sum = (nonnull > 0).then(|| old.sum.unwrap_or(0) + dsum);
    let min = (nonnull > 0).then(|| match (old.min, ins_min) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(0),
    });
    Some(GroupState { count: old.count + dcount, nonnull, sum, min })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn zset<R: Ord + Clone>(rows: Vec<R>) -> ZSet<R> {
        let mut z = ZSet::new();
        for r in rows {
            add(&mut z, r, 1);
        }
        z
    }

    /// A relation of `(key, value)` pairs and a change to it, as Z-sets.
    type RelationAndChange = (ZSet<(i8, i8)>, ZSet<(i8, i8)>);

    /// A relation and a valid change to it: deletes of existing rows, inserts.
    fn relation_and_change() -> impl Strategy<Value = RelationAndChange> {
        (
            proptest::collection::vec((0i8..4, 0i8..5), 0..12),
            proptest::collection::vec(any::<proptest::sample::Index>(), 0..5),
            proptest::collection::vec((0i8..4, 0i8..5), 0..5),
        )
            .prop_map(|(rows, dels, ins)| {
                let old = zset(rows.clone());
                let mut delta = ZSet::new();
                let mut remaining = old.clone();
                for d in dels {
                    if remaining.is_empty() {
                        break;
                    }
                    let keys: Vec<_> = remaining.keys().copied().collect();
                    let row = keys[d.index(keys.len())];
                    add(&mut remaining, row, -1);
                    add(&mut delta, row, -1);
                }
                for r in ins {
                    add(&mut delta, r, 1);
                }
                (old, delta)
            })
    }

    proptest! {
        #[test]
        fn scan_old_is_new_minus_delta((old, delta) in relation_and_change()) {
            let new = plus(&old, &delta);
            prop_assert_eq!(minus(&new, &delta), old);
        }

        #[test]
        fn join_telescoping_rule(a in relation_and_change(), b in relation_and_change(), c in relation_and_change()) {
            let (a_old, da) = a;
            let (b_old, db) = b;
            let (c_old, dc) = c;
            let (a_new, b_new, c_new) = (plus(&a_old, &da), plus(&b_old, &db), plus(&c_old, &dc));
            // Σᵢ B(new<ᵢ, Δᵢ, old>ᵢ)
            let t1 = join3(&da, &b_old, &c_old);
            let t2 = join3(&a_new, &db, &c_old);
            let t3 = join3(&a_new, &b_new, &dc);
            let delta = plus(&plus(&t1, &t2), &t3);
            let expected = minus(&join3(&a_new, &b_new, &c_new), &join3(&a_old, &b_old, &c_old));
            prop_assert_eq!(delta, expected);
        }

        #[test]
        fn aggregate_updates_agree_with_recomputation(
            rows in proptest::collection::vec((0i8..3, proptest::option::of(0i8..6)), 0..15),
            dels in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
            ins in proptest::collection::vec((0i8..3, proptest::option::of(0i8..6)), 0..6),
        ) {
            let old = zset(rows);
            let mut delta = ZSet::new();
            let mut remaining = old.clone();
            for d in dels {
                if remaining.is_empty() { break; }
                let keys: Vec<_> = remaining.keys().cloned().collect();
                let row = keys[d.index(keys.len())];
                add(&mut remaining, row, -1);
                add(&mut delta, row, -1);
            }
            for r in ins { add(&mut delta, r, 1); }
            let new = plus(&old, &delta);
            for g in 0..3 {
                let before = recompute(&old, g);
                let after = recompute(&new, g);
                match update(&before, &delta, g) {
                    Some(s) => prop_assert_eq!(s, after.clone()),
                    None => {
                        // Rescan only when a deleted value could have been the minimum.
                        let deleted_min = delta.iter().filter(|((rg, v), w)| *rg == g && v.is_some() && **w < 0)
                            .map(|((_, v), _)| i64::from(v.unwrap())).min();
                        prop_assert!(deleted_min.is_some() && deleted_min <= before.min);
                    }
                }
            }
        }
    }
}
