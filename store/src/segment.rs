//! Index segments: what one put's packs contain, so a host can build its
//! local index from small files instead of reading every pack.
//!
//! ```text
//! header  16 B   magic "IMGSSEGM", version u32, entry count u32
//! entry   81 B   chunk id [32], then a Location (pack id [32], frame offset u64,
//!                raw_len u32, stored_len u32, codec u8)
//!         85 B   in version 2: the Location ends with the offset in its group u32
//! trailer 32 B   BLAKE3 of everything before it
//! ```
//! A segment's name is the BLAKE3 of the file: `index/xx/<hex>`. Version 2
//! is written only when an entry is in a group, so a store without groups
//! stays readable by the builds before them.

use crate::error::{Error, Object, Result};
use crate::id::{ChunkId, Digest};
use crate::pack::Location;

const MAGIC: &[u8; 8] = b"IMGSSEGM";
const VERSION: u32 = 1;
const VERSION_GROUPS: u32 = 2;
/// Store directory of segments.
pub const INDEX_DIR: &str = "index";
/// Store directory of GC tombstones: `gc/deleted/<pack-id>`, one per
/// deleted pack, listing its chunks so every host's index drops them.
pub const TOMBSTONES_DIR: &str = "gc/deleted";
const TOMB_MAGIC: &[u8; 8] = b"IMGSTOMB";

/// The version a file of `locations` is written in, and its encoded
/// location length.
fn version_for<'a>(mut locations: impl Iterator<Item = &'a Location>) -> (u32, usize) {
    if locations.any(|l| l.in_group()) {
        (VERSION_GROUPS, Location::LEN)
    } else {
        (VERSION, Location::LEN_V1)
    }
}

/// The encoded location length of a file of `version`.
fn location_len(version: u32, what: &Object, kind: &str) -> Result<usize> {
    match version {
        VERSION => Ok(Location::LEN_V1),
        VERSION_GROUPS => Ok(Location::LEN),
        v => Err(Error::corrupt(what, format!("unknown {kind} version {v}"))),
    }
}

/// Encodes a segment; returns its id and bytes.
pub fn encode(entries: &[(ChunkId, Location)]) -> (Digest, Vec<u8>) {
    let (version, loc_len) = version_for(entries.iter().map(|(_, l)| l));
    let mut buf = Vec::with_capacity(16 + entries.len() * (32 + loc_len) + 32);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&version.to_le_bytes());
    let count = u32::try_from(entries.len()).expect("a segment holds < 4G entries");
    buf.extend_from_slice(&count.to_le_bytes());
    for (id, loc) in entries {
        buf.extend_from_slice(&id.0);
        buf.extend_from_slice(&loc.encode()[..loc_len]);
    }
    let sum = blake3::hash(&buf);
    buf.extend_from_slice(sum.as_bytes());
    (Digest::of(&buf), buf)
}

