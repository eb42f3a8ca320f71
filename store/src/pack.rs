//! Pack files: many compressed chunks in one immutable, self-describing file.
//!
//! ```text
//! header  32 B   magic "IMGSPACK", version u32, reserved u32, random nonce [16]
//! frame   48 B   chunk id [32], raw_len u32, stored_len u32, codec u8, reserved [7]
//!         ...    stored bytes, then the next frame
//! footer  56 B   per chunk: chunk id [32], frame offset u64, raw_len u32,
//!                stored_len u32, codec u8, reserved [7]
//! tail    48 B   entry count u32, reserved u32, BLAKE3 of the footer entries [32],
//!                magic "IMGSPEND"
//! ```
//! All integers little-endian. A pack's id is the BLAKE3 of the whole file,
//! so `verify --read-data` can check a pack without any other file. The
//! nonce makes every pack's id unique even when two packs hold the same
//! chunks: a put that stores a GC-condemned chunk anew must write a file GC
//! will not delete, not the condemned file again under the same name.

use crate::backend::{pad_to_page, Backend, ReadAt, DIRECT_ALIGN};
use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::id::{ChunkId, Digest, PackId};

const MAGIC: &[u8; 8] = b"IMGSPACK";
const END_MAGIC: &[u8; 8] = b"IMGSPEND";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
/// Bytes before each chunk's stored bytes.
pub const FRAME_HEADER_LEN: usize = 48;
const FOOTER_ENTRY_LEN: usize = 56;
const TAIL_LEN: usize = 48;
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
}

impl Location {
    /// Encoded length of [`Location::encode`].
    pub const LEN: usize = 49;

    /// Fixed-width encoding used in the index and in segments.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(&self.pack.0);
        out[32..40].copy_from_slice(&self.offset.to_le_bytes());
        out[40..44].copy_from_slice(&self.raw_len.to_le_bytes());
        out[44..48].copy_from_slice(&self.stored_len.to_le_bytes());
        out[48] = self.codec as u8;
        out
    }

    /// Decodes [`Location::encode`]; `None` if the bytes cannot be one.
    pub fn decode(b: &[u8]) -> Option<Location> {
        if b.len() != Self::LEN {
            return None;
        }
        Some(Location {
            pack: Digest(b[..32].try_into().ok()?),
            offset: u64::from_le_bytes(b[32..40].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[40..44].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[44..48].try_into().ok()?),
            codec: Codec::from_u8(b[48])?,
        })
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
    /// Stored length.
    pub stored_len: u32,
    /// Encoding of the stored bytes.
    pub codec: Codec,
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
        }
    }
}

/// The store key of a pack.
pub fn key(id: &PackId) -> String {
    id.key(PACKS_DIR)
}

/// Every pack in the store behind `backend`: id and key. A file under
/// `packs/` whose name is not a pack id is damage.
pub fn list(backend: &dyn Backend) -> Result<Vec<(PackId, String)>> {
    let mut out = Vec::new();
    for shard in backend.list(PACKS_DIR)? {
        for name in backend.list(&format!("{PACKS_DIR}/{shard}"))? {
            let key = format!("{PACKS_DIR}/{shard}/{name}");
            let id = Digest::from_hex(&name)
                .map_err(|_| Error::corrupt(format!("pack {key}"), "file name is not a pack id"))?;
            out.push((id, key));
        }
    }
    Ok(out)
}

