//! The report view's counting model: what the view keeps of each chunk
//! ([`ChunkState`]), the totals it keeps of sets of chunks ([`Tally`],
//! [`SetTotals`], [`StoreTotals`]), and how a change to a chunk
//! ([`Delta`]) moves them ([`Changes`]). No storage here: the view
//! (`view.rs`) keeps these encodings in RocksDB.

use std::collections::HashMap;

use super::CHUNK_OVERHEAD;
use crate::id::Digest;

/// Chunks, raw bytes and stored bytes (one copy each) of a set of chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct chunks.
    pub chunks: i64,
    /// Their raw bytes.
    pub bytes: i64,
    /// Their stored bytes, one copy each (0 for a chunk with no copy).
    pub stored: i64,
}

impl Tally {
    pub(super) fn from_array([chunks, bytes, stored]: [i64; 3]) -> Tally {
        Tally {
            chunks,
            bytes,
            stored,
        }
    }

    /// Counts one chunk of `raw` bytes stored in `stored` bytes, `sign` times.
    pub fn add(&mut self, sign: i64, raw: u32, stored: u64) {
        self.chunks += sign;
        self.bytes += sign * i64::from(raw);
        self.stored += sign * stored as i64;
    }

    pub(super) fn plus(&mut self, o: &Tally) {
        self.chunks += o.chunks;
        self.bytes += o.bytes;
        self.stored += o.stored;
    }
}

/// The chunks a set of images uses, and those no image outside it uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetTotals {
    /// Every distinct chunk the set uses.
    pub all: Tally,
    /// Chunks only the set uses: what removing it frees.
    pub exclusive: Tally,
}

/// The whole store's chunk figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreTotals {
    /// Chunks live images use.
    pub live: Tally,
    /// Live chunks with a copy in a non-condemned pack (each costs one
    /// `CHUNK_OVERHEAD` of framing).
    pub first_copies: i64,
    /// Further non-condemned copies of live chunks, stored bytes + framing.
    pub duplicate_bytes: i64,
    /// Non-condemned copies of chunks no live image uses, stored + framing.
    pub unreferenced_bytes: i64,
}

/// What the view knows of one chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkState {
    /// Raw length.
    pub raw: u32,
    /// Stored bytes of one copy, as image and name totals count it. Copies
    /// of a chunk are alike (gc copies frames as they are) unless two puts
    /// grouped it differently (concurrent puts, or one storing anew a chunk
    /// gc condemned): then this is fixed while images use the chunk, so
    /// their totals stay right, and `duplicates` takes the difference.
    pub stored: u32,
    /// Stored bytes of its copies in packs the gc plan has not condemned,
    /// added up, so the store's totals stay exact however copies differ.
    pub copies_stored: u32,
    /// The same for its copies in condemned packs.
    pub condemned_stored: u32,
    /// Live images using it.
    pub images: u32,
    /// XOR of their id prefixes.
    pub(super) xor: u64,
    /// Copies in packs the gc plan has not condemned.
    pub copies: u32,
    /// Copies in condemned packs.
    pub condemned: u32,
    /// Per name key, the live (image, name) pairs using it; sorted, no zeros.
    pub(super) names: Vec<(u64, u32)>,
}

impl ChunkState {
    /// Stored bytes of one copy, or 0 when no pack holds one.
    pub fn stored_one(&self) -> u64 {
        if self.copies + self.condemned > 0 {
            u64::from(self.stored)
        } else {
            0
        }
    }

