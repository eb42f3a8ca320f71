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

use crate::backend::{key_name, Backend, ReadAt};
use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::fsutil::{pad_to_page, DIRECT_ALIGN};
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
const HEADER_LEN: usize = 32;
/// Bytes before each chunk's stored bytes.
pub const FRAME_HEADER_LEN: usize = 48;
/// Bytes of each chunk's footer entry.
pub const FOOTER_ENTRY_LEN: usize = 56;
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
            .map_err(|_| Error::corrupt(format!("pack {key}"), "file name is not a pack id"))?;
        out.push((id, key));
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
    /// Whether a group was added: the pack is then version 2.
    groups: bool,
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
            groups: false,
        }
    }

    /// Appends one chunk's stored bytes (raw or one zstd frame).
    pub fn add(&mut self, id: ChunkId, raw_len: u32, codec: Codec, stored: &[u8]) {
        assert!(codec != Codec::ZstdGroup, "groups are added with add_group");
        let offset = self.frame(&id, raw_len, codec, stored);
        self.entries.push(PackEntry {
            id,
            offset,
            raw_len,
            stored_len: stored.len() as u32,
            codec,
            inner: 0,
        });
    }

    /// Appends a group: `stored` is one zstd frame of the raw bytes of
    /// `members` (id, raw length), one after another.
    pub fn add_group(&mut self, members: &[(ChunkId, u32)], stored: &[u8]) {
        let raw: u64 = members.iter().map(|(_, len)| u64::from(*len)).sum();
        let raw = u32::try_from(raw)
            .ok()
            .filter(|r| *r <= MAX_GROUP_RAW)
            .expect("groups are far below MAX_GROUP_RAW");
        let offset = self.frame(&members[0].0, raw, Codec::ZstdGroup, stored);
        let mut inner = 0;
        for (id, raw_len) in members {
            self.entries.push(PackEntry {
                id: *id,
                offset,
                raw_len: *raw_len,
                stored_len: stored.len() as u32,
                codec: Codec::ZstdGroup,
                inner,
            });
            inner += raw_len;
        }
        self.groups = true;
    }

    /// Appends a frame header and stored bytes; returns the frame's offset.
    fn frame(&mut self, id: &ChunkId, raw_len: u32, codec: Codec, stored: &[u8]) -> u64 {
        let offset = self.len() as u64;
        let stored_len = u32::try_from(stored.len()).expect("chunks are far below 4 GiB");
        self.buf.extend_from_slice(&id.0);
        self.buf.extend_from_slice(&raw_len.to_le_bytes());
        self.buf.extend_from_slice(&stored_len.to_le_bytes());
        self.buf.push(codec as u8);
        self.buf.extend_from_slice(&[0u8; 7]);
        self.buf.extend_from_slice(stored);
        offset
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
        if self.groups {
            let at = self.start + 8;
            self.buf[at..at + 4].copy_from_slice(&VERSION_GROUPS.to_le_bytes());
        }
        let footer_start = self.buf.len();
        for e in &self.entries {
            self.buf.extend_from_slice(&e.id.0);
            self.buf.extend_from_slice(&e.offset.to_le_bytes());
            self.buf.extend_from_slice(&e.raw_len.to_le_bytes());
            self.buf.extend_from_slice(&e.stored_len.to_le_bytes());
            self.buf.push(e.codec as u8);
            self.buf.extend_from_slice(&e.inner.to_le_bytes());
            self.buf.extend_from_slice(&[0u8; 3]);
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
    if version != VERSION && version != VERSION_GROUPS {
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
            let codec = Codec::from_u8(e[48])
                .filter(|c| *c != Codec::ZstdGroup || version == VERSION_GROUPS)
                .ok_or_else(|| Error::corrupt(what, format!("footer entry {i}: unknown codec {}", e[48])))?;
            let entry = PackEntry {
                id: Digest(e[..32].try_into().expect("32 bytes")),
                offset: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
                raw_len: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
                stored_len: u32::from_le_bytes(e[44..48].try_into().expect("4 bytes")),
                codec,
                inner: match codec {
                    Codec::ZstdGroup => u32::from_le_bytes(e[49..53].try_into().expect("4 bytes")),
                    _ => 0,
                },
            };
            let end = entry.offset + FRAME_HEADER_LEN as u64 + u64::from(entry.stored_len);
            if entry.offset < HEADER_LEN as u64
                || end > footer_at
                || u64::from(entry.inner) + u64::from(entry.raw_len) > u64::from(MAX_GROUP_RAW)
            {
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
        Codec::ZstdGroup => {
            let group = read_group(file, loc).map_err(naming(id))?;
            return member(&group, id, loc, check).map(<[u8]>::to_vec);
        }
    };
    if check == Check::Hash {
        codec::check_hash(&raw, id, &what)?;
    }
    Ok(raw)
}

/// Reads and decodes the group frame a group member's `loc` points at: the
/// raw bytes of all its members, to hand out with [`member`]. Checks the
/// frame header (codec, stored length) and the decoded length.
pub fn read_group(file: &dyn ReadAt, loc: &Location) -> Result<Vec<u8>> {
    let what = frame_what(loc);
    decode_group(&read_frame_bytes(file, loc, &what)?, loc, &what)
}

/// [`read_group`] of a frame already read (header and stored bytes).
fn decode_group(buf: &[u8], loc: &Location, what: &str) -> Result<Vec<u8>> {
    let head = &buf[..FRAME_HEADER_LEN];
    let raw_len = u32::from_le_bytes(head[32..36].try_into().expect("4 bytes"));
    let stored_len = u32::from_le_bytes(head[36..40].try_into().expect("4 bytes"));
    if head[40] != Codec::ZstdGroup as u8 || stored_len != loc.stored_len || raw_len > MAX_GROUP_RAW {
        return Err(Error::corrupt(
            what,
            "group frame header does not match the index",
        ));
    }
    let raw = codec::decompress_frame(&buf[FRAME_HEADER_LEN..], raw_len as usize)
        .map_err(|e| Error::corrupt(what, format!("group frame: zstd: {e}")))?;
    if raw.len() != raw_len as usize {
        return Err(Error::corrupt(
            what,
            format!("group frame: {} bytes decoded, {raw_len} expected", raw.len()),
        ));
    }
    Ok(raw)
}

/// Chunk `id` out of its decoded group (from [`read_group`]), checked as
/// `check` says; borrowed, so a get hands it on without a copy.
pub fn member<'g>(group: &'g [u8], id: &ChunkId, loc: &Location, check: Check) -> Result<&'g [u8]> {
    let what = frame_what(loc);
    let start = loc.inner as usize;
    let raw = group
        .get(start..start + loc.raw_len as usize)
        .ok_or_else(|| Error::corrupt(&what, format!("chunk {id}: lies outside its group")))?;
    if check == Check::Hash {
        codec::check_hash(raw, id, &what)?;
    }
    Ok(raw)
}

