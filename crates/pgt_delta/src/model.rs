//! An in-memory model of the delta rules over Z-sets (maps from rows to integer
//! weights). The SQL in the other modules implements these same rules; the
//! property tests here check the identities themselves on random data:
//!
//! - scan: `old = new − Δ`;
//! - join (telescoping): `Σᵢ B(new<ᵢ, Δᵢ, old>ᵢ) = B(new…) − B(old…)` for a
//!   three-way inner join with arbitrary changes to every input, also with
//!   each old state expanded as `new − Δ` (signed subterms);
//! - outer join: the terms of `join`'s outer-join rule (the inner-join part
//!   plus signed NULL extensions from match counts, and the preserved input's
//!   term rewritten to read the nullable inputs' new states) sum to the change
//!   of a block with two chained LEFT JOINs and a WHERE over the nullable sides;
//! - presence: a block with `EXISTS` / `NOT EXISTS` / a scalar subquery over
//!   a child changes by the FROM input's term (child old) plus the child's
//!   term recomputed over the rows whose correlation value its changes touch;
//! - child operator: an aggregate over an aggregate kept in a state table
//!   changes by the parent's rule applied to the child's change (the
//!   state table's old rows out, new rows in);
//! - FULL JOIN: the LEFT JOIN plus the anti-join of the RIGHT JOIN, and so its
//!   change is the sum of theirs;
//! - set operations: INTERSECT / EXCEPT [ALL] as counts per distinct row and
//!   side agree with their SQL definitions;
//! - bitwise aggregates: per-bit counts updated by a weighted change give
//!   `bit_and` / `bit_or` of the new values (sign bit included);
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

/// How one outer join of [`left_join_block`] is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// LEFT JOIN: a preserved row without a match is NULL-extended.
    Left,
    /// The join made inner (the rows in which the nullable side is real).
    Inner,
}

/// A row of [`left_join_block`]: the preserved row and the two nullable ones.
pub type OuterRow = ((i8, i8), Option<(i8, i8)>, Option<(i8, i8)>);

/// The rows of `z` that `matches`, or one NULL extension (weight 1) when none
/// does and the join is a LEFT JOIN.
fn extend(z: &ZSet<(i8, i8)>, matches: impl Fn(&(i8, i8)) -> bool, kind: JoinKind) -> Vec<(Option<(i8, i8)>, i64)> {
    let found: Vec<_> = z.iter().filter(|(row, _)| matches(row)).map(|(row, w)| (Some(*row), *w)).collect();
    if found.is_empty() && kind == JoinKind::Left {
        vec![(None, 1)]
    } else {
        found
    }
}

/// The WHERE clause of [`left_join_block`].
fn block_filter(r: Option<(i8, i8)>, s: Option<(i8, i8)>) -> bool {
    r.is_none_or(|x| x.1 != 1) && s.is_none_or(|x| x.1 != 0)
}

/// `SELECT … FROM a LEFT JOIN r ON a.0 = r.0 LEFT JOIN s ON r.1 = s.0
/// WHERE (r IS NULL OR r.1 <> 1) AND (s IS NULL OR s.1 <> 0)`, with each join
/// made inner on request. A row is a match when its weight is non-zero (rows
/// absent from a Z-set); weights multiply, a NULL extension weighs 1.
pub fn left_join_block(a: &ZSet<(i8, i8)>, r: &ZSet<(i8, i8)>, s: &ZSet<(i8, i8)>, r_kind: JoinKind, s_kind: JoinKind) -> ZSet<OuterRow> {
    let mut out = ZSet::new();
    for (ar, wa) in a {
        for (rr, wr) in extend(r, |x| x.0 == ar.0, r_kind) {
            let s_rows = match rr {
                Some(rr) => extend(s, |x| x.0 == rr.1, s_kind),
                None if s_kind == JoinKind::Left => vec![(None, 1)],
                None => Vec::new(),
            };
            for (sr, ws) in s_rows {
                if block_filter(rr, sr) {
                    add(&mut out, (*ar, rr, sr), wa * wr * ws);
                }
            }
        }
    }
    out
}

