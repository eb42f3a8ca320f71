//! Building a pack in memory: frames, groups, the footer and tail.

use super::{PackEntry, END_MAGIC, HEADER_LEN, MAGIC, MAX_GROUP_RAW, VERSION, VERSION_GROUPS};
use crate::codec::{self, Codec};
use crate::error::{Object, Result};
use crate::fsutil::{pad_to_page, DIRECT_ALIGN};
use crate::id::{ChunkId, Digest, PackId};

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
    /// The buffer and where in it the pack starts: for a writer that hands
    /// the buffer on ([`crate::backend::Backend::stage_owned`]), which may
    /// give it back for [`PackBuilder::reuse`].
    pub fn into_parts(self) -> (Vec<u8>, usize) {
        (self.buf, self.start)
    }
}

impl std::ops::Deref for PackBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
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
            &Object::Chunk(*id),
            raw,
        )?]));
    }
    let what = Object::Chunks {
        first: members[0].0,
        count: members.len(),
    };
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