/// Reads and checks every chunk `entries` (a pack's footer) lists, frames
/// in parallel, each group decoded once; returns the chunks that failed and
/// why. For `verify --read-data`.
pub fn check_all(file: &(dyn ReadAt + Sync), pack: PackId, entries: &[PackEntry]) -> Vec<(ChunkId, String)> {
    use rayon::prelude::*;
    let frames: Vec<&[PackEntry]> = frames(entries).collect();
    frames
        .par_iter()
        .flat_map_iter(|frame| {
            let first = frame[0].location(pack);
            let group = if first.in_group() {
                Some(read_group(file, &first))
            } else {
                None
            };
            frame.iter().filter_map(move |e| {
                let loc = e.location(pack);
                let read = match &group {
                    Some(Ok(g)) => member(g, &e.id, &loc, Check::Hash).map(|_| ()),
                    Some(Err(err)) => Err(Error::corrupt(frame_what(&loc), format!("chunk {}: {err}", e.id))),
                    None => read_chunk(file, &e.id, &loc).map(|_| ()),
                };
                read.err().map(|err| (e.id, err.to_string()))
            })
        })
        .collect()
}

/// A run of consecutive chunks encoded for a pack: one group frame when
/// zstd on the whole run pays, else each chunk on its own (`None`: raw).
pub enum Encoded {
    /// One zstd frame of the whole run.
    Group(Vec<u8>),
    /// Each chunk alone.
    Each(Vec<Option<Vec<u8>>>),
}

/// Encodes `raw`, the bytes of `members` (id, raw length) one after
/// another and already found worth compressing, at zstd `level`; see
/// [`Encoded`].
pub fn encode_run(level: i32, members: &[(ChunkId, u32)], raw: &[u8]) -> Result<Encoded> {
    if let [(id, _)] = members {
        return Ok(Encoded::Each(vec![codec::encode_group(
            level,
            &format!("chunk {id}"),
            raw,
        )?]));
    }
    let what = format!("the {} chunks from {}", members.len(), members[0].0);
    if let Some(stored) = codec::encode_group(level, &what, raw)? {
        return Ok(Encoded::Group(stored));
    }
    let mut at = 0;
    members
        .iter()
        .map(|(id, len)| {
            let chunk = &raw[at..at + *len as usize];
            at += *len as usize;
            codec::encode(level, id, chunk)
        })
        .collect::<Result<_>>()
        .map(Encoded::Each)
}