/// The sign of a preserved row's NULL extension in `B(…, R_new) − B(…, R_old)`:
/// `[cnt_new = 0] − [cnt_old = 0]` with `cnt_old = cnt_new − δ`, where `cnt_new`
/// counts its matches in `R_new` and `δ` sums the weights of its matches in `ΔR`.
pub fn null_extension_sign(cnt_new: i64, delta: i64) -> i64 {
    i64::from(cnt_new == 0) - i64::from(cnt_new - delta == 0)
}

/// The term of `r` in [`left_join_block`], `B(a, r_new, s) − B(a, r_old, s)`,
/// computed without `r_old` by the decomposition `join.rs` uses (which tests the
/// two zero conditions by existence): the inner-join part over `Δr`,
/// plus each preserved row NULL-extended with its [`null_extension_sign`].
pub fn nullable_r_term(a: &ZSet<(i8, i8)>, r_new: &ZSet<(i8, i8)>, dr: &ZSet<(i8, i8)>, s: &ZSet<(i8, i8)>) -> ZSet<OuterRow> {
    let mut out = left_join_block(a, dr, s, JoinKind::Inner, JoinKind::Left);
    for (ar, wa) in a {
        let cnt_new: i64 = r_new.iter().filter(|(x, _)| x.0 == ar.0).map(|(_, w)| w).sum();
        let delta: i64 = dr.iter().filter(|(x, _)| x.0 == ar.0).map(|(_, w)| w).sum();
        let sign = null_extension_sign(cnt_new, delta);
        if sign != 0 && block_filter(None, None) {
            add(&mut out, (*ar, None, None), wa * sign);
        }
    }
    out
}

