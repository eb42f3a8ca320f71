//! Both directions between an image and its archive stream, a group of
//! blocks at a time: [`Encoder`] turns the image into the stream (as a
//! `Read` a put's first stage consumes), [`rebuild`] turns the stream back
//! into the image. Blocks of a group are (de)compressed in parallel; a
//! group is at most [`GROUP_BYTES`] of inflated bytes, so memory is a few
//! groups whatever the image size.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::recipe::{Recipe, RecipeBlock};
use crate::error::{Error, Object, Result};
use crate::id::ImageId;
use crate::ops::reader::ImageReader;
use crate::squashfs;

/// Inflated bytes (at most) per group of blocks.
const GROUP_BYTES: u64 = 8 << 20;
/// Blocks further apart than this start a new group (the bytes between
/// them are read whole with the group).
const GAP_MAX: u64 = 1 << 20;
/// Largest piece of bytes outside any block handed on at once.
const VERBATIM_PIECE: u64 = 16 << 20;

/// The end of the group that starts at `blocks[0]`: consecutive blocks
/// close together, up to [`GROUP_BYTES`] of `size(block)`.
fn group_len<T>(
    blocks: &[T],
    start: impl Fn(&T) -> u64,
    end: impl Fn(&T) -> u64,
    size: impl Fn(&T) -> u64,
) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    while let Some(b) = blocks.get(n) {
        if n > 0 && (start(b) - end(&blocks[n - 1]) > GAP_MAX || bytes + size(b) > GROUP_BYTES) {
            break;
        }
        bytes += size(b);
        n += 1;
    }
    n
}

/// Deflates a block's inflated bytes and checks them against the recipe.
pub(crate) fn deflate_block(block: &RecipeBlock, inflated: &[u8], image: &ImageId) -> Result<Vec<u8>> {
    let z = squashfs::deflate9(inflated);
    if z.len() != block.stored as usize || RecipeBlock::check_of(&z) != block.check {
        return Err(Error::corrupt(
            Object::Image(*image),
            format!(
                "the archived squashfs block at image offset {} did not deflate back to its stored bytes \
                 (this build's zlib deflates differently from the one that archived it, or the stream is damaged)",
                block.image_offset
            ),
        ));
    }
    Ok(z)
}

/// Rebuilds the archived image front to back from its stream, which
/// `read_stream(offset, buf)` reads (every chunk checked), handing the
/// image's bytes to `out` in order. Every block is checked on its own; the
/// caller checks the whole image's hash.
pub(crate) fn rebuild(
    recipe: &Recipe,
    read_stream: &(dyn Fn(u64, &mut [u8]) -> Result<()> + Sync),
    pool: &rayon::ThreadPool,
    out: &mut dyn FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    let blocks = &recipe.blocks;
    let (mut at, mut k) = (0u64, 0usize);
    while at < recipe.image_size {
        match blocks.get(k) {
            Some(first) if first.image_offset == at => {
                let n = group_len(
                    &blocks[k..],
                    |b| b.image_offset,
                    RecipeBlock::image_end,
                    |b| u64::from(b.inflated),
                );
                let group = &blocks[k..k + n];
                let last = &group[n - 1];
                let s0 = first.stream_offset;
                let mut stream = vec![0u8; (last.stream_end() - s0) as usize];
                read_stream(s0, &mut stream)?;
                let inflated = |b: &RecipeBlock| {
                    let from = (b.stream_offset - s0) as usize;
                    &stream[from..from + b.inflated as usize]
                };
                let deflated: Vec<Result<Vec<u8>>> = pool.install(|| {
                    group
                        .par_iter()
                        .map(|b| deflate_block(b, inflated(b), &recipe.image))
                        .collect()
                });
                let mut piece = Vec::with_capacity((last.image_end() - first.image_offset) as usize);
                for (i, (b, z)) in group.iter().zip(deflated).enumerate() {
                    if i > 0 {
                        let gap = (group[i - 1].stream_end() - s0) as usize..(b.stream_offset - s0) as usize;
                        piece.extend_from_slice(&stream[gap]);
                    }
                    piece.extend_from_slice(&z?);
                }
                at = last.image_end();
                k += n;
                out(piece)?;
            }
            next => {
                let end = next
                    .map_or(recipe.image_size, |b| b.image_offset)
                    .min(at + VERBATIM_PIECE);
                let mut piece = vec![0u8; (end - at) as usize];
                read_stream(recipe.stream_pos(at, k), &mut piece)?;
                at = end;
                out(piece)?;
            }
        }
    }
    Ok(())
}

/// A compressed squashfs block of the image that archiving may keep
/// inflated: where it is in the image and its stored length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub offset: u64,
    pub stored: u32,
}

