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
// `positions` relies on the filter having at most 2^29 bits.
const _: () = assert!(MAX_FILTER_BYTES as u64 * 8 <= 1 << 29);

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

    /// Chunk ids are BLAKE3 outputs, uniformly random: three of their 64-bit
    /// words serve as the base hashes of triple hashing (`a + i·b + i²·c`).
    /// Double hashing (`a + i·b`) made any two ids that agree on `a` and `b`
    /// modulo the filter's size share all positions: in a small store's
    /// filter (16,384 bits) that is one pair in 2^28, far above the filter's
    /// own rate, and it made gc repack a dead pack to keep one dead chunk.
    fn positions(nbits: u64, id: &ChunkId) -> impl Iterator<Item = u64> {
        let word = |k: usize| u64::from_le_bytes(id.0[8 * k..8 * k + 8].try_into().expect("8 bytes"));
        let (a, b, c) = (word(0) % nbits, word(1) % nbits, word(2) % nbits);
        // a, b, c < nbits <= 2^29 and i < 11: the sum stays below 2^37.
        (0..HASHES).map(move |i| (a + i * b + i * i * c) % nbits)
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
    /// Pins read.
    pub pins: usize,
    /// Distinct images they name.
    pub images: usize,
    /// Chunk entries read from manifests.
    pub entries: u64,
}

impl Store {
    /// Marks every chunk a ref or a pin needs. Fails closed: any unreadable
    /// ref, pin or manifest aborts the mark, because a GC that skipped one image would
    /// delete that image's chunks.
    ///
    /// The roots are the refs, then the pins, listed in that order (see
    /// [`crate::pins`] for why the order matters).
    pub fn mark(&self) -> Result<Mark> {
        let refs = self.refs(None)?;
        let pins = self.pins()?;
        let images: BTreeSet<ImageId> = refs
            .iter()
            .map(|(_, r)| r.image)
            .chain(pins.iter().map(|p| p.image))
            .collect();
        // An archived image is held by its archive stream's chunks; its
        // manifest's are what archiving lets go. Listed once, after the
        // roots: an image archived since is marked by its manifest (more
        // than it needs), and its stream's new chunks are the archive's
        // session's until a later mark sees the recipe.
        let archived = self.archived_images()?;
        // Size the filter from the manifests' headers: their entry counts
        // bound the number of distinct live chunks from above.
        let mut upper = 0u64;
        for id in &images {
            upper += if archived.contains(id) {
                self.held_entry_count(id)?
            } else {
                self.manifest_entry_count(id)?
            };
        }
        let mut live = LiveSet::with_capacity(upper);
        let mut entries = 0;
        for id in &images {
            let m = if archived.contains(id) {
                self.held(id)?
            } else {
                self.manifest(id)?
            };
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
            pins: pins.len(),
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

    #[test]
    fn ids_alike_in_some_words_are_told_apart() {
        // The smallest filter, one live id; candidates share its first two
        // words (all that double hashing looked at) or its first and third.
        let live = Digest::of(b"live chunk");
        let mut s = LiveSet::with_capacity(1);
        s.insert(&live);
        for k in 0..1_000u32 {
            let other = Digest::of(&k.to_le_bytes()).0;
            let mut same_ab = live.0;
            same_ab[16..].copy_from_slice(&other[16..]);
            let mut same_ac = live.0;
            same_ac[8..16].copy_from_slice(&other[8..16]);
            same_ac[24..].copy_from_slice(&other[24..]);
            for id in [Digest(same_ab), Digest(same_ac)] {
                assert!(!s.may_contain(&id), "{id:?} passes for {live:?}");
            }
        }
    }
}