/// The term of `s` in [`left_join_block`], `B(a, r, s_new) − B(a, r, s_old)`:
/// the preserved rows are the rows `(a, r?)` of `a ⟕ r`.
pub fn nullable_s_term(a: &ZSet<(i8, i8)>, r: &ZSet<(i8, i8)>, s_new: &ZSet<(i8, i8)>, ds: &ZSet<(i8, i8)>) -> ZSet<OuterRow> {
    let mut out = left_join_block(a, r, ds, JoinKind::Left, JoinKind::Inner);
    for (ar, wa) in a {
        for (rr, wr) in extend(r, |x| x.0 == ar.0, JoinKind::Left) {
            let matches = |x: &(i8, i8)| rr.is_some_and(|r| r.1 == x.0);
            let cnt_new: i64 = s_new.iter().filter(|(x, _)| matches(x)).map(|(_, w)| w).sum();
            let delta: i64 = ds.iter().filter(|(x, _)| matches(x)).map(|(_, w)| w).sum();
            let sign = null_extension_sign(cnt_new, delta);
            if sign != 0 && block_filter(rr, None) {
                add(&mut out, (*ar, rr, None), wa * wr * sign);
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

/// The algebraic update of `old` by the group's delta images (unconsolidated, as
/// the change buffer holds them: a row inserted and deleted in one window is
/// two images), as `aggregate.rs` computes it; `None` means "rescan" (a deleted
/// value may have been the minimum).
pub fn update(old: &GroupState, delta: &[((i8, Option<i8>), i64)], g: i8) -> Option<GroupState> {
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
    // The candidate is the smaller of the old minimum and the smallest inserted
    // value; a deleted value at or below it may have been it (a value inserted
    // and deleted in the same window is both).
    let candidate = match (old.min.filter(|_| old.nonnull > 0), ins_min) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let (Some(d), Some(c)) = (del_min, candidate) {
        if d <= c {
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

/// What the stream table keeps for `bool_and` / `bool_or` and the variance
/// family over one group of `(group, value)` rows (`aggregate.rs`): the
/// contributing (non-NULL) rows, the true ones (a value is true when odd),
/// Σx and Σx².
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MomentState {
    /// `__pgt_aux_count_j`
    pub n: i64,
    /// `__pgt_aux_sum_j` of `bool_and` / `bool_or`: rows whose value is true
    pub trues: i64,
    /// `__pgt_aux_sum_j` of the variance family: Σx
    pub sum: i128,
    /// `__pgt_aux_sumsq_j`: Σx²
    pub sumsq: i128,
}

/// [`MomentState`] of group `g` from scratch over `rows`.
pub fn moments(rows: &ZSet<(i8, Option<i8>)>, g: i8) -> MomentState {
    let mut s = MomentState::default();
    for ((rg, v), w) in rows {
        if let (true, Some(v)) = (*rg == g, v) {
            let (v, w) = (i128::from(*v), i128::from(*w));
            s.n += w as i64;
            s.trues += if v % 2 != 0 { w as i64 } else { 0 };
            s.sum += w * v;
            s.sumsq += w * v * v;
        }
    }
    s
}

/// The algebraic update of `old` by the group's delta images, as
/// `aggregate.rs` computes it: every component adds the weighted images.
pub fn update_moments(old: &MomentState, delta: &[((i8, Option<i8>), i64)], g: i8) -> MomentState {
    let mut d = ZSet::new();
    for (r, w) in delta {
        add(&mut d, *r, *w);
    }
    let dm = moments(&d, g);
    MomentState { n: old.n + dm.n, trues: old.trues + dm.trues, sum: old.sum + dm.sum, sumsq: old.sumsq + dm.sumsq }
}

/// `bool_and` and `bool_or` from the counts (None over no contributing row).
pub fn bools_from_counts(s: &MomentState) -> (Option<bool>, Option<bool>) {
    if s.n == 0 {
        (None, None)
    } else {
        (Some(s.trues == s.n), Some(s.trues > 0))
    }
}

/// Per-bit counts of a multiset of `i16` values (bit 15 is the sign bit):
/// how many values have each bit set, and how many values there are.
pub fn bit_counts(rows: &ZSet<i16>) -> ([i64; 16], i64) {
    let mut counts = [0i64; 16];
    let mut n = 0;
    for (x, w) in rows {
        n += w;
        for (k, c) in counts.iter_mut().enumerate() {
            *c += w * i64::from((x >> k) & 1);
        }
    }
    (counts, n)
}

/// `bit_and` and `bit_or` from per-bit counts (None over no value).
pub fn bitwise_from_counts(counts: &[i64; 16], n: i64) -> (Option<i16>, Option<i16>) {
    if n == 0 {
        return (None, None);
    }
    let build = |test: &dyn Fn(i64) -> bool| counts.iter().enumerate().filter(|(_, c)| test(**c)).fold(0i16, |acc, (k, _)| acc | (1i16 << k));
    (Some(build(&|c| c == n)), Some(build(&|c| c > 0)))
}

/// The sample variance from the sums, as the fraction (numerator,
/// denominator) `(N·Σx² − (Σx)²) / (N·(N−1))`; None when N ≤ 1.
pub fn sample_variance_from_sums(s: &MomentState) -> Option<(i128, i128)> {
    let n = i128::from(s.n);
    (n > 1).then(|| (n * s.sumsq - s.sum * s.sum, n * (n - 1)))
}

/// The subquery expressions of [`presence_block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sublink {
    /// `WHERE EXISTS (SELECT 1 FROM c WHERE c.0 = p.0 AND c.1 > p.1)`
    Exists,
    /// `WHERE NOT EXISTS (…the same…)`
    NotExists,
    /// `SELECT p.0, p.1, (SELECT max(c.1) FROM c WHERE c.0 = p.0)`
    ScalarMax,
}

/// A block reading `p` in FROM and the set `c` only inside a subquery
/// expression correlated by `c.0 = p.0` (see [`Sublink`]). Rows are
/// `(p.0, p.1, scalar)`; the scalar is `None` for the EXISTS forms.
pub fn presence_block(p: &ZSet<(i8, i8)>, c: &ZSet<(i8, i8)>, sublink: Sublink) -> ZSet<(i8, i8, Option<i8>)> {
    let mut out = ZSet::new();
    for (row, w) in p {
        let present = c.iter().filter(|(_, wc)| **wc != 0).map(|(r, _)| *r);
        match sublink {
            Sublink::Exists | Sublink::NotExists => {
                let found = present.into_iter().any(|x| x.0 == row.0 && x.1 > row.1);
                if found == (sublink == Sublink::Exists) {
                    add(&mut out, (row.0, row.1, None), *w);
                }
            }
            Sublink::ScalarMax => {
                let max = present.into_iter().filter(|x| x.0 == row.0).map(|x| x.1).max();
                add(&mut out, (row.0, row.1, max), *w);
            }
        }
    }
    out
}

/// `SELECT k, count(*) FROM r GROUP BY k` as a set of `(k, count)` rows: the
/// result of a child aggregate (its state table).
pub fn count_by_key(r: &ZSet<(i8, i8)>) -> ZSet<(i8, i64)> {
    let mut counts: BTreeMap<i8, i64> = BTreeMap::new();
    for ((k, _), w) in r {
        *counts.entry(*k).or_insert(0) += w;
    }
    counts.into_iter().filter(|(_, n)| *n != 0).map(|(k, n)| ((k, n), 1)).collect()
}

/// `SELECT n, count(*) FROM <child> GROUP BY n` over a child's rows (a Z-set,
/// so it applies to a child's change as well): an aggregate over an
/// aggregate, as `(n, count)` weights per `n`.
pub fn histogram(child: &ZSet<(i8, i64)>) -> ZSet<i64> {
    let mut out = ZSet::new();
    for ((_, n), w) in child {
        add(&mut out, *n, *w);
    }
    out
}

/// Rows of an outer join of two `(key, value)` relations: either side may be
/// NULL-extended.
pub type OuterPairs = ZSet<(Option<(i8, i8)>, Option<(i8, i8)>)>;

/// `a FULL JOIN b ON a.0 = b.0`, from its definition key by key: for every
/// join key, the pairs of its rows on both sides, or, where one side has no
/// row with that key, the other side's rows NULL-extended (weights multiply;
/// a match is a row of non-zero weight). Written independently of
/// [`left_join`] and [`right_anti`], which the delta rule combines.
pub fn full_join(a: &ZSet<(i8, i8)>, b: &ZSet<(i8, i8)>) -> OuterPairs {
    let mut out = ZSet::new();
    let keys: std::collections::BTreeSet<i8> = a.keys().chain(b.keys()).map(|row| row.0).collect();
    for key in keys {
        let left: Vec<_> = a.iter().filter(|(row, _)| row.0 == key).collect();
        let right: Vec<_> = b.iter().filter(|(row, _)| row.0 == key).collect();
        match (left.is_empty(), right.is_empty()) {
            (false, true) => left.iter().for_each(|(l, wl)| add(&mut out, (Some(**l), None), **wl)),
            (true, false) => right.iter().for_each(|(r, wr)| add(&mut out, (None, Some(**r)), **wr)),
            _ => {
                for (l, wl) in &left {
                    for (r, wr) in &right {
                        add(&mut out, (Some(**l), Some(**r)), *wl * *wr);
                    }
                }
            }
        }
    }
    out
}

/// `a LEFT JOIN b ON a.0 = b.0` in the shape of [`full_join`]'s rows.
pub fn left_join(a: &ZSet<(i8, i8)>, b: &ZSet<(i8, i8)>) -> OuterPairs {
    let mut out = ZSet::new();
    for (l, wl) in a {
        for (r, wr) in extend(b, |x| x.0 == l.0, JoinKind::Left) {
            add(&mut out, (Some(*l), r), wl * wr);
        }
    }
    out
}

/// The rows of `a RIGHT JOIN b ON a.0 = b.0` whose `a` side is NULL: `b`'s rows
/// without a match (the anti-join the FULL JOIN adds to its LEFT JOIN).
pub fn right_anti(a: &ZSet<(i8, i8)>, b: &ZSet<(i8, i8)>) -> OuterPairs {
    let mut out = ZSet::new();
    for (r, wr) in b {
        if !a.iter().any(|(l, _)| l.0 == r.0) {
            add(&mut out, (None, Some(*r)), *wr);
        }
    }
    out
}

/// The set operations by counts: per distinct row `x` with `ca` copies in
/// the left input and `cb` in the right, the copies of `x` in the result.
#[derive(Debug, Clone, Copy)]
pub enum SetOp {
    /// `INTERSECT`: one if both have it.
    Intersect,
    /// `EXCEPT`: one if only the left has it.
    Except,
    /// `INTERSECT ALL`: `min(ca, cb)`.
    IntersectAll,
    /// `EXCEPT ALL`: `max(ca − cb, 0)`.
    ExceptAll,
}

/// `l <op> r` computed by counting per distinct row (the rewrite of
/// `translate/setop.rs`).
pub fn set_op_by_counts(l: &ZSet<i8>, r: &ZSet<i8>, op: SetOp) -> ZSet<i8> {
    let mut out = ZSet::new();
    let rows: std::collections::BTreeSet<i8> = l.keys().chain(r.keys()).copied().collect();
    for x in rows {
        let (ca, cb) = (l.get(&x).copied().unwrap_or(0), r.get(&x).copied().unwrap_or(0));
        let copies = match op {
            SetOp::Intersect => i64::from(ca > 0 && cb > 0),
            SetOp::Except => i64::from(ca > 0 && cb == 0),
            SetOp::IntersectAll => ca.min(cb),
            SetOp::ExceptAll => (ca - cb).max(0),
        };
        add(&mut out, x, copies);
    }
    out
}

/// `l <op> r` as SQL defines it, element by element: INTERSECT ALL pairs
/// copies off, EXCEPT ALL removes one left copy per right copy, the forms
/// without ALL work on distinct rows.
pub fn set_op_by_definition(l: &ZSet<i8>, r: &ZSet<i8>, op: SetOp) -> ZSet<i8> {
    let expand = |z: &ZSet<i8>| -> Vec<i8> { z.iter().flat_map(|(x, n)| std::iter::repeat_n(*x, (*n).max(0) as usize)).collect() };
    let (left, mut right) = (expand(l), expand(r));
    let mut out = ZSet::new();
    match op {
        SetOp::IntersectAll | SetOp::ExceptAll => {
            for x in left {
                let found = right.iter().position(|y| *y == x);
                if let Some(i) = found {
                    right.swap_remove(i);
                }
                if found.is_some() == matches!(op, SetOp::IntersectAll) {
                    add(&mut out, x, 1);
                }
            }
        }
        SetOp::Intersect | SetOp::Except => {
            let distinct: std::collections::BTreeSet<i8> = left.into_iter().collect();
            for x in distinct {
                if right.contains(&x) == matches!(op, SetOp::Intersect) {
                    add(&mut out, x, 1);
                }
            }
        }
    }
    out
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

        /// The telescoping terms with every old state expanded by linearity
        /// (`join::bind_terms`): `B(…, old, …) = B(…, new, …) − B(…, Δ, …)`,
        /// 2^k signed subterms per term, sum to the same change.
        #[test]
        fn telescoping_with_old_states_expanded(a in relation_and_change(), b in relation_and_change(), c in relation_and_change()) {
            let (a_old, da) = a;
            let (b_old, db) = b;
            let (c_old, dc) = c;
            let (a_new, b_new, c_new) = (plus(&a_old, &da), plus(&b_old, &db), plus(&c_old, &dc));
            // Term 1: Δa ⋈ b_old ⋈ c_old = Δa⋈b⋈c − Δa⋈Δb⋈c − Δa⋈b⋈Δc + Δa⋈Δb⋈Δc (new states).
            let t1 = plus(
                &minus(&minus(&join3(&da, &b_new, &c_new), &join3(&da, &db, &c_new)), &join3(&da, &b_new, &dc)),
                &join3(&da, &db, &dc),
            );
            // Term 2: a_new ⋈ Δb ⋈ c_old = a⋈Δb⋈c − a⋈Δb⋈Δc.
            let t2 = minus(&join3(&a_new, &db, &c_new), &join3(&a_new, &db, &dc));
            let t3 = join3(&a_new, &b_new, &dc);
            let delta = plus(&plus(&t1, &t2), &t3);
            let expected = minus(&join3(&a_new, &b_new, &c_new), &join3(&a_old, &b_old, &c_old));
            prop_assert_eq!(delta, expected);
        }

        #[test]
        fn outer_join_rule(a in relation_and_change(), r in relation_and_change(), s in relation_and_change()) {
            use JoinKind::Left;
            let (a_old, da) = a;
            let (r_old, dr) = r;
            let (s_old, ds) = s;
            let (a_new, r_new, s_new) = (plus(&a_old, &da), plus(&r_old, &dr), plus(&s_old, &ds));
            // Order: the preserved input, then the nullable ones (r, s).
            // Preserved term: B(Δa, r_old, s_old), rewritten to read the
            // nullable inputs new: B(Δa, r_new, s_new) − T_r(Δa; s new) − T_s(Δa; r old).
            let term_a = minus(
                &minus(&left_join_block(&da, &r_new, &s_new, Left, Left), &nullable_r_term(&da, &r_new, &dr, &s_new)),
                &nullable_s_term(&da, &r_old, &s_new, &ds),
            );
            let term_r = nullable_r_term(&a_new, &r_new, &dr, &s_old);
            let term_s = nullable_s_term(&a_new, &r_new, &s_new, &ds);
            let delta = plus(&plus(&term_a, &term_r), &term_s);
            let expected = minus(&left_join_block(&a_new, &r_new, &s_new, Left, Left), &left_join_block(&a_old, &r_old, &s_old, Left, Left));
            prop_assert_eq!(delta, expected);
        }

        #[test]
        fn presence_rule(p in relation_and_change(), c_old in proptest::collection::btree_set((0i8..4, 0i8..5), 0..8),
                         c_new in proptest::collection::btree_set((0i8..4, 0i8..5), 0..8), kind in 0..3usize) {
            let sublink = [Sublink::Exists, Sublink::NotExists, Sublink::ScalarMax][kind];
            let (p_old, dp) = p;
            let p_new = plus(&p_old, &dp);
            // The child is a set (a DISTINCT or grouped state table).
            let c_old: ZSet<(i8, i8)> = c_old.into_iter().map(|r| (r, 1)).collect();
            let c_new: ZSet<(i8, i8)> = c_new.into_iter().map(|r| (r, 1)).collect();
            let dc = minus(&c_new, &c_old);
            // Order: p, then the child. p's term reads the child old.
            let term_p = presence_block(&dp, &c_old, sublink);
            // The child's term: p (new) restricted to the correlation values
            // of the child's changed rows, evaluated with the child new minus old.
            let affected: std::collections::BTreeSet<i8> = dc.keys().map(|r| r.0).collect();
            let restricted: ZSet<(i8, i8)> = p_new.iter().filter(|(r, _)| affected.contains(&r.0)).map(|(r, w)| (*r, *w)).collect();
            let term_c = minus(&presence_block(&restricted, &c_new, sublink), &presence_block(&restricted, &c_old, sublink));
            let expected = minus(&presence_block(&p_new, &c_new, sublink), &presence_block(&p_old, &c_old, sublink));
            prop_assert_eq!(plus(&term_p, &term_c), expected);
        }

        #[test]
        fn child_operator_rule((r_old, dr) in relation_and_change()) {
            // An aggregate over an aggregate: the child keeps its result (a
            // state table); its change is its new rows minus its old ones (the
            // MERGE's RETURNING rows), and the parent's rule, linear here,
            // applied to that change gives the parent's change.
            let r_new = plus(&r_old, &dr);
            let (child_old, child_new) = (count_by_key(&r_old), count_by_key(&r_new));
            let child_delta = minus(&child_new, &child_old);
            prop_assert_eq!(plus(&child_old, &child_delta), child_new.clone());
            let parent_delta = histogram(&child_delta);
            prop_assert_eq!(parent_delta, minus(&histogram(&child_new), &histogram(&child_old)));
        }

        #[test]
        fn full_join_is_left_join_plus_right_anti_join(a in relation_and_change(), b in relation_and_change()) {
            let (a_old, da) = a;
            let (b_old, db) = b;
            let (a_new, b_new) = (plus(&a_old, &da), plus(&b_old, &db));
            for (x, y) in [(&a_old, &b_old), (&a_new, &b_new)] {
                prop_assert_eq!(full_join(x, y), plus(&left_join(x, y), &right_anti(x, y)));
            }
            // Hence its change is the two branches' changes (each maintained by
            // the outer-join rule).
            let change = minus(&full_join(&a_new, &b_new), &full_join(&a_old, &b_old));
            let branches = plus(
                &minus(&left_join(&a_new, &b_new), &left_join(&a_old, &b_old)),
                &minus(&right_anti(&a_new, &b_new), &right_anti(&a_old, &b_old)),
            );
            prop_assert_eq!(change, branches);
        }

        #[test]
        fn set_operations_by_counts(l in proptest::collection::vec(0i8..4, 0..10), r in proptest::collection::vec(0i8..4, 0..10)) {
            let (l, r) = (zset(l), zset(r));
            for op in [SetOp::Intersect, SetOp::Except, SetOp::IntersectAll, SetOp::ExceptAll] {
                prop_assert_eq!(set_op_by_counts(&l, &r, op), set_op_by_definition(&l, &r, op), "{:?}", op);
            }
        }

        #[test]
        fn aggregate_updates_agree_with_recomputation(
            rows in proptest::collection::vec((0i8..3, proptest::option::of(0i8..6)), 0..15),
            dels in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
            ins in proptest::collection::vec((0i8..3, proptest::option::of(0i8..6)), 0..6),
            transient in proptest::collection::vec((0i8..3, proptest::option::of(0i8..6)), 0..3),
        ) {
            let old = zset(rows);
            let mut images: Vec<((i8, Option<i8>), i64)> = Vec::new();
            let mut remaining = old.clone();
            for d in dels {
                if remaining.is_empty() { break; }
                let keys: Vec<_> = remaining.keys().cloned().collect();
                let row = keys[d.index(keys.len())];
                add(&mut remaining, row, -1);
                images.push((row, -1));
            }
            for r in ins { images.push((r, 1)); }
            // Rows inserted and deleted again within the window.
            for r in transient { images.push((r, 1)); images.push((r, -1)); }
            let mut new = old.clone();
            for (r, w) in &images { add(&mut new, *r, *w); }
            for g in 0..3 {
                // bool_and / bool_or and the variance family: counts and sums
                // follow any images, and give the aggregates' definitions.
                let moments_after = moments(&new, g);
                prop_assert_eq!(update_moments(&moments(&old, g), &images, g), moments_after.clone());
                let values: Vec<i128> = new
                    .iter()
                    .filter(|((rg, v), _)| *rg == g && v.is_some())
                    .flat_map(|((_, v), w)| std::iter::repeat_n(i128::from(v.unwrap_or(0)), *w as usize))
                    .collect();
                let (all, any) = bools_from_counts(&moments_after);
                prop_assert_eq!(all, (!values.is_empty()).then(|| values.iter().all(|v| v % 2 != 0)));
                prop_assert_eq!(any, (!values.is_empty()).then(|| values.iter().any(|v| v % 2 != 0)));
                if let Some((num, den)) = sample_variance_from_sums(&moments_after) {
                    // Σ(x − mean)² / (N − 1), cross-multiplied: N·Σ(N·x − Σx)² / (N²·(N − 1)).
                    let n = values.len() as i128;
                    let sum: i128 = values.iter().sum();
                    let dev: i128 = values.iter().map(|x| (n * x - sum) * (n * x - sum)).sum();
                    prop_assert_eq!(num * (n * n * (n - 1)), dev * den);
                    prop_assert!(num >= 0);
                } else {
                    prop_assert!(values.len() <= 1);
                }
                let before = recompute(&old, g);
                let after = recompute(&new, g);
                match update(&before, &images, g) {
                    Some(s) => prop_assert_eq!(s, after.clone()),
                    None => {
                        // Rescan only when some value of the group was deleted.
                        prop_assert!(images.iter().any(|((rg, v), w)| *rg == g && v.is_some() && *w < 0));
                    }
                }
            }
        }
    }

    proptest! {
        /// `bit_and` / `bit_or` maintained by per-bit counts, updated with
        /// a weighted change, equal the aggregates of the new values
        /// (negative values included: the sign bit is counted like any).
        #[test]
        fn bitwise_aggregates_by_counts(
            old in proptest::collection::vec(any::<i16>(), 0..12),
            inserted in proptest::collection::vec(any::<i16>(), 0..6),
            deleted in proptest::collection::vec(0usize..12, 0..6),
        ) {
            let mut rows: ZSet<i16> = ZSet::new();
            for x in &old { add(&mut rows, *x, 1); }
            let (mut counts, mut n) = bit_counts(&rows);
            let mut change: ZSet<i16> = ZSet::new();
            for i in deleted {
                if let Some(x) = old.get(i) {
                    if rows.get(x).copied().unwrap_or(0) + change.get(x).copied().unwrap_or(0) > 0 { add(&mut change, *x, -1); }
                }
            }
            for x in &inserted { add(&mut change, *x, 1); }
            let (dc, dn) = bit_counts(&change);
            for k in 0..16 { counts[k] += dc[k]; }
            n += dn;
            let new = plus(&rows, &change);
            let values: Vec<i16> = new.iter().flat_map(|(x, w)| std::iter::repeat_n(*x, (*w).max(0) as usize)).collect();
            let expected = if values.is_empty() {
                (None, None)
            } else {
                (Some(values.iter().fold(-1i16, |a, x| a & x)), Some(values.iter().fold(0i16, |a, x| a | x)))
            };
            prop_assert_eq!(bitwise_from_counts(&counts, n), expected);
        }
    }
}