/// Builds a pack in memory; [`PackBuilder::finish`] gives its bytes and id.
/// The pack starts on a page boundary of the buffer, so the backend can
/// write it with direct I/O ([`Backend::stage`](crate::backend::Backend::stage))
/// instead of copying it into the page cache.
pub struct PackBuilder {
    /// `start` bytes of padding, then the pack.
    buf: Vec<u8>,
    start: usize,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        Self::with_capacity(1 << 20)
    }

    /// An empty pack with room for `bytes` before it reallocates: sized to
    /// the pack limit, a growing pack never doubles past it (nor moves off
    /// its page boundary).
    pub fn with_capacity(bytes: usize) -> Self {
        Self::reuse(Vec::with_capacity(bytes.max(HEADER_LEN) + DIRECT_ALIGN))
    }

    /// An empty pack in the buffer of a written one (its bytes are dropped,
    /// its capacity kept: no new allocation, no page faults).
    pub fn reuse(mut buf: Vec<u8>) -> Self {
        buf.clear();
        let start = pad_to_page(&mut buf);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        buf.extend_from_slice(&nonce);
        PackBuilder {
            buf,
            start,
            entries: Vec::new(),
        }
    }

    /// Appends one chunk's stored bytes.
    pub fn add(&mut self, id: ChunkId, raw_len: u32, codec: Codec, stored: &[u8]) {
        let offset = self.len() as u64;
        let stored_len = u32::try_from(stored.len()).expect("chunks are far below 4 GiB");
        self.buf.extend_from_slice(&id.0);
        self.buf.extend_from_slice(&raw_len.to_le_bytes());
        self.buf.extend_from_slice(&stored_len.to_le_bytes());
        self.buf.push(codec as u8);
        self.buf.extend_from_slice(&[0u8; 7]);
        self.buf.extend_from_slice(stored);
        self.entries.push(PackEntry {
            id,
            offset,
            raw_len,
            stored_len,
            codec,
        });
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True when no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the footer; returns the pack's id, bytes and entries.
    pub fn finish(mut self) -> (PackId, PackBytes, Vec<PackEntry>) {
        let footer_start = self.buf.len();
        for e in &self.entries {
            self.buf.extend_from_slice(&e.id.0);
            self.buf.extend_from_slice(&e.offset.to_le_bytes());
            self.buf.extend_from_slice(&e.raw_len.to_le_bytes());
            self.buf.extend_from_slice(&e.stored_len.to_le_bytes());
            self.buf.push(e.codec as u8);
            self.buf.extend_from_slice(&[0u8; 7]);
        }
        let sum = blake3::hash(&self.buf[footer_start..]);
        let count = u32::try_from(self.entries.len()).expect("a pack holds < 4G chunks");
        self.buf.extend_from_slice(&count.to_le_bytes());
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.buf.extend_from_slice(sum.as_bytes());
        self.buf.extend_from_slice(END_MAGIC);
        let bytes = PackBytes {
            buf: self.buf,
            start: self.start,
        };
        (Digest::of(&bytes), bytes, self.entries)
    }
}

/// A finished pack's bytes (derefs to them), in the builder's buffer.
pub struct PackBytes {
    buf: Vec<u8>,
    start: usize,
}

