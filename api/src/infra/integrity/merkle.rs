//! The Merkle log's arithmetic (RFC 6962 / RFC 9162 §2.1), free of any storage: leaf and node
//! hashes, the right-edge frontier a checkpoint extends, and inclusion and consistency proofs —
//! built here and checked here, so `custos verify-proof` needs nothing but this file's code.
//!
//! Every event is a leaf, in commit order; its leaf hash is `SHA-256(0x00 || event hash)` (the
//! event's own chained hash), an inner node is `SHA-256(0x01 || left || right)`, and the empty
//! tree's root is `SHA-256("")`.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub(crate) type Hash = [u8; 32];

/// Nodes are stored for complete subtrees whose height is a multiple of this (and leaves):
/// any other complete subtree is at most 2^(STRIDE-1) stored nodes away.
pub(crate) const STRIDE: u32 = 4;

/// The leaf hash of an event with `event_hash`.
pub(crate) fn leaf_hash(event_hash: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(event_hash);
    hasher.finalize().into()
}

/// The hash of an inner node over its two children.
pub(crate) fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree.
pub(crate) fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A complete subtree: `2^level` leaves starting at leaf `index << level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Node {
    pub level: u32,
    pub index: u64,
}

/// The right edge of a tree: one complete subtree per set bit of its size, largest (leftmost)
/// first. Enough to compute the root and to append leaves without the rest of the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// A frontier as stored: its hashes concatenated, for a tree of `size` leaves.
    pub(crate) fn decode(size: u64, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size.count_ones() as usize * 32 {
            return None;
        }
        let hashes = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunks"))
            .collect();
        Some(Self { size, hashes })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; calls `completed` for every complete subtree above the leaves this
    /// closes (its node and hash), lowest first.
    pub(crate) fn push(&mut self, leaf: Hash, mut completed: impl FnMut(Node, &Hash)) {
        let mut hash = leaf;
        let mut level = 0;
        let index = self.size;
        while (index >> level) & 1 == 1 {
            let left = self.hashes.pop().expect("a set bit has a subtree");
            hash = node_hash(&left, &hash);
            level += 1;
            completed(
                Node {
                    level,
                    index: index >> level,
                },
                &hash,
            );
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    /// The tree's root.
    pub(crate) fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        let Some(last) = hashes.next() else {
            return empty_root();
        };
        hashes.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// The largest power of two smaller than `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// What a proof is made of: the hashes of leaf ranges `[lo, hi)` of the tree, in order.
/// Built twice: once to learn which ranges (and so which stored nodes) it needs, once with
/// their hashes.
trait Ranges {
    fn range(&mut self, lo: u64, hi: u64) -> Hash;
}

/// RFC 9162 §2.1.3.1 PATH(m, D[lo:hi]).
fn path(m: u64, lo: u64, hi: u64, ranges: &mut impl Ranges, out: &mut Vec<Hash>) {
    let n = hi - lo;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, lo, lo + k, ranges, out);
        out.push(ranges.range(lo + k, hi));
    } else {
        path(m - k, lo + k, hi, ranges, out);
        out.push(ranges.range(lo, lo + k));
    }
}

/// RFC 9162 §2.1.4.1 SUBPROOF(m, D[lo:hi], b).
fn subproof(m: u64, lo: u64, hi: u64, whole: bool, ranges: &mut impl Ranges, out: &mut Vec<Hash>) {
    let n = hi - lo;
    if m == n {
        if !whole {
            out.push(ranges.range(lo, hi));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, lo, lo + k, whole, ranges, out);
        out.push(ranges.range(lo + k, hi));
    } else {
        subproof(m - k, lo + k, hi, false, ranges, out);
        out.push(ranges.range(lo, lo + k));
    }
}

/// The complete subtrees whose hashes make up the hash of `[lo, hi)`.
fn decompose(lo: u64, hi: u64, out: &mut Vec<Node>) {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        out.push(Node {
            level: n.trailing_zeros(),
            index: lo / n,
        });
        return;
    }
    let k = if n.is_power_of_two() { n / 2 } else { split(n) };
    decompose(lo, lo + k, out);
    decompose(lo + k, hi, out);
}

/// The hash of `[lo, hi)` from the hashes of complete subtrees.
fn combine(lo: u64, hi: u64, nodes: &HashMap<Node, Hash>) -> Option<Hash> {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        return nodes
            .get(&Node {
                level: n.trailing_zeros(),
                index: lo / n,
            })
            .copied();
    }
    let k = if n.is_power_of_two() { n / 2 } else { split(n) };
    Some(node_hash(
        &combine(lo, lo + k, nodes)?,
        &combine(lo + k, hi, nodes)?,
    ))
}

struct Needed(Vec<Node>);

