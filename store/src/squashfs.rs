//! The layout of a squashfs 4.0 file system (a SIF's partition): where its
//! compressed data and fragment blocks lie, and whether a gzip block comes
//! back byte for byte when its bytes are deflated again with zlib -9.
//!
//! This is the ground the archive tier stands on: a block that reproduces
//! can be stored uncompressed (where it dedups across versions) and rebuilt
//! exactly at get. Read from the superblock, the inode table (file block
//! lists) and the fragment table; nothing else of the file system is
//! interpreted. Layout (squashfs-tools' squashfs_fs.h): superblock at 0,
//! then data and fragment blocks, then metadata tables.

use std::collections::BTreeMap;
use std::io::Read as _;

use serde::Serialize;

/// A squashfs that cannot be read as one (or not by this reader).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SquashError(pub String);

type Result<T> = std::result::Result<T, SquashError>;

fn bad(why: impl Into<String>) -> SquashError {
    SquashError(why.into())
}

const MAGIC: u32 = 0x7371_7368; // "hsqs"
const SUPERBLOCK_LEN: u64 = 96;
const METADATA_MAX: usize = 8192;
const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
const BLOCK_UNCOMPRESSED: u32 = 1 << 24;
const NO_TABLE: u64 = u64::MAX;
/// Compressed blocks read before they are recompressed together (at most
/// 256 x 1 MiB blocks in memory; 32 MiB at the default 128 KiB).
const BATCH_BLOCKS: usize = 256;

/// The fields of the superblock this reader uses.
#[derive(Debug, Clone, Serialize)]
pub struct Superblock {
    /// Inodes in the inode table.
    pub inodes: u32,
    /// Data block size in bytes.
    pub block_size: u32,
    /// Fragment blocks.
    pub fragments: u32,
    /// `gzip`, `lzma`, `lzo`, `xz`, `lz4`, `zstd` or `unknown-N`.
    pub compressor: String,
    /// Bytes of the file system.
    pub bytes_used: u64,
    inode_table: u64,
    directory_table: u64,
    fragment_table: u64,
}

/// Whether a block is a file's data or a fragment block (tails of files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// A data block of one or more (deduplicated) files.
    Data,
    /// A fragment block: small files' tails packed together.
    Fragment,
}

/// One block as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Block {
    /// Offset from the start of the file system.
    pub offset: u64,
    /// Bytes stored.
    pub stored: u32,
    /// Compressed (else stored as is).
    pub compressed: bool,
    /// Data or fragment.
    pub kind: BlockKind,
}

/// Where a squashfs's blocks are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The superblock.
    pub superblock: Superblock,
    /// Every stored data and fragment block, by offset, each once (files
    /// with the same content share blocks).
    pub blocks: Vec<Block>,
}

fn u16_at(b: &[u8], o: usize) -> Result<u16> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| bad("an inode runs past the inode table"))
}

fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| bad("an inode runs past the inode table"))
}

fn u64_at(b: &[u8], o: usize) -> Result<u64> {
    b.get(o..o + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| bad("an inode runs past the inode table"))
}

/// Inflates one zlib stream (a gzip-compressed squashfs block).
pub fn inflate(stored: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(limit);
    flate2::read::ZlibDecoder::new(stored)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("a gzip block does not inflate: {e}")))?;
    if out.len() > limit {
        return Err(bad("a block inflates past the block size"));
    }
    Ok(out)
}

/// Deflates `raw` with zlib at level 9, default window and strategy: what
/// mksquashfs' gzip compressor writes by default.
pub fn deflate9(raw: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(9), true);
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 1000 + 64);
    // Output space for the worst case, then one call finishes the stream.
    c.compress_vec(raw, &mut out, flate2::FlushCompress::Finish)
        .expect("deflate into a large enough buffer");
    out
}

/// Whether the gzip block `stored` comes back byte for byte from its
/// inflated bytes deflated again with zlib -9.
pub fn reproduces(stored: &[u8], block_size: u32) -> Result<bool> {
    let raw = inflate(stored, block_size as usize)?;
    Ok(deflate9(&raw) == stored)
}

