//! The dependency graph of stream tables: an edge `u → v` when stream table `v`
//! reads stream table `u` (directly, or through a view). Refreshing in
//! topological order lets every stream table see its upstreams' newest
//! contents; a cycle has no such order and is rejected.
//!
//! Nodes are any ordered, copyable identifiers (the extension uses relation
//! OIDs). Every function is deterministic: ties are broken by node order, so
//! the same catalog always gives the same order and names the same cycle.

use std::collections::{BTreeMap, BTreeSet};

/// Upstream → the stream tables that read it.
pub type Edges<N> = BTreeMap<N, BTreeSet<N>>;

/// Builds [`Edges`] from `(upstream, downstream)` pairs.
pub fn edges<N: Ord + Copy>(pairs: impl IntoIterator<Item = (N, N)>) -> Edges<N> {
    let mut e: Edges<N> = BTreeMap::new();
    for (up, down) in pairs {
        e.entry(up).or_default().insert(down);
    }
    e
}

/// A cycle, as the nodes met along it: `[a, b, c]` means `a → b → c → a`. It
/// starts at its smallest node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle<N>(pub Vec<N>);

/// Some cycle of the graph, if there is one (depth-first search with three
/// colours; Cormen et al., *Introduction to Algorithms*, §22.3: a back edge
/// closes a cycle). Nodes are visited in ascending order, so the answer is
/// deterministic.
pub fn find_cycle<N: Ord + Copy>(edges: &Edges<N>) -> Option<Cycle<N>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        Grey,
        Black,
    }
    let mut colour: BTreeMap<N, Colour> = BTreeMap::new();
    let nodes: BTreeSet<N> = edges.iter().flat_map(|(u, vs)| std::iter::once(*u).chain(vs.iter().copied())).collect();
    for &start in &nodes {
        if colour.contains_key(&start) {
            continue;
        }
        // Iterative DFS: the path from `start`, with each node's remaining successors.
        let mut path: Vec<(N, Vec<N>)> = Vec::new();
        colour.insert(start, Colour::Grey);
        path.push((start, successors(edges, start)));
        while let Some((node, rest)) = path.last_mut() {
            let node = *node;
            match rest.pop() {
                Some(next) => match colour.get(&next) {
                    None => {
                        colour.insert(next, Colour::Grey);
                        path.push((next, successors(edges, next)));
                    }
                    Some(Colour::Grey) => {
                        let from = path.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<N> = path[from..].iter().map(|(n, _)| *n).collect();
                        let smallest = cycle.iter().enumerate().min_by_key(|(_, n)| **n).map(|(i, _)| i).unwrap_or(0);
                        cycle.rotate_left(smallest);
                        return Some(Cycle(cycle));
                    }
                    Some(Colour::Black) => {}
                },
                None => {
                    colour.insert(node, Colour::Black);
                    path.pop();
                }
            }
        }
    }
    None
}

/// Successors of `n`, in descending order (popped from the end: ascending visits).
fn successors<N: Ord + Copy>(edges: &Edges<N>, n: N) -> Vec<N> {
    edges.get(&n).map(|s| s.iter().rev().copied().collect()).unwrap_or_default()
}

/// The nodes in an order where every upstream comes before the stream tables
/// that read it (Kahn's algorithm; among the nodes ready at a time, the
/// smallest first). `nodes` lists every node, including isolated ones.
///
/// # Errors
/// The graph has a cycle ([`find_cycle`] names one).
pub fn topological_order<N: Ord + Copy>(nodes: &BTreeSet<N>, edges: &Edges<N>) -> Result<Vec<N>, Cycle<N>> {
    let mut indegree: BTreeMap<N, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for vs in edges.values() {
        for v in vs {
            *indegree.entry(*v).or_insert(0) += 1;
        }
    }
    for u in edges.keys() {
        indegree.entry(*u).or_insert(0);
    }
    let mut ready: BTreeSet<N> = indegree.iter().filter(|(_, d)| **d == 0).map(|(n, _)| *n).collect();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(n) = ready.pop_first() {
        order.push(n);
        for v in edges.get(&n).into_iter().flatten() {
            if let Some(d) = indegree.get_mut(v) {
                *d -= 1;
                if *d == 0 {
                    ready.insert(*v);
                }
            }
        }
    }
    if order.len() < indegree.len() {
        return Err(find_cycle(edges).unwrap_or(Cycle(Vec::new())));
    }
    Ok(order)
}

