//! Manifests: one image as a list of chunks and zero runs, plus metadata
//! lifted from the image itself (SIF deffile, labels, descriptors).
//!
//! A manifest is a pure function of the image's bytes and the store's chunker,
//! so it is written once under the image id and never changes; what differs
//! between puts of the same bytes (who, when, message, user labels) lives in
//! the ref. Layout, little-endian:
//!
//! ```text
//! header  64 B   magic "IMGSMANI", version u32, reserved u32, image size u64,
//!                image BLAKE3 [32], entry count u64
//! entry   41 B   kind u8 (0 chunk, 1 zero run), length u64, chunk id [32] (zeros for a run)
//! meta           u32 length, then JSON (ManifestMeta): tolerant of added fields
//! trailer 32 B   BLAKE3 of everything before it
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{ChunkId, Digest, ImageId};
use crate::sif::SifInfo;

const MAGIC: &[u8; 8] = b"IMGSMANI";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 41;
/// Store directory of manifests.
pub const MANIFESTS_DIR: &str = "manifests";

/// One piece of an image, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A stored chunk of `len` bytes.
    Chunk {
        /// The chunk.
        id: ChunkId,
        /// Its length.
        len: u32,
    },
    /// `len` zero bytes, stored as nothing (a hole on get).
    Zero {
        /// Run length.
        len: u64,
    },
}

impl Entry {
    /// Bytes of the image this entry covers.
    pub fn len(&self) -> u64 {
        match self {
            Entry::Chunk { len, .. } => u64::from(*len),
            Entry::Zero { len } => *len,
        }
    }

    /// True for a zero-length entry (never written).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Metadata that comes from the image's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMeta {
    /// SIF header facts, when the image is a SIF file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sif: Option<SifInfo>,
}

/// An image: its size, hash, pieces and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Image size in bytes.
    pub size: u64,
    /// BLAKE3 of the image bytes; also its id.
    pub id: ImageId,
    /// The pieces in order; their lengths add up to `size`.
    pub entries: Vec<Entry>,
    /// Metadata lifted from the image.
    pub meta: ManifestMeta,
}

/// The store key of an image's manifest.
pub fn key(id: &ImageId) -> String {
    id.0.key(MANIFESTS_DIR)
}

/// The entry count from a manifest's header, without reading the rest.
pub fn entry_count(file: &dyn crate::backend::ReadAt, what: &str) -> Result<u64> {
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, 0)?;
    if &head[..8] != MAGIC {
        return Err(Error::corrupt(what, "not a manifest (magic)"));
    }
    Ok(u64::from_le_bytes(head[56..64].try_into().expect("8 bytes")))
}

impl Manifest {
    /// Serialized bytes.
    pub fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).expect("metadata serializes");
        let mut buf = Vec::with_capacity(HEADER_LEN + self.entries.len() * ENTRY_LEN + meta.len() + 36);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&self.size.to_le_bytes());
        buf.extend_from_slice(&self.id.0 .0);
        buf.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            match e {
                Entry::Chunk { id, len } => {
                    buf.push(0);
                    buf.extend_from_slice(&u64::from(*len).to_le_bytes());
                    buf.extend_from_slice(&id.0);
                }
                Entry::Zero { len } => {
                    buf.push(1);
                    buf.extend_from_slice(&len.to_le_bytes());
                    buf.extend_from_slice(&[0u8; 32]);
                }
            }
        }
        buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        buf.extend_from_slice(&meta);
        let sum = blake3::hash(&buf);
        buf.extend_from_slice(sum.as_bytes());
        buf
    }

    /// Parses and checks a manifest; `what` names it in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Manifest> {
        let bad = |d: String| Error::corrupt(what, d);
        if bytes.len() < HEADER_LEN + 4 + 32 || &bytes[..8] != MAGIC {
            return Err(bad("not a manifest (magic or length)".into()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("checksum mismatch".into()));
        }
        let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!("unknown manifest version {version}")));
        }
        let size = u64_at(16);
        let id = ImageId(Digest(body[24..56].try_into().expect("32 bytes")));
        let count = u64_at(56);
        let entries_len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(ENTRY_LEN))
            .filter(|n| HEADER_LEN + n + 4 <= body.len())
            .ok_or_else(|| bad(format!("{count} entries do not fit the file")))?;
        let mut entries = Vec::with_capacity(count as usize);
        let mut total: u64 = 0;
        for (i, r) in body[HEADER_LEN..HEADER_LEN + entries_len]
            .chunks_exact(ENTRY_LEN)
            .enumerate()
        {
            let len = u64::from_le_bytes(r[1..9].try_into().expect("8 bytes"));
            let entry = match r[0] {
                0 => Entry::Chunk {
                    id: Digest(r[9..41].try_into().expect("32 bytes")),
                    len: u32::try_from(len).map_err(|_| bad(format!("entry {i}: chunk length {len}")))?,
                },
                1 => Entry::Zero { len },
                k => return Err(bad(format!("entry {i}: unknown kind {k}"))),
            };
            total = total
                .checked_add(len)
                .ok_or_else(|| bad(format!("entry {i}: lengths overflow")))?;
            entries.push(entry);
        }
        if total != size {
            return Err(bad(format!("entries cover {total} bytes, header says {size}")));
        }
        let rest = &body[HEADER_LEN + entries_len..];
        let meta_len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if rest.len() != 4 + meta_len {
            return Err(bad("metadata length does not match the file".into()));
        }
        let meta = serde_json::from_slice(&rest[4..]).map_err(|e| bad(format!("metadata: {e}")))?;
        Ok(Manifest {
            size,
            id,
            entries,
            meta,
        })
    }

    /// Distinct chunk ids and the sum of their lengths (bytes the image needs stored).
    pub fn unique_chunks(&self) -> (usize, u64) {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        for e in &self.entries {
            if let Entry::Chunk { id, len } = e {
                if seen.insert(*id) {
                    bytes += u64::from(*len);
                }
            }
        }
        (seen.len(), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Manifest {
        Manifest {
            size: 100 + 4096 + 7,
            id: ImageId(Digest::of(b"image")),
            entries: vec![
                Entry::Chunk {
                    id: Digest::of(b"a"),
                    len: 100,
                },
                Entry::Zero { len: 4096 },
                Entry::Chunk {
                    id: Digest::of(b"b"),
                    len: 7,
                },
            ],
            meta: ManifestMeta::default(),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode(), "m").unwrap(), m);
    }

    #[test]
    fn damage_is_named() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                matches!(Manifest::decode(&bad, "m"), Err(Error::Corrupt { .. })),
                "flip at {i}"
            );
        }
        assert!(matches!(
            Manifest::decode(&bytes[..bytes.len() - 1], "m"),
            Err(Error::Corrupt { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Manifest::decode(&bytes, "m");
        }
    }
}