/// Reads the squashfs whose bytes `read(offset, buf)` gives (offsets from
/// its start; `len` bytes in all).
pub fn layout(len: u64, read: &dyn Fn(u64, &mut [u8]) -> std::io::Result<()>) -> Result<Layout> {
    let io = |e: std::io::Error| bad(format!("reading the file system: {e}"));
    let mut sb = [0u8; SUPERBLOCK_LEN as usize];
    if len < SUPERBLOCK_LEN {
        return Err(bad("too short for a squashfs superblock"));
    }
    read(0, &mut sb).map_err(io)?;
    if u32_at(&sb, 0)? != MAGIC {
        return Err(bad("no squashfs magic"));
    }
    let (major, minor) = (u16_at(&sb, 28)?, u16_at(&sb, 30)?);
    if (major, minor) != (4, 0) {
        return Err(bad(format!("squashfs {major}.{minor} (only 4.0 is read)")));
    }
    let compressor = match u16_at(&sb, 20)? {
        1 => "gzip".to_string(),
        2 => "lzma".into(),
        3 => "lzo".into(),
        4 => "xz".into(),
        5 => "lz4".into(),
        6 => "zstd".into(),
        n => format!("unknown-{n}"),
    };
    let superblock = Superblock {
        inodes: u32_at(&sb, 4)?,
        block_size: u32_at(&sb, 12)?,
        fragments: u32_at(&sb, 16)?,
        compressor,
        bytes_used: u64_at(&sb, 40)?,
        inode_table: u64_at(&sb, 64)?,
        directory_table: u64_at(&sb, 72)?,
        fragment_table: u64_at(&sb, 80)?,
    };
    let s = &superblock;
    if !(4096..=1 << 20).contains(&s.block_size) || !s.block_size.is_power_of_two() {
        return Err(bad(format!(
            "block size {} is not a power of two of 4 KiB..1 MiB",
            s.block_size
        )));
    }
    if s.bytes_used > len || s.inode_table >= s.directory_table || s.directory_table > s.bytes_used {
        return Err(bad("the superblock's table offsets do not fit the file system"));
    }
    if s.compressor != "gzip" {
        return Err(bad(format!(
            "{}-compressed (only gzip blocks are read)",
            s.compressor
        )));
    }
    let meta = Metadata {
        read,
        len: s.bytes_used,
    };
    let inodes = meta.table(s.inode_table, s.directory_table)?;
    let mut blocks = BTreeMap::new();
    file_blocks(&inodes, s, &mut blocks)?;
    fragment_blocks(&meta, s, &mut blocks)?;
    for b in blocks.values() {
        if b.offset < SUPERBLOCK_LEN || b.offset + u64::from(b.stored) > s.inode_table {
            return Err(bad(format!("a block at {} lies outside the data area", b.offset)));
        }
    }
    Ok(Layout {
        superblock,
        blocks: blocks.into_values().collect(),
    })
}

/// Metadata blocks: a 2-byte header (length, bit 15 set when stored
/// uncompressed) and up to 8 KiB.
struct Metadata<'a> {
    read: &'a dyn Fn(u64, &mut [u8]) -> std::io::Result<()>,
    len: u64,
}

impl Metadata<'_> {
    /// The metadata block at `at`: its bytes and where the next one starts.
    fn block(&self, at: u64) -> Result<(Vec<u8>, u64)> {
        let io = |e: std::io::Error| bad(format!("reading a metadata block: {e}"));
        let mut h = [0u8; 2];
        if at + 2 > self.len {
            return Err(bad("a metadata block lies past the end"));
        }
        (self.read)(at, &mut h).map_err(io)?;
        let h = u16::from_le_bytes(h);
        let n = usize::from(h & 0x7FFF);
        if n == 0 || n > METADATA_MAX || at + 2 + n as u64 > self.len {
            return Err(bad("a metadata block has a bad length"));
        }
        let mut stored = vec![0u8; n];
        (self.read)(at + 2, &mut stored).map_err(io)?;
        let bytes = if h & 0x8000 != 0 {
            stored
        } else {
            inflate(&stored, METADATA_MAX)?
        };
        Ok((bytes, at + 2 + n as u64))
    }

    /// The metadata blocks from `start` up to `end`, concatenated.
    fn table(&self, start: u64, end: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let (bytes, next) = self.block(at)?;
            out.extend_from_slice(&bytes);
            at = next;
        }
        Ok(out)
    }
}

