//! Index segments: what one put's packs contain, so a host can build its
//! local index from small files instead of reading every pack.
//!
//! ```text
//! header  16 B   magic "IMGSSEGM", version u32, entry count u32
//! entry   81 B   chunk id [32], then a Location (pack id [32], frame offset u64,
//!                raw_len u32, stored_len u32, codec u8)
//! trailer 32 B   BLAKE3 of everything before it
//! ```
//! A segment's name is the BLAKE3 of the file: `index/xx/<hex>`.

use crate::error::{Error, Result};
use crate::id::{ChunkId, Digest};
use crate::pack::Location;

const MAGIC: &[u8; 8] = b"IMGSSEGM";
const VERSION: u32 = 1;
const ENTRY_LEN: usize = 32 + Location::LEN;
/// Store directory of segments.
pub const INDEX_DIR: &str = "index";

/// Encodes a segment; returns its id and bytes.
pub fn encode(entries: &[(ChunkId, Location)]) -> (Digest, Vec<u8>) {
    let mut buf = Vec::with_capacity(16 + entries.len() * ENTRY_LEN + 32);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    let count = u32::try_from(entries.len()).expect("a segment holds < 4G entries");
    buf.extend_from_slice(&count.to_le_bytes());
    for (id, loc) in entries {
        buf.extend_from_slice(&id.0);
        buf.extend_from_slice(&loc.encode());
    }
    let sum = blake3::hash(&buf);
    buf.extend_from_slice(sum.as_bytes());
    (Digest::of(&buf), buf)
}

/// Decodes and checks a segment's bytes.
pub fn decode(bytes: &[u8], what: &str) -> Result<Vec<(ChunkId, Location)>> {
    if bytes.len() < 48 || &bytes[..8] != MAGIC {
        return Err(Error::corrupt(what, "not a segment (magic or length)"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(Error::corrupt(what, "checksum mismatch"));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(Error::corrupt(what, format!("unknown segment version {version}")));
    }
    let count = u32::from_le_bytes(body[12..16].try_into().expect("4 bytes")) as usize;
    let records = &body[16..];
    if records.len() != count.saturating_mul(ENTRY_LEN) {
        return Err(Error::corrupt(
            what,
            format!("{count} entries do not fit {} bytes", records.len()),
        ));
    }
    records
        .chunks_exact(ENTRY_LEN)
        .enumerate()
        .map(|(i, r)| {
            let id = Digest(r[..32].try_into().expect("32 bytes"));
            let loc = Location::decode(&r[32..])
                .ok_or_else(|| Error::corrupt(what, format!("entry {i}: bad location")))?;
            Ok((id, loc))
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
        };
        let entries = vec![(Digest::of(b"a"), loc), (Digest::of(b"b"), loc)];
        let (id, bytes) = encode(&entries);
        assert_eq!(id, Digest::of(&bytes));
        assert_eq!(decode(&bytes, "s").unwrap(), entries);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes, "s");
        }
    }
}