/// The cycle that giving `node` exactly the upstreams `upstreams` would close,
/// if any: how `create`/`alter` check a new defining query before storing it.
pub fn cycle_if_reads<N: Ord + Copy>(edges: &Edges<N>, node: N, upstreams: &BTreeSet<N>) -> Option<Cycle<N>> {
    let mut next: Edges<N> = edges.clone();
    for downs in next.values_mut() {
        downs.remove(&node);
    }
    next.retain(|_, downs| !downs.is_empty());
    for up in upstreams {
        next.entry(*up).or_default().insert(node);
    }
    find_cycle(&next).filter(|c| c.0.contains(&node))
}

/// Every node's direct upstreams: `edges` reversed (downstream -> upstreams).
pub fn upstreams<N: Ord + Copy>(edges: &Edges<N>) -> Upstreams<N> {
    let mut reverse: Upstreams<N> = BTreeMap::new();
    for (up, downs) in edges {
        for d in downs {
            reverse.entry(*d).or_default().insert(*up);
        }
    }
    reverse
}

/// Direct upstreams by node, as [`upstreams`] builds them.
pub type Upstreams<N> = BTreeMap<N, BTreeSet<N>>;

/// The nodes upstream of `n` (transitively), `n` excluded.
pub fn ancestors<N: Ord + Copy>(edges: &Edges<N>, n: N) -> BTreeSet<N> {
    ancestors_in(&upstreams(edges), n)
}

/// [`ancestors`] over edges already reversed, for callers asking about many
/// nodes of one graph (a walk costs the ancestors' edges, not the graph's).
pub fn ancestors_in<N: Ord + Copy>(reverse: &Upstreams<N>, n: N) -> BTreeSet<N> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<N> = reverse.get(&n).into_iter().flatten().copied().collect();
    while let Some(u) = stack.pop() {
        if seen.insert(u) {
            stack.extend(reverse.get(&u).into_iter().flatten().copied());
        }
    }
    seen
}