/// Adds the data blocks every regular-file inode lists.
fn file_blocks(t: &[u8], s: &Superblock, blocks: &mut BTreeMap<u64, Block>) -> Result<()> {
    let mut at = 0usize;
    for _ in 0..s.inodes {
        let kind = u16_at(t, at)?;
        let body = at + 16;
        at = match kind {
            // Basic directory.
            1 => body + 16,
            // Basic file: start u32, fragment u32, offset u32, size u32.
            2 => {
                let (start, frag, size) = (u32_at(t, body)?, u32_at(t, body + 4)?, u32_at(t, body + 12)?);
                let n = block_count(u64::from(size), frag, s.block_size);
                add_file(t, body + 16, u64::from(start), n, blocks)?
            }
            // Symlinks: nlink u32, size u32, target (extended: + xattr u32).
            3 | 10 => {
                let n = u32_at(t, body + 4)? as usize;
                body + 8 + n + if kind == 10 { 4 } else { 0 }
            }
            // Devices (nlink, rdev), fifos and sockets (nlink); extended + xattr.
            4 | 5 => body + 8,
            6 | 7 => body + 4,
            11 | 12 => body + 12,
            13 | 14 => body + 8,
            // Extended directory: 24 bytes, then i_count index entries.
            8 => {
                let count = u16_at(t, body + 16)?;
                let mut p = body + 24;
                for _ in 0..count {
                    p += 12 + u32_at(t, p + 8)? as usize + 1;
                }
                p
            }
            // Extended file: start u64, size u64, sparse u64, nlink u32,
            // fragment u32, offset u32, xattr u32.
            9 => {
                let (start, size, frag) = (u64_at(t, body)?, u64_at(t, body + 8)?, u32_at(t, body + 28)?);
                let n = block_count(size, frag, s.block_size);
                add_file(t, body + 40, start, n, blocks)?
            }
            k => return Err(bad(format!("inode type {k} is unknown"))),
        };
    }
    Ok(())
}

/// Blocks of a file of `size` bytes: its tail is in a fragment unless it has none.
fn block_count(size: u64, fragment: u32, block_size: u32) -> u64 {
    let bs = u64::from(block_size);
    if fragment == NO_FRAGMENT {
        size.div_ceil(bs)
    } else {
        size / bs
    }
}

/// Adds a file's `n` blocks, whose sizes follow at `list`, stored from
/// `start` on; returns where the inode ends.
fn add_file(t: &[u8], list: usize, start: u64, n: u64, blocks: &mut BTreeMap<u64, Block>) -> Result<usize> {
    let n = usize::try_from(n).map_err(|_| bad("a file with too many blocks"))?;
    if list + 4 * n > t.len() {
        return Err(bad("a file's block list runs past the inode table"));
    }
    let mut offset = start;
    for i in 0..n {
        let word = u32_at(t, list + 4 * i)?;
        let stored = word & !BLOCK_UNCOMPRESSED;
        if stored == 0 {
            continue; // A sparse block: nothing stored.
        }
        blocks.entry(offset).or_insert(Block {
            offset,
            stored,
            compressed: word & BLOCK_UNCOMPRESSED == 0,
            kind: BlockKind::Data,
        });
        offset += u64::from(stored);
    }
    Ok(list + 4 * n)
}

/// Adds the fragment blocks the fragment table lists (16-byte entries:
/// start u64, size u32, unused u32, in metadata blocks an index points to).
fn fragment_blocks(meta: &Metadata<'_>, s: &Superblock, blocks: &mut BTreeMap<u64, Block>) -> Result<()> {
    if s.fragments == 0 || s.fragment_table == NO_TABLE {
        return Ok(());
    }
    let entries = s.fragments as usize;
    let index_len = (entries * 16).div_ceil(METADATA_MAX);
    let mut index = vec![0u8; 8 * index_len];
    if s.fragment_table + index.len() as u64 > meta.len {
        return Err(bad("the fragment table lies past the end"));
    }
    (meta.read)(s.fragment_table, &mut index).map_err(|e| bad(format!("reading the fragment table: {e}")))?;
    let mut table = Vec::with_capacity(entries * 16);
    for i in 0..index_len {
        table.extend_from_slice(&meta.block(u64_at(&index, 8 * i)?)?.0);
    }
    for i in 0..entries {
        let (start, word) = (u64_at(&table, 16 * i)?, u32_at(&table, 16 * i + 8)?);
        let stored = word & !BLOCK_UNCOMPRESSED;
        if stored == 0 {
            continue;
        }
        blocks.entry(start).or_insert(Block {
            offset: start,
            stored,
            compressed: word & BLOCK_UNCOMPRESSED == 0,
            kind: BlockKind::Fragment,
        });
    }
    Ok(())
}