impl PackBuilder {
    /// Adds a run encoded by [`encode_run`] (or, `Each`, by the caller);
    /// returns the stored bytes added.
    pub fn add_run(&mut self, members: &[(ChunkId, u32)], raw: &[u8], encoded: &Encoded) -> u64 {
        match encoded {
            Encoded::Group(stored) => {
                self.add_group(members, stored);
                stored.len() as u64
            }
            Encoded::Each(each) => {
                let mut at = 0;
                let mut added = 0;
                for ((id, len), compressed) in members.iter().zip(each) {
                    let chunk = &raw[at..at + *len as usize];
                    at += *len as usize;
                    let (codec, stored) = match compressed {
                        Some(c) => (Codec::Zstd, c.as_slice()),
                        None => (Codec::Raw, chunk),
                    };
                    self.add(*id, *len, codec, stored);
                    added += stored.len() as u64;
                }
                added
            }
        }
    }
}

/// Copies frames of a pack into `into` as they are stored, each checked
/// first: a chunk's frame, or a group's whole frame (every member decoded
/// and checked against its id). `entries` are footer entries of the pack
/// `pack` and must list every member of each group they touch, in order.
/// Copying, not compressing again, keeps every copy of a chunk the same
/// bytes (storage reports count a copy's share of its group), and costs gc
/// no compression. Returns the stored bytes added.
pub fn copy_frames(
    file: &dyn ReadAt,
    pack: PackId,
    entries: &[PackEntry],
    into: &mut PackBuilder,
) -> Result<u64> {
    let mut added = 0;
    for frame in frames(entries) {
        let first = frame[0].location(pack);
        let what = frame_what(&first);
        if !first.in_group() {
            let buf = read_frame(file, &frame[0].id, &first, &what)?;
            let stored = &buf[FRAME_HEADER_LEN..];
            codec::decode(first.codec, stored, first.raw_len as usize, &frame[0].id, &what)?;
            into.add(frame[0].id, first.raw_len, first.codec, stored);
            added += stored.len() as u64;
            continue;
        }
        let buf = read_frame_bytes(file, &first, &what)?;
        let group = decode_group(&buf, &first, &what)?;
        let mut inner = 0usize;
        for e in frame {
            if e.inner as usize != inner {
                return Err(Error::corrupt(
                    &what,
                    format!("group member {} is not where the one before it ends", e.id),
                ));
            }
            member(&group, &e.id, &e.location(pack), Check::Hash)?;
            inner += e.raw_len as usize;
        }
        if inner != group.len() {
            return Err(Error::corrupt(&what, "group members do not cover the group"));
        }
        let members: Vec<(ChunkId, u32)> = frame.iter().map(|e| (e.id, e.raw_len)).collect();
        into.add_group(&members, &buf[FRAME_HEADER_LEN..]);
        added += u64::from(first.stored_len);
    }
    Ok(added)
}

/// `entries` split into frames: a chunk's own, or a group's members (which
/// a footer lists one after another).
pub fn frames(entries: &[PackEntry]) -> impl Iterator<Item = &[PackEntry]> {
    entries
        .chunk_by(|a, b| a.codec == Codec::ZstdGroup && b.codec == Codec::ZstdGroup && a.offset == b.offset)
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

/// The frame (header and stored bytes) at `loc`, unchecked: a group's
/// header names no one chunk, so [`decode_group`] checks it.
fn read_frame_bytes(file: &dyn ReadAt, loc: &Location, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; FRAME_HEADER_LEN + loc.stored_len as usize];
    file.read_exact_at(&mut buf, loc.offset).map_err(|e| match e {
        Error::Corrupt { .. } => Error::corrupt(what, "frame: pack is truncated"),
        other => other,
    })?;
    Ok(buf)
}

/// The frame (header and stored bytes) of chunk `id` at `loc`, its header checked.
fn read_frame(file: &dyn ReadAt, id: &ChunkId, loc: &Location, what: &str) -> Result<Vec<u8>> {
    let buf = read_frame_bytes(file, loc, what).map_err(naming(id))?;
    check_header(&buf[..FRAME_HEADER_LEN], id, loc, what)?;
    Ok(buf)
}

