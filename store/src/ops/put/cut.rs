//! The second stage: FastCDC cut points of each block and the chunks'
//! BLAKE3, plus the whole image's hash, on the cutter's pool.

use super::*;

/// A block with its chunk boundaries.
pub(super) struct Cut {
    pub(super) buf: Vec<u8>,
    /// The part of `buf` that the cuts tile.
    pub(super) data: std::ops::Range<usize>,
    /// Chunk ranges, relative to `data`.
    pub(super) cuts: Vec<std::ops::Range<usize>>,
    /// Each chunk's id; `None` for a chunk of zeros (stored as nothing).
    pub(super) ids: Vec<Option<ChunkId>>,
    /// Input bytes this block brought.
    pub(super) len: usize,
    pub(super) eof: bool,
    /// Input bytes of a skipped hole that follow the block.
    pub(super) hole: u64,
    /// Zero bytes, cut into whole chunks, that follow the block's chunks.
    pub(super) zeros: u64,
}

/// Cuts blocks into chunks and hashes them (rayon). The last chunk of a
/// block may have been cut by the block's end rather than by content, so it
/// is carried to the front of the next block and cut again there (a cut
/// depends only on the bytes from the chunk's start, so this equals cutting
/// the whole input at once). A skipped hole is cut the same way without
/// its bytes: the reader read its first `head` bytes, so the carried tail is
/// zeros and starts a chunk; from there every chunk that fits in the zeros
/// is [`Chunker::zero_chunk_len`] long, and what is left of the zeros is
/// carried on. Hashing here, a stage ahead of the lookups, keeps it off the
/// thread that puts chunks in packs. Returns the hash of every input byte
/// (the image id, once the whole input was cut), updated beside each
/// block's cut, in input order.
pub(super) fn cut_blocks(
    chunker: &Chunker,
    pool: &rayon::ThreadPool,
    head: usize,
    blocks: Receiver<Result<Block>>,
    out: SyncSender<Result<Cut>>,
) -> blake3::Hasher {
    let mut image = blake3::Hasher::new();
    let zero_len = chunker.zero_chunk_len() as u64;
    let mut carry: Vec<u8> = Vec::with_capacity(head);
    for block in blocks {
        let Block {
            mut buf,
            at,
            len,
            eof,
            hole_after,
        } = match block {
            Ok(b) => b,
            Err(e) => {
                let _ = out.send(Err(e));
                return image;
            }
        };
        let start = at - carry.len();
        buf[start..at].copy_from_slice(&carry);
        let data = &buf[start..at + len];
        let read = &buf[at..at + len];
        let ((), (cuts, ids)) = pool.install(|| {
            rayon::join(
                || {
                    image.update(read);
                    crate::id::hash_zeros(&mut image, hole_after);
                },
                || {
                    let mut cuts = chunker.chunks_parallel(data);
                    if !eof {
                        cuts.pop();
                    }
                    let ids: Vec<Option<ChunkId>> = cuts
                        .par_iter()
                        .map(|r| {
                            let c = &data[r.clone()];
                            (!is_zero(c)).then(|| ChunkId::of(c))
                        })
                        .collect();
                    (cuts, ids)
                },
            )
        });
        let consumed = cuts.last().map_or(0, |r| r.end);
        carry.clear();
        carry.extend_from_slice(&data[consumed..]);
        let mut zeros = 0;
        if hole_after > 0 {
            debug_assert!(is_zero(&carry), "the tail before a hole is zeros");
            // A cut may look at the byte after it: keep one zero back.
            let run = carry.len() as u64 + hole_after;
            zeros = (run - 1) / zero_len * zero_len;
            carry.resize((run - zeros) as usize, 0);
        }
        let cut = Cut {
            buf,
            data: start..start + consumed,
            cuts,
            ids,
            len,
            eof,
            hole: hole_after,
            zeros,
        };
        if out.send(Ok(cut)).is_err() || eof {
            return image;
        }
    }
    image
}