/// Diamonds: a node `d` two of whose direct upstreams share an ancestor (or one
/// is upstream of the other), so that `d` could combine one branch's new state
/// with another's old one. `edges` covers every source (tables too); `members`
/// are the nodes that can be refreshed (stream tables), `grouped` says which
/// convergence nodes want their diamond refreshed as one unit.
///
/// Returns the groups to refresh as one unit, as `(members, convergence
/// nodes)`: each such `d` with every member upstream of it, groups that
/// overlap merged.
pub fn diamond_groups<N: Ord + Copy>(
    edges: &Edges<N>,
    members: &BTreeSet<N>,
    grouped: impl Fn(N) -> bool,
) -> Vec<(BTreeSet<N>, BTreeSet<N>)> {
    let reverse = upstreams(edges);
    let mut groups: Vec<(BTreeSet<N>, BTreeSet<N>)> = Vec::new();
    for &d in members {
        let ups: Vec<N> = reverse.get(&d).into_iter().flatten().copied().collect();
        // One upstream cannot meet another: no diamond ends here.
        if ups.len() < 2 || !grouped(d) {
            continue;
        }
        let reach: Vec<BTreeSet<N>> = ups
            .iter()
            .map(|u| {
                let mut a = ancestors_in(&reverse, *u);
                a.insert(*u);
                a
            })
            .collect();
        let diamond = (0..reach.len()).any(|i| (i + 1..reach.len()).any(|j| !reach[i].is_disjoint(&reach[j])));
        if !diamond {
            continue;
        }
        let mut group: BTreeSet<N> = ancestors_in(&reverse, d).into_iter().filter(|a| members.contains(a)).collect();
        group.insert(d);
        let mut sinks = BTreeSet::from([d]);
        // Merge with every group it overlaps.
        let mut i = 0;
        while i < groups.len() {
            if groups[i].0.is_disjoint(&group) {
                i += 1;
            } else {
                let (g, s) = groups.swap_remove(i);
                group.extend(g);
                sinks.extend(s);
            }
        }
        groups.push((group, sinks));
    }
    groups.sort();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chains_and_diamonds_order_upstream_first() {
        let e = edges([(1, 2), (2, 3), (1, 4), (4, 3)]);
        let nodes: BTreeSet<i32> = [1, 2, 3, 4, 9].into();
        assert_eq!(topological_order(&nodes, &e).unwrap(), vec![1, 2, 4, 3, 9]);
        assert_eq!(find_cycle(&e), None);
    }

    #[test]
    fn a_cycle_is_named_from_its_smallest_node() {
        let e = edges([(3, 1), (1, 2), (2, 3), (0, 1)]);
        assert_eq!(find_cycle(&e), Some(Cycle(vec![1, 2, 3])));
        assert_eq!(topological_order(&[0, 1, 2, 3].into(), &e), Err(Cycle(vec![1, 2, 3])));
        assert_eq!(find_cycle(&edges([(5, 5)])), Some(Cycle(vec![5])), "a stream table reading itself");
    }

    #[test]
    fn reading_a_downstream_closes_a_cycle() {
        // b reads a; c reads b. Letting a read c closes a → b → c → a.
        let e = edges([(1, 2), (2, 3)]);
        assert_eq!(cycle_if_reads(&e, 1, &[3].into()), Some(Cycle(vec![1, 2, 3])));
        assert_eq!(cycle_if_reads(&e, 3, &[1].into()), None, "c reading a as well is a diamond, not a cycle");
        // Replacing a's upstreams drops its old edges first.
        let e = edges([(3, 1), (1, 2)]);
        assert_eq!(cycle_if_reads(&e, 1, &[].into()), None);
        assert_eq!(cycle_if_reads(&e, 3, &[2].into()), Some(Cycle(vec![1, 2, 3])));
    }

    #[test]
    fn diamonds_are_found_and_grouped() {
        // t → b, t → c, b → d, c → d: a diamond at d. x → y: a chain, no diamond.
        let e = edges([(0, 1), (0, 2), (1, 3), (2, 3), (10, 11)]);
        let members: BTreeSet<i32> = [1, 2, 3, 11].into();
        assert_eq!(diamond_groups(&e, &members, |_| true), vec![([1, 2, 3].into(), [3].into())]);
        assert!(diamond_groups(&e, &members, |_| false).is_empty(), "'none' groups nothing");
        // b reads t and c reads b and t: c's upstreams share t.
        let e = edges([(0, 1), (1, 2), (0, 2)]);
        assert_eq!(diamond_groups(&e, &[1, 2].into(), |_| true), vec![([1, 2].into(), [2].into())]);
        // Two diamonds sharing a member merge.
        let e = edges([(0, 1), (0, 2), (1, 3), (2, 3), (2, 4), (0, 4)]);
        assert_eq!(diamond_groups(&e, &[1, 2, 3, 4].into(), |_| true), vec![([1, 2, 3, 4].into(), [3, 4].into())]);
        assert_eq!(ancestors(&e, 3), [0, 1, 2].into());
    }

    proptest! {
        /// On random graphs: either the order puts every upstream first, or
        /// the reported cycle is made of real edges.
        #[test]
        fn order_or_cycle(pairs in proptest::collection::vec((0u8..8, 0u8..8), 0..16)) {
            let e = edges(pairs.iter().copied());
            let nodes: BTreeSet<u8> = (0..8).collect();
            match topological_order(&nodes, &e) {
                Ok(order) => {
                    prop_assert_eq!(order.len(), 8);
                    let position = |n: u8| order.iter().position(|m| *m == n).unwrap();
                    for (u, v) in &pairs {
                        prop_assert!(position(*u) < position(*v));
                    }
                    prop_assert_eq!(find_cycle(&e), None);
                }
                Err(Cycle(c)) => {
                    prop_assert!(!c.is_empty());
                    for i in 0..c.len() {
                        let (u, v) = (c[i], c[(i + 1) % c.len()]);
                        prop_assert!(e.get(&u).is_some_and(|s| s.contains(&v)), "{u} → {v} is not an edge");
                    }
                }
            }
        }
    }
}