/// What the encoder found, read once the stream has been consumed.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    /// Blocks kept inflated.
    pub blocks: Vec<RecipeBlock>,
    /// Candidates that zlib -9 did not give back (kept as stored).
    pub other: u64,
    /// Stream bytes produced.
    pub stream_size: u64,
}

/// The archive stream of an image, as a `Read`: the image's bytes with each
/// candidate block that reproduces replaced by its inflated bytes.
pub(crate) struct Encoder {
    image: Arc<ImageReader>,
    size: u64,
    candidates: Vec<Candidate>,
    block_size: usize,
    pool: rayon::ThreadPool,
    /// Next image offset to encode, and the next candidate.
    at: u64,
    k: usize,
    piece: Vec<u8>,
    pos: usize,
    found: Arc<Mutex<Encoded>>,
    /// Image bytes encoded so far, for a progress bar.
    progress: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Encoder {
    pub(crate) fn new(
        image: Arc<ImageReader>,
        candidates: Vec<Candidate>,
        block_size: u32,
        pool: rayon::ThreadPool,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> (Encoder, Arc<Mutex<Encoded>>) {
        let found = Arc::new(Mutex::new(Encoded::default()));
        let e = Encoder {
            size: image.size(),
            image,
            candidates,
            block_size: block_size as usize,
            pool,
            at: 0,
            k: 0,
            piece: Vec::new(),
            pos: 0,
            found: found.clone(),
            progress,
        };
        (e, found)
    }

    fn read_image(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let n = self.image.read_at(offset, &mut buf)?;
        if n != buf.len() {
            return Err(Error::corrupt(
                Object::Image(self.image.id()),
                "ended before its manifest's size",
            ));
        }
        Ok(buf)
    }

    /// Encodes the next piece of the stream.
    fn fill(&mut self) -> Result<()> {
        let start = self.at;
        self.piece.clear();
        self.pos = 0;
        match self.candidates.get(self.k) {
            Some(first) if first.offset == self.at => {
                let n = group_len(
                    &self.candidates[self.k..],
                    |c| c.offset,
                    |c| c.offset + u64::from(c.stored),
                    |_| self.block_size as u64,
                );
                let group = &self.candidates[self.k..self.k + n];
                let last = &group[n - 1];
                let end = last.offset + u64::from(last.stored);
                let image = self.read_image(first.offset, end - first.offset)?;
                let stored = |c: &Candidate| {
                    let from = (c.offset - first.offset) as usize;
                    &image[from..from + c.stored as usize]
                };
                let limit = self.block_size;
                let inflated: Vec<Option<Vec<u8>>> = self.pool.install(|| {
                    group
                        .par_iter()
                        .map(|c| {
                            let z = stored(c);
                            // A block that does not inflate is kept as it is.
                            let raw = squashfs::inflate(z, limit).ok()?;
                            (squashfs::deflate9(&raw) == z).then_some(raw)
                        })
                        .collect()
                });
                let mut found = self.found.lock().expect("encoder results");
                for (i, (c, raw)) in group.iter().zip(inflated).enumerate() {
                    if i > 0 {
                        let prev = &group[i - 1];
                        let gap = (prev.offset + u64::from(prev.stored) - first.offset) as usize
                            ..(c.offset - first.offset) as usize;
                        self.piece.extend_from_slice(&image[gap]);
                    }
                    match raw {
                        Some(raw) => {
                            let stream_offset = found.stream_size + self.piece.len() as u64;
                            found.blocks.push(RecipeBlock {
                                image_offset: c.offset,
                                stream_offset,
                                stored: c.stored,
                                inflated: raw.len() as u32,
                                check: RecipeBlock::check_of(stored(c)),
                            });
                            self.piece.extend_from_slice(&raw);
                        }
                        None => {
                            found.other += 1;
                            self.piece.extend_from_slice(stored(c));
                        }
                    }
                }
                found.stream_size += self.piece.len() as u64;
                self.at = end;
                self.k += n;
            }
            next => {
                let end = next.map_or(self.size, |c| c.offset).min(self.at + VERBATIM_PIECE);
                self.piece = self.read_image(self.at, end - self.at)?;
                self.found.lock().expect("encoder results").stream_size += self.piece.len() as u64;
                self.at = end;
            }
        }
        (self.progress)(self.at - start);
        Ok(())
    }
}

impl Read for Encoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.piece.len() {
            if self.at >= self.size {
                return Ok(0);
            }
            self.fill().map_err(io::Error::other)?;
        }
        let n = buf.len().min(self.piece.len() - self.pos);
        buf[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
