//! The recipe of an archived image: which stretches of its archive stream
//! are squashfs blocks kept inflated, and how to deflate each back.
//!
//! The archive stream is the image with each listed block replaced by its
//! inflated bytes, everything else (SIF header, squashfs metadata, raw
//! blocks, blocks zlib does not give back, blocks a hot image shares) as it
//! is, in image order. Layout, little-endian:
//!
//! ```text
//! header  104 B  magic "IMGSARCV", version u32, reserved u32, image size u64,
//!                image BLAKE3 [32], stream size u64, stream BLAKE3 [32], block count u64
//! block   32 B   image offset u64, stream offset u64, stored length u32,
//!                inflated length u32, check [8] (first 8 bytes of the BLAKE3 of the stored block)
//! meta           u32 length, then JSON (ArchiveMeta): tolerant of added fields
//! trailer 32 B   BLAKE3 of everything before it
//! ```
//!
//! Blocks are in image order and do not overlap; a block's stream offset is
//! its image offset plus what the blocks before it grew by inflating, so
//! the offsets check each other.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Object, Result};
use crate::id::{Digest, ImageId};

const MAGIC: &[u8; 8] = b"IMGSARCV";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 104;
const BLOCK_LEN: usize = 32;

/// One squashfs block kept inflated in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipeBlock {
    /// Where the block starts in the image.
    pub image_offset: u64,
    /// Where its inflated bytes start in the stream.
    pub stream_offset: u64,
    /// Its length in the image (compressed).
    pub stored: u32,
    /// Its length in the stream (inflated).
    pub inflated: u32,
    /// The first 8 bytes of the BLAKE3 of its stored bytes: a rebuilt block
    /// is checked on its own, so a reader of a few blocks needs no
    /// whole-image hash, and a get names the block that came out wrong.
    pub check: [u8; 8],
}

impl RecipeBlock {
    /// The check value of a block's stored bytes.
    pub fn check_of(stored: &[u8]) -> [u8; 8] {
        blake3::hash(stored).as_bytes()[..8].try_into().expect("8 bytes")
    }

    /// End of the block in the image.
    pub fn image_end(&self) -> u64 {
        self.image_offset + u64::from(self.stored)
    }

    /// End of the block in the stream.
    pub fn stream_end(&self) -> u64 {
        self.stream_offset + u64::from(self.inflated)
    }
}

/// How the blocks were deflated, and what archiving found (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMeta {
    /// Where the squashfs starts in the image.
    pub squashfs_offset: u64,
    /// Always `"zlib"`: deflate in a zlib wrapper, as mksquashfs' gzip writes.
    pub codec: String,
    /// zlib level, window bits, memory level and strategy of every listed block.
    pub level: u32,
    /// zlib window bits.
    pub window_bits: u32,
    /// zlib memory level.
    pub mem_level: u32,
    /// zlib strategy.
    pub strategy: String,
    /// Compressed blocks of the squashfs.
    pub compressed_blocks: u64,
    /// Of those, kept as stored because a hot image holds the same bytes.
    pub shared_blocks: u64,
    /// Of those, kept as stored because zlib -9 does not give them back.
    pub other_blocks: u64,
    /// Blocks squashfs stored uncompressed (kept as they are).
    pub raw_blocks: u64,
    /// When it was archived (seconds since the epoch, the archiving host's clock).
    pub created: u64,
    /// Who archived it.
    pub user: String,
    /// From which host.
    pub host: String,
}

impl ArchiveMeta {
    /// The zlib settings [`crate::squashfs::deflate9`] uses.
    pub fn zlib9() -> ArchiveMeta {
        ArchiveMeta {
            codec: "zlib".into(),
            level: 9,
            window_bits: 15,
            mem_level: 8,
            strategy: "default".into(),
            ..ArchiveMeta::default()
        }
    }
}

/// An archived image's recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The image's size.
    pub image_size: u64,
    /// The image (BLAKE3 of its bytes).
    pub image: ImageId,
    /// The archive stream's size.
    pub stream_size: u64,
    /// BLAKE3 of the archive stream.
    pub stream: Digest,
    /// Blocks kept inflated, in image order.
    pub blocks: Vec<RecipeBlock>,
    /// Settings and counts.
    pub meta: ArchiveMeta,
}

