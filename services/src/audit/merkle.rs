//! The Merkle tree over the chain, exactly as RFC 6962 §2.1 defines it: leaf
//! `SHA-256(0x00 ‖ chain hash)`, node `SHA-256(0x01 ‖ left ‖ right)`, the tree of the
//! first n events split at the largest power of two below n. Proofs are RFC 9162
//! §2.1.3 (inclusion) and §2.1.4 (consistency), built and checked here.
//!
//! Building a proof reads only perfect subtrees (a power-of-two run of leaves starting
//! at a multiple of its size) through [`Subtrees`]; the store keeps those of height
//! [`STORED_FROM_LEVEL`] and up, so a proof at any size costs two small reads.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

pub use super::chain::Hash;

/// Perfect subtrees of 2^4 = 16 leaves and up are stored (about n/8 rows for n
/// events); smaller ones are hashed from the events' chain hashes when needed.
pub const STORED_FROM_LEVEL: u32 = 4;

/// `SHA-256(0x00 ‖ data)`: for Circle, `data` is an event's chain hash.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest
/// first. Appending a leaf costs O(1) amortized; the root folds O(log n) nodes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompactRange {
    size: u64,
    nodes: Vec<(u32, Hash)>,
}

impl CompactRange {
    /// The range of a tree of `size` leaves from its perfect subtrees, largest first
    /// (the binary decomposition of `size`).
    pub fn at(size: u64, source: &mut impl Subtrees) -> CompactRange {
        let mut nodes = Vec::new();
        let mut start = 0;
        for level in (0..64).rev() {
            if size & (1 << level) != 0 {
                nodes.push((level, source.perfect(level, start >> level)));
                start += 1 << level;
            }
        }
        CompactRange { size, nodes }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the leaf of `chain_hash`; `completed` sees every perfect subtree this
    /// completes, as (level, index, hash), level 1 and up.
    pub fn push(&mut self, chain_hash: &Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let index = self.size;
        let mut level = 0;
        let mut hash = leaf_hash(chain_hash);
        while let Some(&(top, left)) = self.nodes.last() {
            if top != level {
                break;
            }
            self.nodes.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            completed(level, index >> level, &hash);
        }
        self.nodes.push((level, hash));
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some((_, last)) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |acc, (_, left)| node_hash(left, &acc))
    }
}

/// Where proofs get the hash of a perfect subtree: `level` 0 is a leaf hash, `index`
/// counts subtrees of that level from the left.
pub trait Subtrees {
    fn perfect(&mut self, level: u32, index: u64) -> Hash;
}

/// The largest power of two below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `[start, end)`, `start` a multiple of the largest power of two
/// that fits (true of every range the RFC's recursions visit).
fn subtree(source: &mut impl Subtrees, start: u64, end: u64) -> Hash {
    let n = end - start;
    if n.is_power_of_two() {
        let level = n.trailing_zeros();
        return source.perfect(level, start >> level);
    }
    let k = split(n);
    let left = subtree(source, start, start + k);
    let right = subtree(source, start + k, end);
    node_hash(&left, &right)
}

/// The root of the first `size` leaves.
pub fn root(source: &mut impl Subtrees, size: u64) -> Hash {
    if size == 0 {
        empty_root()
    } else {
        subtree(source, 0, size)
    }
}

/// RFC 9162 §2.1.3.1 PATH(index, D[0:size]); `index < size`.
pub fn inclusion_proof(source: &mut impl Subtrees, index: u64, size: u64) -> Vec<Hash> {
    fn path(s: &mut impl Subtrees, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < start + k {
            path(s, m, start, start + k, out);
            out.push(subtree(s, start + k, end));
        } else {
            path(s, m, start + k, end, out);
            out.push(subtree(s, start, start + k));
        }
    }
    let mut out = Vec::new();
    path(source, index, 0, size, &mut out);
    out
}

/// RFC 9162 §2.1.4.1 PROOF(old, D[0:new]); empty unless `0 < old < new`.
pub fn consistency_proof(source: &mut impl Subtrees, old: u64, new: u64) -> Vec<Hash> {
    fn subproof(
        s: &mut impl Subtrees,
        m: u64,
        start: u64,
        end: u64,
        whole: bool,
        out: &mut Vec<Hash>,
    ) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(subtree(s, start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            subproof(s, m, start, start + k, whole, out);
            out.push(subtree(s, start + k, end));
        } else {
            subproof(s, m - k, start + k, end, false, out);
            out.push(subtree(s, start, start + k));
        }
    }
    let mut out = Vec::new();
    if 0 < old && old < new {
        subproof(source, old, 0, new, true, &mut out);
    }
    out
}

/// RFC 9162 §2.1.3.2: does `proof` put `leaf` at `index` in the tree of `size` with
/// this `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: is the tree of `new` leaves (`new_root`) an extension of the
/// tree of `old` leaves (`old_root`)?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *new_root && s == 0
}

/// Subtrees from what has been fetched so far, noting what is still needed: run a
/// computation, fetch [`NodeMap::wanted`], run it again, until nothing is wanted.
/// Stored levels come from `nodes`; a node the store does not have is computed from
/// its children, and levels below [`STORED_FROM_LEVEL`] from `leaves`.
#[derive(Default)]
pub struct NodeMap {
    /// Stored subtrees by (level, index).
    pub nodes: HashMap<(u32, u64), Hash>,
    /// Chain hashes by leaf index (position − 1).
    pub leaves: HashMap<u64, Hash>,
    /// Stored-level subtrees the store was asked for and does not have.
    pub absent: HashSet<(u32, u64)>,
    wanted_nodes: HashSet<(u32, u64)>,
    wanted_leaves: HashSet<u64>,
}