/// Decodes and checks a segment's bytes.
pub fn decode(bytes: &[u8], what: &Object) -> Result<Vec<(ChunkId, Location)>> {
    if bytes.len() < 48 || &bytes[..8] != MAGIC {
        return Err(Error::corrupt(what, "not a segment (magic or length)"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(Error::corrupt(what, "checksum mismatch"));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    let entry_len = 32 + location_len(version, what, "segment")?;
    let count = u32::from_le_bytes(body[12..16].try_into().expect("4 bytes")) as usize;
    let records = &body[16..];
    if records.len() != count.saturating_mul(entry_len) {
        return Err(Error::corrupt(
            what,
            format!("{count} entries do not fit {} bytes", records.len()),
        ));
    }
    records
        .chunks_exact(entry_len)
        .enumerate()
        .map(|(i, r)| {
            let id = Digest(r[..32].try_into().expect("32 bytes"));
            let loc = Location::decode(&r[32..])
                .ok_or_else(|| Error::corrupt(what, format!("entry {i}: bad location")))?;
            Ok((id, loc))
        })
        .collect()
}

/// Encodes a tombstone: the chunks a deleted pack held, each with the
/// location of its surviving copy when GC knew one (a repack, or a copy a
/// put stored elsewhere), so an index that pointed into the pack can be
/// moved to the copy instead of forgetting the chunk.
///
/// ```text
/// header  16 B   magic "IMGSTOMB", version u32, count u32
/// entry   82 B   chunk id [32], has copy u8, Location [49] (zeros if none)
///         86 B   in version 2 (a copy is in a group): Location [53]
/// trailer 32 B   BLAKE3 of everything before it
/// ```
pub fn encode_tombstone(chunks: &[(ChunkId, Option<Location>)]) -> Vec<u8> {
    let (version, loc_len) = version_for(chunks.iter().filter_map(|(_, c)| c.as_ref()));
    let mut buf = Vec::with_capacity(16 + chunks.len() * (33 + loc_len) + 32);
    buf.extend_from_slice(TOMB_MAGIC);
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&u32::try_from(chunks.len()).expect("< 4G chunks").to_le_bytes());
    for (id, copy) in chunks {
        buf.extend_from_slice(&id.0);
        match copy {
            Some(loc) => {
                buf.push(1);
                buf.extend_from_slice(&loc.encode()[..loc_len]);
            }
            None => {
                buf.push(0);
                buf.extend_from_slice(&[0u8; Location::LEN][..loc_len]);
            }
        }
    }
    let sum = blake3::hash(&buf);
    buf.extend_from_slice(sum.as_bytes());
    buf
}

/// Decodes and checks a tombstone.
pub fn decode_tombstone(bytes: &[u8], what: &Object) -> Result<Vec<(ChunkId, Option<Location>)>> {
    if bytes.len() < 48 || &bytes[..8] != TOMB_MAGIC {
        return Err(Error::corrupt(what, "not a tombstone (magic or length)"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(Error::corrupt(what, "checksum mismatch"));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    let entry_len = 33 + location_len(version, what, "tombstone")?;
    let count = u32::from_le_bytes(body[12..16].try_into().expect("4 bytes")) as usize;
    let entries = &body[16..];
    if entries.len() != count.saturating_mul(entry_len) {
        return Err(Error::corrupt(what, "entry count does not match the length"));
    }
    entries
        .chunks_exact(entry_len)
        .enumerate()
        .map(|(i, e)| {
            let id = Digest(e[..32].try_into().expect("32 bytes"));
            let copy = match e[32] {
                0 => None,
                1 => Some(
                    Location::decode(&e[33..])
                        .ok_or_else(|| Error::corrupt(what, format!("entry {i}: bad location")))?,
                ),
                b => return Err(Error::corrupt(what, format!("entry {i}: bad flag {b}"))),
            };
            Ok((id, copy))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let loc = Location {
            pack: Digest::of(b"p"),
            offset: 16,
            raw_len: 10,
            stored_len: 8,
            codec: Codec::Zstd,
            inner: 0,
        };
        let entries = vec![(Digest::of(b"a"), loc), (Digest::of(b"b"), loc)];
        let (id, bytes) = encode(&entries);
        assert_eq!(id, Digest::of(&bytes));
        assert_eq!(
            &bytes[8..12],
            &1u32.to_le_bytes(),
            "no group: version 1, as before groups"
        );
        assert_eq!(bytes.len(), 16 + 2 * 81 + 32);
        assert_eq!(decode(&bytes, &Object::InMemory).unwrap(), entries);

        let member = Location {
            codec: Codec::ZstdGroup,
            inner: 4096,
            ..loc
        };
        let entries = vec![(Digest::of(b"a"), loc), (Digest::of(b"c"), member)];
        let (_, bytes) = encode(&entries);
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(bytes.len(), 16 + 2 * 85 + 32);
        assert_eq!(decode(&bytes, &Object::InMemory).unwrap(), entries);
    }

    #[test]
    fn tombstone_round_trip() {
        let loc = Location {
            pack: Digest::of(b"p"),
            offset: 32,
            raw_len: 10,
            stored_len: 8,
            codec: Codec::Raw,
            inner: 0,
        };
        let ids = vec![(Digest::of(b"a"), Some(loc)), (Digest::of(b"b"), None)];
        assert_eq!(
            decode_tombstone(&encode_tombstone(&ids), &Object::InMemory).unwrap(),
            ids
        );
        assert!(decode_tombstone(&encode_tombstone(&ids)[1..], &Object::InMemory).is_err());
        let member = Location {
            codec: Codec::ZstdGroup,
            inner: 77,
            ..loc
        };
        let ids = vec![(Digest::of(b"a"), Some(member)), (Digest::of(b"b"), None)];
        assert_eq!(
            decode_tombstone(&encode_tombstone(&ids), &Object::InMemory).unwrap(),
            ids
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes, &Object::InMemory);
            let _ = decode_tombstone(&bytes, &Object::InMemory);
        }
    }
}