impl Recipe {
    /// The recipe's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).expect("archive metadata serializes");
        let mut b = Vec::with_capacity(HEADER_LEN + self.blocks.len() * BLOCK_LEN + meta.len() + 36);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.image_size.to_le_bytes());
        b.extend_from_slice(&self.image.0 .0);
        b.extend_from_slice(&self.stream_size.to_le_bytes());
        b.extend_from_slice(&self.stream.0);
        b.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for k in &self.blocks {
            b.extend_from_slice(&k.image_offset.to_le_bytes());
            b.extend_from_slice(&k.stream_offset.to_le_bytes());
            b.extend_from_slice(&k.stored.to_le_bytes());
            b.extend_from_slice(&k.inflated.to_le_bytes());
            b.extend_from_slice(&k.check);
        }
        b.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        b.extend_from_slice(&meta);
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    /// Parses and checks a recipe; `what` names it in errors.
    pub fn decode(b: &[u8], what: &Object) -> Result<Recipe> {
        let bad = |why: String| Error::corrupt(what.clone(), why);
        if b.len() < HEADER_LEN + 4 + 32 || &b[..8] != MAGIC {
            return Err(bad("not an archive recipe".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(Error::NewerFormat {
                found: format!("archive recipe version {version}"),
                supported: VERSION,
            });
        }
        let (body, trailer) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != trailer {
            return Err(bad("checksum mismatch (the file is damaged)".into()));
        }
        let image_size = u64_at(16);
        let image = ImageId(Digest(b[24..56].try_into().expect("32 bytes")));
        let stream_size = u64_at(56);
        let stream = Digest(b[64..96].try_into().expect("32 bytes"));
        let count = u64_at(96);
        let blocks_end = count
            .checked_mul(BLOCK_LEN as u64)
            .and_then(|n| n.checked_add(HEADER_LEN as u64))
            .filter(|&end| end + 4 <= body.len() as u64)
            .ok_or_else(|| bad(format!("{count} blocks do not fit in the file")))?
            as usize;
        let mut blocks = Vec::with_capacity(count as usize);
        // Where the next block may start, in the image and in the stream.
        let (mut image_at, mut grown) = (0u64, 0i64);
        for (i, r) in b[HEADER_LEN..blocks_end].chunks_exact(BLOCK_LEN).enumerate() {
            let k = RecipeBlock {
                image_offset: u64::from_le_bytes(r[0..8].try_into().expect("8 bytes")),
                stream_offset: u64::from_le_bytes(r[8..16].try_into().expect("8 bytes")),
                stored: u32::from_le_bytes(r[16..20].try_into().expect("4 bytes")),
                inflated: u32::from_le_bytes(r[20..24].try_into().expect("4 bytes")),
                check: r[24..32].try_into().expect("8 bytes"),
            };
            let stream_expected = k.image_offset.checked_add_signed(grown);
            if k.image_offset < image_at
                || k.image_end() > image_size
                || k.stored == 0
                || stream_expected != Some(k.stream_offset)
            {
                return Err(bad(format!("block {i} is out of place")));
            }
            image_at = k.image_end();
            grown += i64::from(k.inflated) - i64::from(k.stored);
            blocks.push(k);
        }
        if image_size.checked_add_signed(grown) != Some(stream_size) {
            return Err(bad("the stream size does not match the blocks".into()));
        }
        let meta_len = u32_at(blocks_end) as usize;
        let meta = body
            .get(blocks_end + 4..blocks_end + 4 + meta_len)
            .filter(|_| blocks_end + 4 + meta_len == body.len())
            .ok_or_else(|| bad("metadata length is wrong".into()))?;
        let meta: ArchiveMeta =
            serde_json::from_slice(meta).map_err(|e| bad(format!("metadata is not valid: {e}")))?;
        if (
            meta.codec.as_str(),
            meta.level,
            meta.window_bits,
            meta.mem_level,
            meta.strategy.as_str(),
        ) != ("zlib", 9, 15, 8, "default")
        {
            return Err(Error::NewerFormat {
                found: format!(
                    "archive recipe with {} level {} (window {}, memory {}, strategy {})",
                    meta.codec, meta.level, meta.window_bits, meta.mem_level, meta.strategy
                ),
                supported: VERSION,
            });
        }
        Ok(Recipe {
            image_size,
            image,
            stream_size,
            stream,
            blocks,
            meta,
        })
    }

    /// Where image offset `at`, outside every block, is in the stream;
    /// `after` is the number of blocks that end at or before `at`.
    pub fn stream_pos(&self, at: u64, after: usize) -> u64 {
        match after.checked_sub(1).map(|i| &self.blocks[i]) {
            None => at,
            Some(k) => k.stream_end() + (at - k.image_end()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recipe {
        let blocks = vec![
            RecipeBlock {
                image_offset: 100,
                stream_offset: 100,
                stored: 50,
                inflated: 200,
                check: [1; 8],
            },
            RecipeBlock {
                image_offset: 150,
                stream_offset: 300,
                stored: 10,
                inflated: 30,
                check: [2; 8],
            },
        ];
        Recipe {
            image_size: 1000,
            image: ImageId(Digest([7; 32])),
            stream_size: 1000 + 150 + 20,
            stream: Digest([8; 32]),
            blocks,
            meta: ArchiveMeta::zlib9(),
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        let what = Object::StoreObject("r".into());
        assert_eq!(Recipe::decode(&r.encode(), &what).unwrap(), r);
        assert_eq!(r.stream_pos(50, 0), 50);
        assert_eq!(r.stream_pos(160, 2), 330);
    }

    #[test]
    fn damage_and_misplaced_blocks_are_refused() {
        let what = Object::StoreObject("r".into());
        let mut b = sample().encode();
        b[120] ^= 1;
        assert!(Recipe::decode(&b, &what).is_err(), "flipped byte");
        let mut r = sample();
        r.blocks[1].stream_offset += 1;
        assert!(Recipe::decode(&r.encode(), &what).is_err(), "stream offset");
        let mut r = sample();
        r.blocks[1].image_offset = 120;
        r.blocks[1].stream_offset = 270;
        assert!(Recipe::decode(&r.encode(), &what).is_err(), "overlap");
        let mut r = sample();
        r.stream_size += 1;
        assert!(Recipe::decode(&r.encode(), &what).is_err(), "stream size");
    }
}