impl Ranges for Needed {
    fn range(&mut self, lo: u64, hi: u64) -> Hash {
        decompose(lo, hi, &mut self.0);
        [0; 32]
    }
}

struct Known<'a>(&'a HashMap<Node, Hash>, bool);

impl Ranges for Known<'_> {
    fn range(&mut self, lo: u64, hi: u64) -> Hash {
        combine(lo, hi, self.0).unwrap_or_else(|| {
            self.1 = false;
            [0; 32]
        })
    }
}

/// What a proof needs from storage.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fetch {
    /// Leaf indexes.
    pub leaves: Vec<u64>,
    /// Stored inner nodes (their height a multiple of [`STRIDE`]).
    pub nodes: Vec<Node>,
}

impl Fetch {
    /// The stored leaves and nodes that hold these complete subtrees.
    fn of(needed: &[Node]) -> Self {
        let mut fetch = Self::default();
        for node in needed {
            let stored = node.level - node.level % STRIDE;
            let span = node.level - stored;
            let first = node.index << span;
            for index in first..first + (1 << span) {
                if stored == 0 {
                    fetch.leaves.push(index);
                } else {
                    fetch.nodes.push(Node {
                        level: stored,
                        index,
                    });
                }
            }
        }
        fetch.leaves.sort_unstable();
        fetch.leaves.dedup();
        fetch.nodes.sort_unstable();
        fetch.nodes.dedup();
        fetch
    }
}

/// The hashes of the complete subtrees `needed`, from what was fetched.
fn assemble(needed: &[Node], fetched: &HashMap<Node, Hash>) -> Option<HashMap<Node, Hash>> {
    let mut out = HashMap::with_capacity(needed.len());
    for node in needed {
        let stored = node.level - node.level % STRIDE;
        let span = node.level - stored;
        let first = node.index << span;
        // Combine 2^span stored nodes pairwise up to the node.
        let mut layer: Vec<Hash> = (first..first + (1 << span))
            .map(|index| {
                fetched.get(&Node {
                    level: stored,
                    index,
                })
            })
            .collect::<Option<Vec<&Hash>>>()?
            .into_iter()
            .copied()
            .collect();
        while layer.len() > 1 {
            layer = layer
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
        }
        out.insert(*node, layer[0]);
    }
    Some(out)
}

/// Which proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProofOf {
    /// Inclusion of leaf `index` in the tree of `size` leaves.
    Inclusion { index: u64, size: u64 },
    /// The tree of `from` leaves is a prefix of the tree of `to` leaves.
    Consistency { from: u64, to: u64 },
}

impl ProofOf {
    fn walk(self, ranges: &mut impl Ranges) -> Vec<Hash> {
        let mut out = Vec::new();
        match self {
            ProofOf::Inclusion { index, size } => path(index, 0, size, ranges, &mut out),
            ProofOf::Consistency { from, to } => {
                if from > 0 && from < to {
                    subproof(from, 0, to, true, ranges, &mut out)
                }
            }
        }
        out
    }

    /// The complete subtrees the proof is made of, and where they are stored.
    pub(crate) fn needs(self) -> (Vec<Node>, Fetch) {
        let mut needed = Needed(Vec::new());
        self.walk(&mut needed);
        let fetch = Fetch::of(&needed.0);
        (needed.0, fetch)
    }

    /// The proof, from the stored leaves and nodes `fetched` (leaves as level 0); `None` when
    /// something it needs was not fetched.
    pub(crate) fn build(self, needed: &[Node], fetched: &HashMap<Node, Hash>) -> Option<Vec<Hash>> {
        let nodes = assemble(needed, fetched)?;
        let mut known = Known(&nodes, true);
        let proof = self.walk(&mut known);
        known.1.then_some(proof)
    }
}