/// What a squashfs's blocks are, and how many reproduce: what archiving
/// the image (issue #30's tier) could store uncompressed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SquashReport {
    /// Where the file system starts in the image.
    pub offset: u64,
    /// Its compressor.
    pub compressor: String,
    /// Its block size.
    pub block_size: u32,
    /// Data blocks stored (shared ones once).
    pub data_blocks: u64,
    /// Fragment blocks.
    pub fragment_blocks: u64,
    /// Blocks stored uncompressed.
    pub raw_blocks: u64,
    /// Bytes of compressed blocks as stored.
    pub compressed_bytes: u64,
    /// Their bytes inflated.
    pub inflated_bytes: u64,
    /// Compressed blocks that zlib -9 gives back byte for byte.
    pub reproduced_blocks: u64,
    /// Their stored bytes.
    pub reproduced_bytes: u64,
    /// Compressed blocks that do not reproduce.
    pub other_blocks: u64,
}

impl SquashReport {
    /// Reads every compressed block of `layout` with `read` and checks
    /// whether it reproduces, on `pool`; `advance` is told the stored
    /// bytes of each block done.
    pub fn check(
        offset: u64,
        layout: &Layout,
        read: &dyn Fn(u64, &mut [u8]) -> std::io::Result<()>,
        pool: &rayon::ThreadPool,
        advance: &(dyn Fn(u64) + Sync),
    ) -> Result<SquashReport> {
        use rayon::prelude::*;
        let s = &layout.superblock;
        let mut r = SquashReport {
            offset,
            compressor: s.compressor.clone(),
            block_size: s.block_size,
            ..SquashReport::default()
        };
        for b in &layout.blocks {
            match b.kind {
                BlockKind::Data => r.data_blocks += 1,
                BlockKind::Fragment => r.fragment_blocks += 1,
            }
            if !b.compressed {
                r.raw_blocks += 1;
            }
        }
        // Blocks are read here, a batch at a time (the reader decodes in
        // parallel on its own pool), and recompressed on `pool`: a read
        // inside a pool job would nest the reader's parallel work in it.
        let compressed: Vec<&Block> = layout.blocks.iter().filter(|b| b.compressed).collect();
        let mut results: Vec<Result<(u64, u64, bool)>> = Vec::with_capacity(compressed.len());
        for batch in compressed.chunks(BATCH_BLOCKS) {
            let mut stored = Vec::with_capacity(batch.len());
            for b in batch {
                let mut bytes = vec![0u8; b.stored as usize];
                read(b.offset, &mut bytes)
                    .map_err(|e| bad(format!("reading a block at {}: {e}", b.offset)))?;
                stored.push(bytes);
            }
            results.extend(pool.install(|| {
                stored
                    .par_iter()
                    .map(|bytes| {
                        let raw = inflate(bytes, s.block_size as usize)?;
                        let same = deflate9(&raw) == *bytes;
                        advance(bytes.len() as u64);
                        Ok((bytes.len() as u64, raw.len() as u64, same))
                    })
                    .collect::<Vec<_>>()
            }));
        }
        for res in results {
            let (stored, inflated, same) = res?;
            r.compressed_bytes += stored;
            r.inflated_bytes += inflated;
            if same {
                r.reproduced_blocks += 1;
                r.reproduced_bytes += stored;
            } else {
                r.other_blocks += 1;
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deflate9_round_trips() {
        let raw: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let z = deflate9(&raw);
        assert!(z.len() < raw.len());
        assert_eq!(inflate(&z, raw.len()).unwrap(), raw);
        assert!(reproduces(&z, 1 << 20).unwrap());
        assert!(inflate(&z, 10).is_err(), "a block larger than the limit");
    }

    #[test]
    fn not_a_squashfs_is_an_error() {
        let bytes = vec![0u8; 4096];
        let read = |o: u64, b: &mut [u8]| {
            b.copy_from_slice(&bytes[o as usize..o as usize + b.len()]);
            Ok(())
        };
        assert!(layout(bytes.len() as u64, &read).is_err());
        assert!(layout(10, &read).is_err());
    }
}
