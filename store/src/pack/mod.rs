//! Pack files: many compressed chunks in one immutable, self-describing file.
//!
//! ```text
//! header  32 B   magic "IMGSPACK", version u32, reserved u32, random nonce [16]
//! frame   48 B   chunk id [32], raw_len u32, stored_len u32, codec u8, reserved [7]
//!         ...    stored bytes, then the next frame
//! footer  56 B   per chunk: chunk id [32], frame offset u64, raw_len u32,
//!                stored_len u32, codec u8, offset in group u32, reserved [3]
//! tail    48 B   entry count u32, reserved u32, BLAKE3 of the footer entries [32],
//!                magic "IMGSPEND"
//! ```
//! A frame holds one chunk, or (version 2, codec 2) a group: consecutive
//! chunks compressed together as one zstd frame, because zstd on one 32 KiB
//! chunk at a time lacks the context to find repeats. A group's frame
//! header has its first chunk's id and the group's raw and stored lengths;
//! each member's footer entry has the group's frame offset and stored
//! length, and its own raw length and offset in the decoded group.
//! All integers little-endian. A pack's id is the BLAKE3 of the whole file,
//! so `verify --read-data` can check a pack without any other file. The
//! nonce makes every pack's id unique even when two packs hold the same
//! chunks: a put that stores a GC-condemned chunk anew must write a file GC
//! will not delete, not the condemned file again under the same name.

mod copy;
mod reader;
mod writer;

pub use copy::copy_frames;
pub use reader::{check_all, member, read_chunk, read_chunk_with, read_footer, read_group, Check};
pub use writer::{encode_run, Encoded, PackBuilder, PackBytes};

use crate::backend::{key_name, Backend};
use crate::codec::Codec;
use crate::error::{Error, Object, Result};
use crate::id::{ChunkId, Digest, PackId};

const MAGIC: &[u8; 8] = b"IMGSPACK";
const END_MAGIC: &[u8; 8] = b"IMGSPEND";
/// Packs with one chunk per frame.
const VERSION: u32 = 1;
/// Packs that may hold groups.
const VERSION_GROUPS: u32 = 2;
/// The largest decoded group a reader accepts, so a damaged frame header
/// cannot make it allocate gigabytes. Writers stay far below it.
pub const MAX_GROUP_RAW: u32 = 16 << 20;
/// Bytes of a pack's header.
pub const HEADER_LEN: usize = 32;
/// Bytes before each chunk's stored bytes.
pub const FRAME_HEADER_LEN: usize = 48;
/// Bytes of each chunk's footer entry.
pub const FOOTER_ENTRY_LEN: usize = 56;
/// Bytes of a pack's tail.
pub const TAIL_LEN: usize = 48;
/// Store directory of packs.
pub const PACKS_DIR: &str = "packs";

/// Where a chunk lives: the index maps chunk ids to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The pack holding the chunk.
    pub pack: PackId,
    /// Offset of the chunk's frame header in the pack.
    pub offset: u64,
    /// Length of the chunk's raw bytes.
    pub raw_len: u32,
    /// Length of its stored (maybe compressed) bytes.
    pub stored_len: u32,
    /// How the stored bytes are encoded.
    pub codec: Codec,
    /// Offset of the chunk's bytes in its decoded group; 0 for a chunk with
    /// a frame of its own.
    pub inner: u32,
}

impl Location {
    /// Encoded length of [`Location::encode`].
    pub const LEN: usize = 53;
    /// Length of the encoding before groups (no `inner`), still read.
    pub const LEN_V1: usize = 49;