impl PackBytes {
    /// The buffer, for [`PackBuilder::reuse`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl std::ops::Deref for PackBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Reads a pack's footer: the list of chunks it holds. Checks magic and the
/// footer checksum, and that every entry lies inside the file.
pub fn read_footer(file: &dyn ReadAt, what: &str) -> Result<Vec<PackEntry>> {
    let len = file.size()?;
    if len < (HEADER_LEN + TAIL_LEN) as u64 {
        return Err(Error::corrupt(
            what,
            format!("{len} bytes is too short for a pack"),
        ));
    }
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, 0)?;
    if &head[..8] != MAGIC {
        return Err(Error::corrupt(what, "bad magic at offset 0"));
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(Error::corrupt(what, format!("unknown pack version {version}")));
    }
    let mut tail = [0u8; TAIL_LEN];
    let tail_at = len - TAIL_LEN as u64;
    file.read_exact_at(&mut tail, tail_at)?;
    if &tail[40..48] != END_MAGIC {
        return Err(Error::corrupt(
            what,
            format!("bad end magic at offset {}", tail_at + 40),
        ));
    }
    let count = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
    let footer_len = count
        .checked_mul(FOOTER_ENTRY_LEN as u64)
        .filter(|n| *n <= tail_at - HEADER_LEN as u64)
        .ok_or_else(|| Error::corrupt(what, format!("footer claims {count} entries, more than fit")))?;
    let footer_at = tail_at - footer_len;
    let mut footer = vec![0u8; footer_len as usize];
    file.read_exact_at(&mut footer, footer_at)?;
    if blake3::hash(&footer).as_bytes() != &tail[8..40] {
        return Err(Error::corrupt(
            what,
            format!("footer checksum mismatch at offset {footer_at}"),
        ));
    }
    footer
        .chunks_exact(FOOTER_ENTRY_LEN)
        .enumerate()
        .map(|(i, e)| {
            let entry = PackEntry {
                id: Digest(e[..32].try_into().expect("32 bytes")),
                offset: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
                raw_len: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
                stored_len: u32::from_le_bytes(e[44..48].try_into().expect("4 bytes")),
                codec: Codec::from_u8(e[48]).ok_or_else(|| {
                    Error::corrupt(what, format!("footer entry {i}: unknown codec {}", e[48]))
                })?,
            };
            let end = entry.offset + FRAME_HEADER_LEN as u64 + u64::from(entry.stored_len);
            if entry.offset < HEADER_LEN as u64 || end > footer_at {
                return Err(Error::corrupt(
                    what,
                    format!("footer entry {i} points outside the data"),
                ));
            }
            Ok(entry)
        })
        .collect()
}

/// How much of a chunk [`read_chunk_with`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The frame header against the index, the length, and the bytes
    /// against the chunk id.
    Hash,
    /// The frame header and the length only: for a caller that checks the
    /// bytes another way (`get` to a file hashes the whole image before the
    /// file appears).
    Frame,
}

/// Reads, decodes and checks the chunk `id` at `loc` in `file`.
/// Every failure names the pack, the offset and the chunk.
pub fn read_chunk(file: &dyn ReadAt, id: &ChunkId, loc: &Location) -> Result<Vec<u8>> {
    read_chunk_with(file, id, loc, Check::Hash)
}

/// [`read_chunk`] with the checks `check` names.
pub fn read_chunk_with(file: &dyn ReadAt, id: &ChunkId, loc: &Location, check: Check) -> Result<Vec<u8>> {
    let what = frame_what(loc);
    let raw = match loc.codec {
        // Header and bytes read apart, so the bytes need no moving.
        Codec::Raw => {
            let mut head = [0u8; FRAME_HEADER_LEN];
            read_at(file, &mut head, loc.offset, id, &what)?;
            check_header(&head, id, loc, &what)?;
            let mut raw = vec![0u8; loc.stored_len as usize];
            read_at(file, &mut raw, loc.offset + FRAME_HEADER_LEN as u64, id, &what)?;
            codec::check_len(&raw, loc.raw_len as usize, id, &what)?;
            raw
        }
        Codec::Zstd => {
            let buf = read_frame(file, id, loc, &what)?;
            codec::decompress(&buf[FRAME_HEADER_LEN..], loc.raw_len as usize, id, &what)?
        }
    };
    if check == Check::Hash {
        codec::check_hash(&raw, id, &what)?;
    }
    Ok(raw)
}

/// Like [`read_chunk`], and also returns the stored bytes (for repacking
/// without recompressing: only bytes that decode to their id are copied).
pub fn read_checked(file: &dyn ReadAt, id: &ChunkId, loc: &Location) -> Result<(Vec<u8>, Vec<u8>)> {
    let what = frame_what(loc);
    let mut buf = read_frame(file, id, loc, &what)?;
    let raw = codec::decode(
        loc.codec,
        &buf[FRAME_HEADER_LEN..],
        loc.raw_len as usize,
        id,
        &what,
    )?;
    buf.drain(..FRAME_HEADER_LEN);
    Ok((raw, buf))
}

