//! The Merkle tree of RFC 6962 / RFC 9162, section 2.1: hashes, the growing right edge of a
//! tree, inclusion and consistency proofs, and their verification.
//!
//! Pure: proofs are built from a lookup of stored perfect subtrees (`level`, `index`: the
//! subtree over leaves `[index << level, (index + 1) << level)`), so the same code serves the
//! database-backed log and the tests.

use ring::digest::{Context, SHA256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut context = Context::new(&SHA256);
    context.update(&[0x00]);
    context.update(leaf);
    finish(context)
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut context = Context::new(&SHA256);
    context.update(&[0x01]);
    context.update(left);
    context.update(right);
    finish(context)
}

/// The root of the empty tree: `SHA-256()` of nothing.
pub fn empty_root() -> Hash {
    finish(Context::new(&SHA256))
}

fn finish(context: Context) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// A stored perfect subtree: its level (0 for a leaf) and index along that level.
pub type NodeId = (u32, u64);

/// The right edge of a tree: the roots of its perfect subtrees, largest (leftmost) first. It is
/// all a sequencer needs to append leaves and compute roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The edge of a tree of `size` leaves from its perfect subtrees, as listed by
    /// [`Frontier::nodes_of`].
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Option<Frontier> {
        (hashes.len() == size.count_ones() as usize).then_some(Frontier { size, hashes })
    }

    /// Which perfect subtrees make up the edge of a tree of `size` leaves, leftmost first.
    pub fn nodes_of(size: u64) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size & (1 << level) != 0 {
                nodes.push((level, start >> level));
                start += 1 << level;
            }
        }
        nodes
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns every perfect subtree it completes (the leaf itself first),
    /// for storing.
    pub fn push(&mut self, leaf: Hash) -> Vec<(NodeId, Hash)> {
        let mut completed = vec![((0, self.size), leaf)];
        let mut node = leaf;
        let mut index = self.size;
        let mut level = 0;
        while index & 1 == 1 {
            let left = self.hashes.pop().expect("an odd index has a left sibling");
            node = node_hash(&left, &node);
            index >>= 1;
            level += 1;
            completed.push(((level, index), node));
        }
        self.hashes.push(node);
        self.size += 1;
        completed
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        match hashes.next() {
            None => empty_root(),
            Some(last) => hashes.fold(*last, |right, left| node_hash(left, &right)),
        }
    }
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The hash of the subtree over leaves `[start, end)`, from stored perfect subtrees.
fn subtree(start: u64, end: u64, node: &mut impl FnMut(NodeId) -> Hash) -> Hash {
    let width = end - start;
    if width.is_power_of_two() {
        let level = width.trailing_zeros();
        node((level, start >> level))
    } else {
        let k = split(width);
        let left = subtree(start, start + k, node);
        let right = subtree(start + k, end, node);
        node_hash(&left, &right)
    }
}

/// The root of the tree of the first `size` leaves, from stored perfect subtrees.
pub fn root_of(size: u64, node: &mut impl FnMut(NodeId) -> Hash) -> Hash {
    if size == 0 {
        empty_root()
    } else {
        subtree(0, size, node)
    }
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 9162, 2.1.3.1), nearest
/// sibling first. `index < size`.
pub fn inclusion_proof(index: u64, size: u64, node: &mut impl FnMut(NodeId) -> Hash) -> Vec<Hash> {
    fn path(
        m: u64,
        start: u64,
        end: u64,
        node: &mut impl FnMut(NodeId) -> Hash,
        out: &mut Vec<Hash>,
    ) {
        if end - start <= 1 {
            return;
        }
        let k = split(end - start);
        if m < start + k {
            path(m, start, start + k, node, out);
            out.push(subtree(start + k, end, node));
        } else {
            path(m, start + k, end, node, out);
            out.push(subtree(start, start + k, node));
        }
    }
    let mut out = Vec::new();
    path(index, 0, size, node, &mut out);
    out
}

/// The proof that the tree of `new` leaves extends the tree of `old` leaves (RFC 9162,
/// 2.1.4.1). `old <= new`; empty when `old` is 0 or equal to `new`.
pub fn consistency_proof(old: u64, new: u64, node: &mut impl FnMut(NodeId) -> Hash) -> Vec<Hash> {
    fn subproof(
        m: u64,
        start: u64,
        end: u64,
        whole: bool,
        node: &mut impl FnMut(NodeId) -> Hash,
        out: &mut Vec<Hash>,
    ) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(subtree(start, end, node));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            subproof(m, start, start + k, whole, node, out);
            out.push(subtree(start + k, end, node));
        } else {
            subproof(m - k, start + k, end, false, node, out);
            out.push(subtree(start, start + k, node));
        }
    }
    let mut out = Vec::new();
    if old > 0 && old < new {
        subproof(old, 0, new, true, node, &mut out);
    }
    out
}

/// The stored perfect subtrees a computation reads: run it once with this to learn which nodes
/// to fetch, then again with the fetched nodes.
pub fn nodes_read<T>(compute: impl FnOnce(&mut dyn FnMut(NodeId) -> Hash) -> T) -> Vec<NodeId> {
    let mut read = Vec::new();
    compute(&mut |id| {
        read.push(id);
        [0u8; 32]
    });
    read.sort_unstable();
    read.dedup();
    read
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not in a tree of {size} leaves")]
    OutOfRange { index: u64, size: u64 },
    #[error("the proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
    #[error("the old tree is larger than the new one")]
    Shrinking,
}