    /// What [`ChunkState::stored`] becomes when no image holds it to a
    /// value: the mean of the copies that stay, else of the condemned ones.
    pub(super) fn stored_now(&self) -> u32 {
        self.copies_stored
            .checked_div(self.copies)
            .or_else(|| self.condemned_stored.checked_div(self.condemned))
            .unwrap_or(0)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.images == 0 && self.copies == 0 && self.condemned == 0
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(36 + 12 * self.names.len());
        for v in [
            self.raw,
            self.stored,
            self.copies_stored,
            self.condemned_stored,
            self.images,
            self.copies,
            self.condemned,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.xor.to_le_bytes());
        for (k, n) in &self.names {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    pub(super) fn decode(b: &[u8]) -> Option<ChunkState> {
        if b.len() < 36 || !(b.len() - 36).is_multiple_of(12) {
            return None;
        }
        let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(ChunkState {
            raw: u(0),
            stored: u(4),
            copies_stored: u(8),
            condemned_stored: u(12),
            images: u(16),
            copies: u(20),
            condemned: u(24),
            xor: u64::from_le_bytes(b[28..36].try_into().expect("8 bytes")),
            names: b[36..]
                .chunks_exact(12)
                .map(|e| {
                    let k = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
                    (k, u32::from_le_bytes(e[8..].try_into().expect("4 bytes")))
                })
                .collect(),
        })
    }

    /// Adds this state's figures to the totals, with `sign` +1 or -1.
    pub(super) fn contribute(&self, sign: i64, to: &mut Changes) {
        let copies = i64::from(self.copies);
        let framed_all = i64::from(self.copies_stored) + copies * CHUNK_OVERHEAD as i64;
        if self.images == 0 {
            to.store.unreferenced_bytes += sign * framed_all;
            return;
        }
        let stored = self.stored_one();
        to.store.live.add(sign, self.raw, stored);
        if self.copies > 0 {
            to.store.first_copies += sign;
            to.store.duplicate_bytes += sign * (framed_all - stored as i64 - CHUNK_OVERHEAD as i64);
        }
        let alone = self.names.len() == 1;
        for (k, _) in &self.names {
            let n = to.names.entry(*k).or_default();
            n.all.add(sign, self.raw, stored);
            if alone {
                n.exclusive.add(sign, self.raw, stored);
            }
        }
        if self.images == 1 {
            to.images.entry(self.xor).or_default().add(sign, self.raw, stored);
        }
    }

    pub(super) fn apply(mut self, d: &Delta) -> Option<ChunkState> {
        if d.raw != 0 {
            self.raw = d.raw;
        }
        let add = |v: u32, by: i64| u32::try_from(i64::from(v) + by).ok();
        self.copies_stored = add(self.copies_stored, d.copies_stored)?;
        self.condemned_stored = add(self.condemned_stored, d.condemned_stored)?;
        // Image totals counted `stored` when the images came in: it moves
        // only while no image holds it (or while no copy gave it a value).
        let was_held = self.images > 0;
        self.images = add(self.images, d.images)?;
        self.copies = add(self.copies, d.copies)?;
        self.condemned = add(self.condemned, d.condemned)?;
        self.xor ^= d.xor;
        for (k, by) in &d.names {
            match self.names.binary_search_by_key(k, |e| e.0) {
                Ok(i) => {
                    self.names[i].1 = add(self.names[i].1, *by)?;
                    if self.names[i].1 == 0 {
                        self.names.remove(i);
                    }
                }
                Err(i) if *by > 0 => self.names.insert(i, (*k, u32::try_from(*by).ok()?)),
                Err(_) if *by == 0 => {}
                Err(_) => return None,
            }
        }
        if !was_held || self.stored == 0 {
            self.stored = self.stored_now();
        }
        Some(self)
    }
}

/// A pending change to one chunk.
#[derive(Debug, Default)]
pub(super) struct Delta {
    /// Raw length when known (0: unknown).
    pub(super) raw: u32,
    pub(super) copies_stored: i64,
    pub(super) condemned_stored: i64,
    pub(super) images: i64,
    pub(super) xor: u64,
    pub(super) copies: i64,
    pub(super) condemned: i64,
    pub(super) names: Vec<(u64, i64)>,
}

impl Delta {
    pub(super) fn name(&mut self, key: u64, by: i64) {
        match self.names.iter_mut().find(|e| e.0 == key) {
            Some(e) => e.1 += by,
            None => self.names.push((key, by)),
        }
    }
}

/// Totals moved by one batch.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub(super) store: StoreTotals,
    pub(super) names: HashMap<u64, SetTotals>,
    /// Exclusive tallies by image prefix.
    pub(super) images: HashMap<u64, Tally>,
}

/// The key of a name in the view: the first 8 bytes of its BLAKE3.
pub fn name_key(name: &str) -> u64 {
    prefix(&Digest::of(name.as_bytes()))
}

pub(super) fn prefix(d: &Digest) -> u64 {
    u64::from_le_bytes(d.0[..8].try_into().expect("8 bytes"))
}

pub(super) fn encode_i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn decode_i64s<const N: usize>(b: &[u8]) -> Option<[i64; N]> {
    if b.len() != 8 * N {
        return None;
    }
    let mut out = [0; N];
    for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
        *o = i64::from_le_bytes(c.try_into().ok()?);
    }
    Some(out)
}

impl SetTotals {
    pub(super) fn encode(&self) -> Vec<u8> {
        let (a, e) = (&self.all, &self.exclusive);
        encode_i64s(&[a.chunks, a.bytes, a.stored, e.chunks, e.bytes, e.stored])
    }

    pub(super) fn decode(b: &[u8]) -> Option<SetTotals> {
        let [c, by, s, ec, eb, es] = decode_i64s::<6>(b)?;
        Some(SetTotals {
            all: Tally::from_array([c, by, s]),
            exclusive: Tally::from_array([ec, eb, es]),
        })
    }
}

impl StoreTotals {
    pub(super) fn encode(&self) -> Vec<u8> {
        let l = &self.live;
        encode_i64s(&[
            l.chunks,
            l.bytes,
            l.stored,
            self.first_copies,
            self.duplicate_bytes,
            self.unreferenced_bytes,
        ])
    }

    pub(super) fn decode(b: &[u8]) -> Option<StoreTotals> {
        let [c, by, s, f, d, u] = decode_i64s::<6>(b)?;
        Some(StoreTotals {
            live: Tally::from_array([c, by, s]),
            first_copies: f,
            duplicate_bytes: d,
            unreferenced_bytes: u,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_state_round_trips_and_applies() {
        let s = ChunkState {
            raw: 10,
            stored: 7,
            copies_stored: 7,
            condemned_stored: 0,
            images: 2,
            xor: 5,
            copies: 1,
            condemned: 0,
            names: vec![(3, 1), (9, 2)],
        };
        assert_eq!(ChunkState::decode(&s.encode()), Some(s.clone()));
        let mut d = Delta {
            images: -1,
            xor: 4,
            ..Delta::default()
        };
        d.name(9, -2);
        let t = s.clone().apply(&d).unwrap();
        assert_eq!((t.images, t.xor, t.names.clone()), (1, 1, vec![(3, 1)]));
        let mut under = Delta::default();
        under.name(7, -1);
        assert!(s.apply(&under).is_none(), "a count below zero is damage");
    }
}