impl NodeMap {
    /// What the last computation lacked: (stored subtrees, leaf indexes).
    pub fn wanted(&mut self) -> (Vec<(u32, u64)>, Vec<u64>) {
        let nodes = self.wanted_nodes.drain().collect();
        let leaves = self.wanted_leaves.drain().collect();
        (nodes, leaves)
    }
}

impl Subtrees for NodeMap {
    fn perfect(&mut self, level: u32, index: u64) -> Hash {
        if level == 0 {
            return match self.leaves.get(&index) {
                Some(chain_hash) => leaf_hash(chain_hash),
                None => {
                    self.wanted_leaves.insert(index);
                    [0; 32]
                }
            };
        }
        if level >= STORED_FROM_LEVEL && !self.absent.contains(&(level, index)) {
            if let Some(hash) = self.nodes.get(&(level, index)) {
                return *hash;
            }
            self.wanted_nodes.insert((level, index));
            return [0; 32];
        }
        let left = self.perfect(level - 1, index * 2);
        let right = self.perfect(level - 1, index * 2 + 1);
        node_hash(&left, &right)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{hash_from_hex, to_hex};

    /// Leaves given directly (tests only): the reference recursion of RFC 6962.
    struct Leaves(Vec<Hash>);

    impl Subtrees for Leaves {
        fn perfect(&mut self, level: u32, index: u64) -> Hash {
            if level == 0 {
                return self.0[index as usize];
            }
            let l = self.perfect(level - 1, index * 2);
            let r = self.perfect(level - 1, index * 2 + 1);
            node_hash(&l, &r)
        }
    }

    fn chain_hashes(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect()
    }

    /// The RFC 6962 vectors of certificate-transparency (`merkle_tree_test`): roots of
    /// the first 1..=8 of eight leaves (leaf data, not chain hashes).
    #[test]
    fn roots_match_the_certificate_transparency_vectors() {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut leaves = Leaves(data.iter().map(|d| leaf_hash(d)).collect());
        for (i, expected) in roots.iter().enumerate() {
            assert_eq!(to_hex(&root(&mut leaves, i as u64 + 1)), *expected);
        }
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_compact_range_agrees_with_the_recursion_and_reports_every_node() {
        let hashes = chain_hashes(70);
        let mut leaves = Leaves(hashes.iter().map(|h| leaf_hash(h)).collect());
        let mut range = CompactRange::default();
        let mut completed = HashMap::new();
        for (i, h) in hashes.iter().enumerate() {
            range.push(h, |level, index, hash| {
                completed.insert((level, index), *hash);
            });
            assert_eq!(range.root(), root(&mut leaves, i as u64 + 1));
            let mut again = CompactRange::at(i as u64 + 1, &mut leaves);
            assert_eq!(again.root(), range.root());
            again.push(&[9; 32], |_, _, _| {});
        }
        assert_eq!(completed[&(6, 0)], leaves.perfect(6, 0));
        assert_eq!(completed[&(2, 16)], leaves.perfect(2, 16));
        assert_eq!(completed.len(), 35 + 17 + 8 + 4 + 2 + 1);
    }

    #[test]
    fn every_proof_up_to_40_leaves_verifies_and_a_changed_one_does_not() {
        let hashes = chain_hashes(40);
        let mut leaves = Leaves(hashes.iter().map(|h| leaf_hash(h)).collect());
        for size in 1..=40u64 {
            let r = root(&mut leaves, size);
            for index in 0..size {
                let proof = inclusion_proof(&mut leaves, index, size);
                let leaf = leaf_hash(&hashes[index as usize]);
                assert!(
                    verify_inclusion(index, size, &leaf, &proof, &r),
                    "{index}/{size}"
                );
                assert!(!verify_inclusion(index, size, &[7; 32], &proof, &r));
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(index, size, &leaf, &bad, &r));
                }
            }
            for old in 1..=size {
                let old_root = root(&mut leaves, old);
                let proof = consistency_proof(&mut leaves, old, size);
                assert!(
                    verify_consistency(old, size, &old_root, &r, &proof),
                    "{old}->{size}"
                );
                if old < size {
                    assert!(!verify_consistency(old, size, &[3; 32], &r, &proof));
                    assert!(!verify_consistency(old, size, &old_root, &[3; 32], &proof));
                }
            }
        }
    }

    #[test]
    fn the_node_map_fetches_stored_levels_and_leaves_then_answers() {
        let hashes = chain_hashes(100);
        let mut reference = Leaves(hashes.iter().map(|h| leaf_hash(h)).collect());
        let mut stored = HashMap::new();
        let mut range = CompactRange::default();
        for h in &hashes {
            range.push(h, |level, index, hash| {
                if level >= STORED_FROM_LEVEL {
                    stored.insert((level, index), *hash);
                }
            });
        }
        let mut map = NodeMap::default();
        let mut rounds = 0;
        let proof = loop {
            rounds += 1;
            let proof = inclusion_proof(&mut map, 37, 100);
            let (nodes, leaves) = map.wanted();
            if nodes.is_empty() && leaves.is_empty() {
                break proof;
            }
            for key in nodes {
                if let Some(h) = stored.get(&key) {
                    map.nodes.insert(key, *h);
                } else {
                    map.absent.insert(key);
                }
            }
            for i in leaves {
                map.leaves.insert(i, hashes[i as usize]);
            }
        };
        assert_eq!(rounds, 2);
        assert_eq!(proof, inclusion_proof(&mut reference, 37, 100));
        assert!(hash_from_hex(&to_hex(&proof[0])).is_some());
    }
}
