//! Reading a pack: its footer, a chunk, a group, every chunk for verify.

use super::{
    frame_what, frames, Location, PackEntry, END_MAGIC, FOOTER_ENTRY_LEN, FRAME_HEADER_LEN, HEADER_LEN,
    MAGIC, MAX_GROUP_RAW, TAIL_LEN, VERSION, VERSION_GROUPS,
};
use crate::backend::ReadAt;
use crate::codec::{self, Codec};
use crate::error::{Error, Object, Result};
use crate::id::{ChunkId, Digest, PackId};

/// Reads a pack's footer: the list of chunks it holds. Checks magic and the
/// footer checksum, and that every entry lies inside the file.
pub fn read_footer(file: &dyn ReadAt, what: &Object) -> Result<Vec<PackEntry>> {
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
pub(super) fn decode_group(buf: &[u8], loc: &Location, what: &Object) -> Result<Vec<u8>> {
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
/// why. For `verify --read-data`, which runs it on a pool of its own
/// (`ThreadPool::install`).
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
fn read_at(file: &dyn ReadAt, buf: &mut [u8], offset: u64, id: &ChunkId, what: &Object) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| match e {
        Error::Corrupt { .. } => Error::corrupt(what, format!("chunk {id}: pack is truncated")),
        other => other,
    })
}

/// The frame (header and stored bytes) at `loc`, unchecked: a group's
/// header names no one chunk, so [`decode_group`] checks it.
pub(super) fn read_frame_bytes(file: &dyn ReadAt, loc: &Location, what: &Object) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; FRAME_HEADER_LEN + loc.stored_len as usize];
    file.read_exact_at(&mut buf, loc.offset).map_err(|e| match e {
        Error::Corrupt { .. } => Error::corrupt(what, "frame: pack is truncated"),
        other => other,
    })?;
    Ok(buf)
}

/// The frame (header and stored bytes) of chunk `id` at `loc`, its header checked.
pub(super) fn read_frame(file: &dyn ReadAt, id: &ChunkId, loc: &Location, what: &Object) -> Result<Vec<u8>> {
    let buf = read_frame_bytes(file, loc, what).map_err(naming(id))?;
    check_header(&buf[..FRAME_HEADER_LEN], id, loc, what)?;
    Ok(buf)
}

/// Puts the chunk's id in front of a corruption's detail.
fn naming(id: &ChunkId) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::Corrupt { object, detail } => Error::Corrupt {
            object,
            detail: format!("chunk {id}: {detail}"),
        },
        other => other,
    }
}

/// A frame header must say what the index says of the chunk.
fn check_header(head: &[u8], id: &ChunkId, loc: &Location, what: &Object) -> Result<()> {
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
