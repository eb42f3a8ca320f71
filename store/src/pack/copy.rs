//! Copying a pack's frames into a new pack as stored, for gc.

use super::reader::{decode_group, member, read_frame, read_frame_bytes};
use super::{frame_what, frames, Check, PackBuilder, PackEntry, FRAME_HEADER_LEN};
use crate::backend::ReadAt;
use crate::codec;
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};

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