/// Checks an inclusion proof (RFC 9162, 2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks a consistency proof between the tree of `old` leaves with root `old_root` and the
/// tree of `new` leaves with root `new_root` (RFC 9162, 2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Shrinking);
    }
    if old == new {
        return match (proof.is_empty(), old_root == new_root) {
            (false, _) => Err(ProofError::WrongLength),
            (true, false) => Err(ProofError::RootMismatch),
            (true, true) => Ok(()),
        };
    }
    if old == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::crypto::hex;

    /// RFC 6962's reference inputs, as used by Certificate Transparency's test suites.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    /// The roots of the trees of the first 0..=8 reference leaves.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hashes(texts: &[&str]) -> Vec<Hash> {
        texts.iter().map(|t| unhex(t).try_into().unwrap()).collect()
    }

    /// A tree kept as every perfect subtree, the way the log stores it.
    fn tree(leaves: &[Hash]) -> (Frontier, HashMap<NodeId, Hash>) {
        let mut frontier = Frontier::default();
        let mut nodes = HashMap::new();
        for leaf in leaves {
            nodes.extend(frontier.push(*leaf));
        }
        (frontier, nodes)
    }

    /// MTH straight from the RFC's definition, as the reference.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn reference_leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(&unhex(l))).collect()
    }

    #[test]
    fn roots_match_rfc_6962_reference_values() {
        let leaves = reference_leaves();
        let (_, nodes) = tree(&leaves);
        for (size, expected) in ROOTS.iter().enumerate() {
            let (frontier, _) = tree(&leaves[..size]);
            assert_eq!(
                hex(&frontier.root()),
                *expected,
                "frontier root, size {size}"
            );
            let root = root_of(size as u64, &mut |id| nodes[&id]);
            assert_eq!(hex(&root), *expected, "stored-node root, size {size}");
        }
    }

    #[test]
    fn proofs_match_published_vectors() {
        let leaves = reference_leaves();
        let (_, nodes) = tree(&leaves);
        let mut get = |id| nodes[&id];
        let cases = [
            (
                0,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                vec![
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, size, expected) in cases {
            assert_eq!(inclusion_proof(index, size, &mut get), hashes(&expected));
        }
        assert_eq!(
            consistency_proof(6, 8, &mut get),
            hashes(&[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ])
        );
        assert_eq!(
            consistency_proof(2, 5, &mut get),
            hashes(&[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ])
        );
    }

    #[test]
    fn every_proof_verifies_and_every_altered_proof_fails() {
        let leaves: Vec<Hash> = (0..37u8)
            .map(|i| leaf_hash(&[i, i.wrapping_mul(7)]))
            .collect();
        let (_, nodes) = tree(&leaves);
        let mut get = |id| nodes[&id];
        for size in 1..=leaves.len() as u64 {
            let root = reference_root(&leaves[..size as usize]);
            for index in 0..size {
                let leaf = leaves[index as usize];
                let proof = inclusion_proof(index, size, &mut get);
                assert_eq!(verify_inclusion(index, size, &leaf, &proof, &root), Ok(()));
                assert!(
                    verify_inclusion(
                        index,
                        size,
                        &leaves[(index as usize + 1) % 37],
                        &proof,
                        &root
                    )
                    .is_err()
                        || size == 1 && leaves.len() == 1
                );
                for at in 0..proof.len() {
                    let mut forged = proof.clone();
                    forged[at][0] ^= 1;
                    assert!(verify_inclusion(index, size, &leaf, &forged, &root).is_err());
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert!(verify_inclusion(index, size, &leaf, &longer, &root).is_err());
            }
            assert!(verify_inclusion(size, size, &leaves[0], &[], &root).is_err());
            for old in 0..=size {
                let old_root = reference_root(&leaves[..old as usize]);
                let proof = consistency_proof(old, size, &mut get);
                assert_eq!(
                    verify_consistency(old, size, &old_root, &root, &proof),
                    Ok(()),
                    "{old} -> {size}"
                );
                for at in 0..proof.len() {
                    let mut forged = proof.clone();
                    forged[at][31] ^= 0x80;
                    assert!(verify_consistency(old, size, &old_root, &root, &forged).is_err());
                }
                if old > 0 && old < size {
                    let mut wrong = old_root;
                    wrong[0] ^= 1;
                    assert!(verify_consistency(old, size, &wrong, &root, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn the_edge_is_rebuilt_from_stored_nodes() {
        let leaves: Vec<Hash> = (0..23u8).map(|i| leaf_hash(&[i])).collect();
        let (frontier, nodes) = tree(&leaves);
        let parts = Frontier::nodes_of(23).iter().map(|id| nodes[id]).collect();
        let rebuilt = Frontier::from_parts(23, parts).unwrap();
        assert_eq!(rebuilt, frontier);
        assert_eq!(rebuilt.root(), reference_root(&leaves));
    }

    #[test]
    fn nodes_read_lists_what_a_proof_needs() {
        let needed = nodes_read(|get| inclusion_proof(5, 8, &mut |id| get(id)));
        assert_eq!(needed, vec![(0, 4), (1, 3), (2, 0)]);
    }
}
