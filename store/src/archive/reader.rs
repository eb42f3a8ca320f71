//! Random access to an archived image, for `mount` and `serve`: a read
//! rebuilds only the blocks it touches (in parallel, each checked against
//! the recipe), keeps the last few, and takes everything between blocks
//! straight from the stream.

use std::collections::VecDeque;
use std::sync::Mutex;

use rayon::prelude::*;

use super::rebuild::deflate_block;
use super::recipe::Recipe;
use crate::error::{Error, Object, Result};
use crate::ops::reader::{ImageReader, Part, SharedBytes};

/// Rebuilt blocks kept per image: 64 x 128 KiB squashfs blocks (8 MiB), two
/// reads' worth of a sequential reader such as a pull.
const CACHED_BLOCKS: usize = 64;

/// An archived image seen through its stream.
pub(crate) struct ArchivedView {
    recipe: Recipe,
    stream: ImageReader,
    /// Rebuilt blocks by index in the recipe, most recent last.
    cache: Mutex<VecDeque<(usize, SharedBytes)>>,
}

impl ArchivedView {
    pub(crate) fn new(recipe: Recipe, stream: ImageReader) -> ArchivedView {
        ArchivedView {
            recipe,
            stream,
            cache: Mutex::new(VecDeque::with_capacity(CACHED_BLOCKS)),
        }
    }

    /// Up to `len` bytes of the image from `offset` (within its size).
    pub(crate) fn read_parts(&self, offset: u64, len: usize, pool: &rayon::ThreadPool) -> Result<Vec<Part>> {
        let r = &self.recipe;
        let end = r.image_size.min(offset.saturating_add(len as u64));
        let first = r.blocks.partition_point(|b| b.image_end() <= offset);
        let last = r.blocks.partition_point(|b| b.image_offset < end);
        let rebuilt = self.blocks(first, last, pool)?;
        let mut parts = Vec::new();
        let mut at = offset;
        for (k, bytes) in (first..last).zip(rebuilt) {
            let b = &r.blocks[k];
            if at < b.image_offset {
                parts.extend(self.stream_bytes(at, b.image_offset, k)?);
                at = b.image_offset;
            }
            let to = end.min(b.image_end());
            parts.push(Part::Bytes(
                bytes.slice((at - b.image_offset) as usize..(to - b.image_offset) as usize),
            ));
            at = to;
        }
        if at < end {
            parts.extend(self.stream_bytes(at, end, last)?);
        }
        Ok(parts)
    }

    /// Image bytes `from..to`, outside every block, after `after` blocks.
    fn stream_bytes(&self, from: u64, to: u64, after: usize) -> Result<Vec<Part>> {
        let want = (to - from) as usize;
        let parts = self
            .stream
            .read_parts(self.recipe.stream_pos(from, after), want)?;
        if parts.iter().map(Part::len).sum::<usize>() != want {
            return Err(Error::corrupt(
                Object::Image(self.recipe.image),
                "its archive stream ends before its recipe says",
            ));
        }
        Ok(parts)
    }

    /// Blocks `first..last` rebuilt: from the cache, else deflated again
    /// from the stream, the missing ones read at once and deflated in
    /// parallel on `pool`.
    fn blocks(&self, first: usize, last: usize, pool: &rayon::ThreadPool) -> Result<Vec<SharedBytes>> {
        let mut out: Vec<Option<SharedBytes>> = {
            let cache = self.cache.lock().expect("block cache");
            (first..last)
                .map(|k| {
                    cache
                        .iter()
                        .find(|(i, _)| *i == k)
                        .map(|(_, b)| b.slice(0..b.as_ref().len()))
                })
                .collect()
        };
        let missing: Vec<usize> = (first..last).filter(|k| out[k - first].is_none()).collect();
        if let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) {
            let blocks = &self.recipe.blocks;
            let s0 = blocks[lo].stream_offset;
            let mut stream = vec![0u8; (blocks[hi].stream_end() - s0) as usize];
            let n = self.stream.read_at(s0, &mut stream)?;
            if n != stream.len() {
                return Err(Error::corrupt(
                    Object::Image(self.recipe.image),
                    "its archive stream ends before its recipe says",
                ));
            }
            let rebuilt: Vec<Result<Vec<u8>>> = pool.install(|| {
                missing
                    .par_iter()
                    .map(|&k| {
                        let b = &blocks[k];
                        let from = (b.stream_offset - s0) as usize;
                        deflate_block(b, &stream[from..from + b.inflated as usize], &self.recipe.image)
                    })
                    .collect()
            });
            let mut cache = self.cache.lock().expect("block cache");
            for (k, bytes) in missing.into_iter().zip(rebuilt) {
                let bytes = SharedBytes::owned(bytes?);
                if cache.len() == CACHED_BLOCKS {
                    cache.pop_front();
                }
                cache.push_back((k, bytes.slice(0..bytes.as_ref().len())));
                out[k - first] = Some(bytes);
            }
        }
        Ok(out.into_iter().map(|b| b.expect("every block rebuilt")).collect())
    }
}