fn frame_what(loc: &Location) -> String {
    format!("pack {} at offset {}", key(&loc.pack), loc.offset)
}

fn read_at(file: &dyn ReadAt, buf: &mut [u8], offset: u64, id: &ChunkId, what: &str) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| match e {
        Error::Corrupt { .. } => Error::corrupt(what, format!("chunk {id}: pack is truncated")),
        other => other,
    })
}

/// The frame (header and stored bytes) at `loc`, its header checked.
fn read_frame(file: &dyn ReadAt, id: &ChunkId, loc: &Location, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; FRAME_HEADER_LEN + loc.stored_len as usize];
    read_at(file, &mut buf, loc.offset, id, what)?;
    check_header(&buf[..FRAME_HEADER_LEN], id, loc, what)?;
    Ok(buf)
}

/// A frame header must say what the index says of the chunk.
fn check_header(head: &[u8], id: &ChunkId, loc: &Location, what: &str) -> Result<()> {
    let frame_id = Digest(head[..32].try_into().expect("32 bytes"));
    let raw_len = u32::from_le_bytes(head[32..36].try_into().expect("4 bytes"));
    let stored_len = u32::from_le_bytes(head[36..40].try_into().expect("4 bytes"));
    if frame_id != *id
        || raw_len != loc.raw_len
        || stored_len != loc.stored_len
        || head[40] != loc.codec as u8
    {
        return Err(Error::corrupt(
            what,
            format!("chunk {id}: frame header does not match the index"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl ReadAt for Mem {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            let start = offset as usize;
            let src = self
                .0
                .get(start..start + buf.len())
                .ok_or_else(|| Error::corrupt("mem", "short"))?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn size(&self) -> Result<u64> {
            Ok(self.0.len() as u64)
        }
    }

    fn sample() -> (PackId, Vec<u8>, Vec<PackEntry>, Vec<Vec<u8>>) {
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let mut b = PackBuilder::new();
        for c in &chunks {
            b.add(ChunkId::of(c), c.len() as u32, Codec::Raw, c);
        }
        let (id, bytes, entries) = b.finish();
        (id, bytes.to_vec(), entries, chunks)
    }

    #[test]
    fn footer_and_chunks_round_trip() {
        let (id, bytes, entries, chunks) = sample();
        assert_eq!(id, Digest::of(&bytes));
        let file = Mem(bytes);
        assert_eq!(read_footer(&file, "p").unwrap(), entries);
        for (e, c) in entries.iter().zip(&chunks) {
            assert_eq!(&read_chunk(&file, &e.id, &e.location(id)).unwrap(), c);
        }
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let (id, bytes, entries, _) = sample();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let file = Mem(bad);
            let footer_ok = read_footer(&file, "p").map(|f| f == entries).unwrap_or(false);
            let chunks_ok = entries
                .iter()
                .all(|e| read_chunk(&file, &e.id, &e.location(id)).is_ok());
            // Reserved bytes are not checked; everything else must be.
            let reserved = (12..32).contains(&i) || (bytes.len() - 44..bytes.len() - 40).contains(&i);
            let in_frame_pad = entries.iter().any(|e| {
                let o = e.offset as usize;
                (o + 41..o + 48).contains(&i)
            });
            let in_footer_pad = false;
            if !(reserved || in_frame_pad || in_footer_pad) {
                assert!(!(footer_ok && chunks_ok), "flip at {i} went unnoticed");
            }
        }
    }

    #[test]
    fn location_round_trip() {
        let loc = Location {
            pack: Digest::of(b"p"),
            offset: 1 << 40,
            raw_len: 65536,
            stored_len: 1234,
            codec: Codec::Zstd,
        };
        assert_eq!(Location::decode(&loc.encode()), Some(loc));
        assert_eq!(Location::decode(&[0u8; 10]), None);
    }
}