/// Puts the chunk's id in front of a corruption's detail.
fn naming(id: &ChunkId) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::Corrupt { what, detail } => Error::Corrupt {
            what,
            detail: format!("chunk {id}: {detail}"),
        },
        other => other,
    }
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

    /// A version 2 pack: a raw chunk, a group of three, a zstd chunk.
    fn sample_groups() -> (PackId, Vec<u8>, Vec<PackEntry>, Vec<Vec<u8>>) {
        let chunks: Vec<Vec<u8>> = (0..5u8)
            .map(|i| format!("chunk {i} ").repeat(100 + i as usize).into_bytes())
            .collect();
        let mut b = PackBuilder::new();
        b.add(
            ChunkId::of(&chunks[0]),
            chunks[0].len() as u32,
            Codec::Raw,
            &chunks[0],
        );
        let group: Vec<u8> = chunks[1..4].concat();
        let stored = codec::encode_group(3, "test group", &group)
            .unwrap()
            .expect("compresses");
        let members: Vec<_> = chunks[1..4]
            .iter()
            .map(|c| (ChunkId::of(c), c.len() as u32))
            .collect();
        b.add_group(&members, &stored);
        let id4 = ChunkId::of(&chunks[4]);
        let z = codec::encode(3, &id4, &chunks[4]).unwrap().expect("compresses");
        b.add(id4, chunks[4].len() as u32, Codec::Zstd, &z);
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
    fn groups_round_trip_and_share_their_stored_bytes() {
        let (id, bytes, entries, chunks) = sample_groups();
        assert_eq!(
            &bytes[8..12],
            &2u32.to_le_bytes(),
            "a pack with groups is version 2"
        );
        let file = Mem(bytes);
        assert_eq!(read_footer(&file, "p").unwrap(), entries);
        assert_eq!(entries.len(), 5);
        let group = read_group(&file, &entries[2].location(id)).unwrap();
        assert_eq!(group, chunks[1..4].concat());
        for (e, c) in entries.iter().zip(&chunks) {
            let loc = e.location(id);
            assert_eq!(&read_chunk(&file, &e.id, &loc).unwrap(), c);
            assert_eq!(Location::decode(&loc.encode()), Some(loc));
            if loc.in_group() {
                assert_eq!(member(&group, &e.id, &loc, Check::Hash).unwrap(), &c[..]);
            }
        }
        let shares = framed_shares(&entries);
        let group_stored = u64::from(entries[1].stored_len);
        let framed = group_stored + FRAME_HEADER_LEN as u64;
        assert_eq!(shares[1..4].iter().sum::<u64>(), framed);
        assert!(shares[1..4].iter().all(|s| *s > 0 && *s < framed));
        assert_eq!(
            shares[0],
            u64::from(entries[0].stored_len) + FRAME_HEADER_LEN as u64
        );
        let footer_and_ends = (HEADER_LEN + TAIL_LEN + FOOTER_ENTRY_LEN * entries.len()) as u64;
        assert_eq!(shares.iter().sum::<u64>() + footer_and_ends, file.0.len() as u64);
        // Copied into a new pack: the same frames, byte for byte.
        let mut copy = PackBuilder::new();
        let added = copy_frames(&file, id, &entries, &mut copy).unwrap();
        let (copy_id, copy_bytes, copy_entries) = copy.finish();
        assert_eq!(
            added,
            entries.iter().map(|e| e.stored_len as u64).sum::<u64>() - 2 * group_stored
        );
        assert_eq!(copy_bytes[32..], file.0[32..], "only the nonce differs");
        let copy_file = Mem(copy_bytes.to_vec());
        for (e, c) in copy_entries.iter().zip(&chunks) {
            assert_eq!(&read_chunk(&copy_file, &e.id, &e.location(copy_id)).unwrap(), c);
        }
        // A group copied without all its members is refused.
        let mut part = PackBuilder::new();
        assert!(copy_frames(&file, id, &[entries[1], entries[3]], &mut part).is_err());
        // A member's location asks for the wrong chunk: named, not returned.
        let mut wrong = entries[2].location(id);
        wrong.inner = 0;
        assert!(read_chunk(&file, &entries[2].id, &wrong).is_err());
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        flips_are_caught(sample());
        flips_are_caught(sample_groups());
    }

    fn flips_are_caught((id, bytes, entries, _): (PackId, Vec<u8>, Vec<PackEntry>, Vec<Vec<u8>>)) {
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
            // A group frame's header id (its first member's) is covered by
            // the pack's name only: members are checked against their own ids.
            let in_frame_pad = entries.iter().any(|e| {
                let o = e.offset as usize;
                (o + 41..o + 48).contains(&i) || (e.codec == Codec::ZstdGroup && (o..o + 32).contains(&i))
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
            codec: Codec::ZstdGroup,
            inner: 98304,
        };
        assert_eq!(Location::decode(&loc.encode()), Some(loc));
        assert_eq!(Location::decode(&[0u8; 10]), None);
        // Builds before groups wrote 49 bytes: no offset in a group.
        let old = Location {
            codec: Codec::Zstd,
            inner: 0,
            ..loc
        };
        assert_eq!(Location::decode(&old.encode()[..Location::LEN_V1]), Some(old));
        let mut group_v1 = loc.encode();
        group_v1[48] = Codec::ZstdGroup as u8;
        assert_eq!(Location::decode(&group_v1[..Location::LEN_V1]), None);
    }
}
