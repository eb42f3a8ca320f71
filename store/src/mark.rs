//! Mark: which chunks the store's refs need, computed from the truth
//! (refs -> manifests), never from the index or from counts.
//!
//! The live set is a Bloom filter. Its only error is a false "live", which
//! keeps some garbage until a later GC: the safe direction. Its size is
//! bounded ([`MAX_FILTER_BYTES`]) whatever the store holds, so marking a store
//! of thousands of images needs one manifest and the filter in memory.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::id::{ChunkId, ImageId};
use crate::manifest::Entry;
use crate::Store;

/// Upper bound on the filter: 64 MiB holds ~33M live chunks at 0.05% false
/// "live"; more chunks only raise that rate (keeping more garbage).
pub const MAX_FILTER_BYTES: usize = 64 << 20;
/// 16 bits and 11 hashes per id: about 0.05% false "live".
const BITS_PER_ITEM: u64 = 16;
const HASHES: u64 = 11;

/// A Bloom filter over chunk ids.
pub struct LiveSet {
    bits: Vec<u64>,
    nbits: u64,
}

impl LiveSet {
    /// A filter for about `items` ids (clamped to [`MAX_FILTER_BYTES`]).
    pub fn with_capacity(items: u64) -> LiveSet {
        let nbits = (items.max(1024) * BITS_PER_ITEM).min(MAX_FILTER_BYTES as u64 * 8);
        let words = nbits.div_ceil(64) as usize;
        LiveSet {
            bits: vec![0; words],
            nbits: words as u64 * 64,
        }
    }

    /// Chunk ids are BLAKE3 outputs, uniformly random: their own bytes serve
    /// as the two base hashes of double hashing.
    fn positions(nbits: u64, id: &ChunkId) -> impl Iterator<Item = u64> {
        let h1 = u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"));
        let h2 = u64::from_le_bytes(id.0[8..16].try_into().expect("8 bytes")) | 1;
        (0..HASHES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % nbits)
    }

    /// Adds an id.
    pub fn insert(&mut self, id: &ChunkId) {
        for p in Self::positions(self.nbits, id) {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// False only if `id` was never inserted.
    pub fn may_contain(&self, id: &ChunkId) -> bool {
        Self::positions(self.nbits, id).all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }

    /// Memory the filter uses.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

/// The result of a mark.
pub struct Mark {
    /// Chunks some ref's image needs (maybe a few more).
    pub live: LiveSet,
    /// Refs read.
    pub refs: usize,
    /// Distinct images they name.
    pub images: usize,
    /// Chunk entries read from manifests.
    pub entries: u64,
}

impl Store {
    /// Marks every chunk a ref needs. Fails closed: any unreadable ref or
    /// manifest aborts the mark, because a GC that skipped one image would
    /// delete that image's chunks.
    pub fn mark(&self) -> Result<Mark> {
        let refs = self.refs(None)?;
        let images: BTreeSet<ImageId> = refs.iter().map(|(_, r)| r.image).collect();
        // Size the filter from the manifests' headers: their entry counts
        // bound the number of distinct live chunks from above.
        let mut upper = 0u64;
        for id in &images {
            upper += self.manifest_entry_count(id)?;
        }
        let mut live = LiveSet::with_capacity(upper);
        let mut entries = 0;
        for id in &images {
            let m = self.manifest(id)?;
            for e in &m.entries {
                if let Entry::Chunk { id, .. } = e {
                    live.insert(id);
                    entries += 1;
                }
            }
        }
        Ok(Mark {
            live,
            refs: refs.len(),
            images: images.len(),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Digest;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut s = LiveSet::with_capacity(10_000);
        for i in 0..10_000u32 {
            s.insert(&Digest::of(&i.to_le_bytes()));
        }
        for i in 0..10_000u32 {
            assert!(s.may_contain(&Digest::of(&i.to_le_bytes())));
        }
        let fp = (10_000..110_000u32)
            .filter(|i| s.may_contain(&Digest::of(&i.to_le_bytes())))
            .count();
        assert!(fp < 2_000, "{fp} false positives in 100000");
    }
}