    /// Fixed-width encoding used in the index and in segments.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(&self.pack.0);
        out[32..40].copy_from_slice(&self.offset.to_le_bytes());
        out[40..44].copy_from_slice(&self.raw_len.to_le_bytes());
        out[44..48].copy_from_slice(&self.stored_len.to_le_bytes());
        out[48] = self.codec as u8;
        out[49..53].copy_from_slice(&self.inner.to_le_bytes());
        out
    }

    /// Decodes [`Location::encode`], or the shorter encoding of builds
    /// before groups; `None` if the bytes cannot be one.
    pub fn decode(b: &[u8]) -> Option<Location> {
        let inner = match b.len() {
            Self::LEN => u32::from_le_bytes(b[49..53].try_into().ok()?),
            Self::LEN_V1 => 0,
            _ => return None,
        };
        let codec = Codec::from_u8(b[48])?;
        if b.len() == Self::LEN_V1 && codec == Codec::ZstdGroup {
            return None;
        }
        Some(Location {
            pack: Digest(b[..32].try_into().ok()?),
            offset: u64::from_le_bytes(b[32..40].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[40..44].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[44..48].try_into().ok()?),
            codec,
            inner,
        })
    }

    /// Whether the chunk is a member of a group frame.
    pub fn in_group(&self) -> bool {
        self.codec == Codec::ZstdGroup
    }
}

/// One chunk listed in a pack's footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Offset of its frame header.
    pub offset: u64,
    /// Raw length.
    pub raw_len: u32,
    /// Stored length (of the whole group, for a group member).
    pub stored_len: u32,
    /// Encoding of the stored bytes.
    pub codec: Codec,
    /// Offset in the decoded group; 0 outside groups.
    pub inner: u32,
}

impl PackEntry {
    /// This entry as a location in `pack`.
    pub fn location(&self, pack: PackId) -> Location {
        Location {
            pack,
            offset: self.offset,
            raw_len: self.raw_len,
            stored_len: self.stored_len,
            codec: self.codec,
            inner: self.inner,
        }
    }
}

/// The frame bytes (header and stored bytes) each entry accounts for: its
/// own frame's, or for a group member a share of its group's by raw length
/// (the shares of a group add up to its frame). So a pack's size is exactly
/// the sum of its entries' shares, a footer entry per chunk, and its header
/// and tail — what storage reports rely on.
pub fn framed_shares(entries: &[PackEntry]) -> Vec<u64> {
    let mut shares = Vec::with_capacity(entries.len());
    for frame in frames(entries) {
        let framed = u64::from(frame[0].stored_len) + FRAME_HEADER_LEN as u64;
        if let [_] = frame {
            shares.push(framed);
            continue;
        }
        let total: u64 = frame.iter().map(|e| u64::from(e.raw_len)).sum::<u64>().max(1);
        // Each member gets the frame bytes up to its end minus those up to
        // its start, so rounding never loses or adds a byte over the frame.
        let mut before = 0;
        for e in frame {
            let upto = before + u64::from(e.raw_len);
            shares.push(framed * upto / total - framed * before / total);
            before = upto;
        }
    }
    shares
}

/// The store key of a pack.
pub fn key(id: &PackId) -> String {
    id.key(PACKS_DIR)
}

/// Every pack in the store behind `backend`: id and key. A file under
/// `packs/` whose name is not a pack id is damage.
pub fn list(backend: &dyn Backend) -> Result<Vec<(PackId, String)>> {
    let mut out = Vec::new();
    for key in backend.list(PACKS_DIR)? {
        let id = Digest::from_hex(key_name(&key))
            .map_err(|_| Error::corrupt(Object::Pack { key: key.clone() }, "file name is not a pack id"))?;
        out.push((id, key));
    }
    Ok(out)
}
/// `entries` split into frames: a chunk's own, or a group's members (which
/// a footer lists one after another).
pub fn frames(entries: &[PackEntry]) -> impl Iterator<Item = &[PackEntry]> {
    entries
        .chunk_by(|a, b| a.codec == Codec::ZstdGroup && b.codec == Codec::ZstdGroup && a.offset == b.offset)
}

fn frame_what(loc: &Location) -> Object {
    Object::Frame {
        pack: loc.pack,
        offset: loc.offset,
    }
}
#[cfg(test)]
mod tests;