/// RFC 9162 §2.1.3.2: whether `proof` shows the leaf `leaf` at `index` in the tree of `size`
/// leaves whose root is `root`.
pub(crate) fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: whether `proof` shows the tree of `from` leaves with root `from_root` is
/// a prefix of the tree of `to` leaves with root `to_root`.
pub(crate) fn verify_consistency(
    from: u64,
    to: u64,
    from_root: &Hash,
    to_root: &Hash,
    proof: &[Hash],
) -> bool {
    if from > to {
        return false;
    }
    if from == to {
        return proof.is_empty() && from_root == to_root;
    }
    if from == 0 {
        // Every tree extends the empty one.
        return proof.is_empty() && *from_root == empty_root();
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if from.is_power_of_two() {
        path.insert(0, *from_root);
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (from - 1, to - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *from_root && sr == *to_root && s_n == 0
}

/// The root of a whole list of leaves, computed directly from the definition (RFC 9162
/// §2.1.1), for the tests to hold the frontier and the proofs to.
#[cfg(test)]
fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Everything stored for a tree of these leaves: the leaves and the stored inner nodes.
    fn storage(leaves: &[Hash]) -> (Frontier, HashMap<Node, Hash>) {
        let mut frontier = Frontier::default();
        let mut stored = HashMap::new();
        for (i, leaf) in leaves.iter().enumerate() {
            stored.insert(
                Node {
                    level: 0,
                    index: i as u64,
                },
                *leaf,
            );
            frontier.push(*leaf, |node, hash| {
                if node.level.is_multiple_of(STRIDE) {
                    stored.insert(node, *hash);
                }
            });
        }
        (frontier, stored)
    }

    fn prove(of: ProofOf, stored: &HashMap<Node, Hash>) -> Vec<Hash> {
        let (needed, fetch) = of.needs();
        let fetched: HashMap<Node, Hash> = fetch
            .leaves
            .iter()
            .map(|&index| Node { level: 0, index })
            .chain(fetch.nodes.iter().copied())
            .map(|node| (node, stored[&node]))
            .collect();
        of.build(&needed, &fetched).expect("everything fetched")
    }

    #[test]
    fn the_frontier_gives_the_root_of_the_definition_at_every_size_and_survives_storage() {
        let all = leaves(70);
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            frontier.push(*leaf, |_, _| {});
            assert_eq!(frontier.root(), root_of(&all[..=i]), "size {}", i + 1);
            let stored = Frontier::decode(frontier.size(), &frontier.encode()).unwrap();
            assert_eq!(stored, frontier);
        }
        assert_eq!(Frontier::decode(3, &[0; 32]), None);
    }

    #[test]
    fn inclusion_proofs_verify_for_every_leaf_of_every_size_and_fail_for_any_other_leaf() {
        let all = leaves(40);
        let (_, stored) = storage(&all);
        for size in 1..=40u64 {
            let root = root_of(&all[..size as usize]);
            for index in 0..size {
                let proof = prove(ProofOf::Inclusion { index, size }, &stored);
                let leaf = &all[index as usize];
                assert!(verify_inclusion(index, size, leaf, &proof, &root));
                assert!(!verify_inclusion(
                    index,
                    size,
                    &leaf_hash(b"x"),
                    &proof,
                    &root
                ));
                if size > 1 {
                    let other = (index + 1) % size;
                    assert!(!verify_inclusion(other, size, leaf, &proof, &root));
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_between_every_pair_of_sizes_and_fail_for_another_history() {
        let all = leaves(40);
        let (_, stored) = storage(&all);
        let mut forged = all.clone();
        forged[5] = leaf_hash(b"forged");
        for to in 1..=40u64 {
            let to_root = root_of(&all[..to as usize]);
            for from in 0..=to {
                let from_root = root_of(&all[..from as usize]);
                let proof = prove(ProofOf::Consistency { from, to }, &stored);
                assert!(
                    verify_consistency(from, to, &from_root, &to_root, &proof),
                    "{from} → {to}"
                );
                if from > 5 {
                    let other = root_of(&forged[..from as usize]);
                    assert!(!verify_consistency(from, to, &other, &to_root, &proof));
                }
            }
        }
    }

    #[test]
    fn the_roots_and_proofs_agree_with_an_independent_implementation() {
        // ct-merkle (RFC 6962, by other hands) over the same leaves: its leaf hash is
        // SHA-256(0x00 || bytes), so its leaves are the event hashes themselves.
        let events: Vec<[u8; 32]> = (0..37u64)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect();
        let ours: Vec<Hash> = events.iter().map(|e| leaf_hash(e)).collect();
        let (frontier, stored) = storage(&ours);
        let mut theirs = ct_merkle::mem_backed_tree::MemoryBackedTree::<Sha256, [u8; 32]>::new();
        for event in &events {
            theirs.push(*event);
        }
        let root = theirs.root();
        assert_eq!(root.as_bytes().as_slice(), frontier.root().as_slice());
        for index in [0u64, 1, 16, 31, 36] {
            let proof = prove(ProofOf::Inclusion { index, size: 37 }, &stored);
            let bytes: Vec<u8> = proof.concat();
            let proof = ct_merkle::InclusionProof::<Sha256>::from_bytes(bytes);
            root.verify_inclusion(&events[index as usize], index, &proof)
                .unwrap();
        }
        let mut old = ct_merkle::mem_backed_tree::MemoryBackedTree::<Sha256, [u8; 32]>::new();
        for event in &events[..13] {
            old.push(*event);
        }
        let proof = prove(ProofOf::Consistency { from: 13, to: 37 }, &stored);
        let proof = ct_merkle::ConsistencyProof::<Sha256>::try_from_bytes(proof.concat()).unwrap();
        root.verify_consistency(&old.root(), &proof).unwrap();
    }
}
