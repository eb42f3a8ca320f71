//! The third stage: a block's new chunks, compressed in runs of
//! neighbours (groups) or alone, on the put's own pool, each frame decoded
//! and compared with its input before it is kept.

use super::*;

/// Raw bytes a put compresses together as one group at most: zstd on
/// groups of 1 MiB stored the first full ext3 image in 47.2% of its bytes,
/// on 32 KiB chunks alone 57.2% (benches/zstd_groups.py). A get decodes
/// the whole group of any chunk it needs.
pub const GROUP_BYTES: usize = 1 << 20;

/// Splits the new chunks of a block into runs to encode together: chunks
/// that follow each other in the image, all worth compressing, at most
/// `group_bytes` in all. An incompressible chunk is a run of its own.
pub(super) fn runs(
    new: &[(ChunkId, std::ops::Range<usize>)],
    compressible: &[bool],
    group_bytes: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, (_, r)) in new.iter().enumerate() {
        let joins = runs.last().is_some_and(|run| {
            let (_, last) = &new[i - 1];
            compressible[i]
                && compressible[run.start]
                && last.end == r.start
                && r.end - new[run.start].1.start <= group_bytes
        });
        match runs.last_mut() {
            Some(run) if joins => run.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

/// The bytes a run of chunks that follow each other spans.
pub(super) fn span(chunks: &[(ChunkId, std::ops::Range<usize>)]) -> std::ops::Range<usize> {
    chunks[0].1.start..chunks[chunks.len() - 1].1.end
}

pub(super) fn is_zero(data: &[u8]) -> bool {
    // Compare in 16-byte words; the compiler vectorizes this.
    let (words, rest) = data.split_at(data.len() & !15);
    words
        .chunks_exact(16)
        .all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
        && rest.iter().all(|&b| b == 0)
}

/// Blocks whose new chunks may be compressing on the rayon pool at once,
/// beyond the one being looked up: enough that both cores always have a
/// run to compress while this thread looks up the next block and fills
/// packs in image order.
pub(super) const ENCODING_BLOCKS: usize = 4;

/// A block's new chunks, compressed on the rayon pool, on their way into
/// packs in image order.
pub(super) struct EncodedBlock {
    pub(super) buf: Vec<u8>,
    /// The part of `buf` the chunk ranges below are relative to.
    pub(super) data: std::ops::Range<usize>,
    /// The chunks this block stores, in image order, with their bytes.
    pub(super) new: Vec<(ChunkId, std::ops::Range<usize>)>,
    /// `new` split into runs, each encoded as one unit.
    pub(super) runs: Vec<std::ops::Range<usize>>,
    pub(super) encoded: Result<Vec<Encoded>>,
}

impl EncodedBlock {
    /// [`EncodedBlock::encode`], with a panic in it (a bug) turned into an
    /// error of the put: the job runs on a pool thread, where a panic would
    /// abort the process.
    pub(super) fn encode_caught(
        buf: Vec<u8>,
        data: std::ops::Range<usize>,
        new: Vec<(ChunkId, std::ops::Range<usize>)>,
        level: i32,
        group_bytes: usize,
    ) -> Result<EncodedBlock> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hold::point("put-encode");
            EncodedBlock::encode(buf, data, new, level, group_bytes)
        }))
        .map_err(|p| panicked("a compression job", p))
    }

    /// Splits `new` into runs and compresses them, on the calling thread
    /// and, through rayon, the pool.
    pub(super) fn encode(
        buf: Vec<u8>,
        data: std::ops::Range<usize>,
        new: Vec<(ChunkId, std::ops::Range<usize>)>,
        level: i32,
        group_bytes: usize,
    ) -> EncodedBlock {
        let bytes = &buf[data.clone()];
        let compressible: Vec<bool> = new
            .par_iter()
            .map(|(_, r)| codec::worth_compressing(&bytes[r.clone()]))
            .collect();
        let runs = runs(&new, &compressible, group_bytes);
        let encoded = runs
            .par_iter()
            .map(|run| {
                if compressible[run.start] {
                    let chunks = &new[run.clone()];
                    pack::encode_run(level, &members(chunks), &bytes[span(chunks)])
                } else {
                    Ok(Encoded::Each(vec![None]))
                }
            })
            .collect();
        EncodedBlock {
            buf,
            data,
            new,
            runs,
            encoded,
        }
    }
}

/// Chunks as (id, raw length), the way a pack lists them.
pub(super) fn members(chunks: &[(ChunkId, std::ops::Range<usize>)]) -> Vec<(ChunkId, u32)> {
    chunks.iter().map(|(id, r)| (*id, r.len() as u32)).collect()
}
