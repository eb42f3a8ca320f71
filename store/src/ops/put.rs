//! `put`: an image file or stream becomes chunks, packs, an index segment, a
//! manifest and finally a ref — in that order, each durable before the next
//! refers to it, so a crash at any point leaves no half-visible image.
//!
//! Pipeline: a reader thread fills large blocks and hashes the whole image;
//! a cutter thread finds the blocks' FastCDC boundaries (each block's two
//! halves at once, see [`Chunker::chunks_parallel`]) and hashes the chunks,
//! on a rayon pool of its own ([`cut_pool`]); this thread looks known chunks up in the index in one batch per
//! block and hands the block's new chunks to rayon to compress, without
//! waiting, so that the pool compresses several blocks at once while this
//! thread goes on; it appends each block's compressed chunks to a pack in
//! image order, and a writer thread writes the packs out and an index
//! segment every few packs; an indexer thread catches the local index up
//! with each segment, so that lookups find what this put stored. Memory is
//! a few blocks and two packs, whatever the image size: the manifest being
//! built goes to a temporary file, and the chunks this put stored are
//! remembered only until an index segment makes them findable.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::{Backend, Staged};
use crate::chunker::Chunker;
use crate::codec;
use crate::config::{CHUNK_GROUPS, DELTA_KEYS, MANIFEST_DELTAS};
use crate::direct::{self, FileReader};
use crate::error::{Error, Result};
use crate::eventlog::{self, Event};
use crate::fsutil::DIRECT_ALIGN;
use crate::hold;
use crate::id::{ChunkId, Digest, ImageId, PackId};
use crate::index;
use crate::manifest::{self, Entry, ManifestFile, ManifestMeta};
use crate::pack::{self, Encoded, Location, PackBuilder};
use crate::progress::Progress;
use crate::refs::{Added, RefRecord, TagRef};
use crate::segment::{self, INDEX_DIR};
use crate::session::{self, Session};
use crate::sif;
use crate::Store;

/// Bytes read per block. Large enough that per-block costs (a lookup batch,
/// a rayon fan-out) stay small; small enough that a block read, hashed
/// whole, cut and hashed chunk by chunk is still in the CPU's caches: 2 MiB
/// blocks put a known 1.3 GiB squashfs image in 1.16-1.22 s against
/// 1.14-1.31 s with 8 MiB (cold, 4 rounds each), with less CPU and 16-21 MiB
/// less peak RSS (benches/results/HISTORY.md, "Input block size").
const BLOCK: usize = 2 << 20;
/// Blocks in flight: read ahead, being cut and hashed, being compressed
/// ([`ENCODING_BLOCKS`] + 1) and waiting in between.
const BLOCKS_IN_FLIGHT: usize = 12;

/// Where the image comes from.
pub enum Input {
    /// A regular file; checked for changes while being read, SIF metadata lifted.
    File(PathBuf),
    /// A stream of unknown length, e.g. stdin.
    Stream(Box<dyn Read + Send>),
}

/// User-given metadata for a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// `--message`.
    pub message: Option<String>,
    /// `--label KEY=VALUE`.
    pub labels: BTreeMap<String, String>,
    /// `--deffile` contents.
    pub deffile: Option<String>,
}

/// What a put did.
#[derive(Debug, Clone, Serialize)]
pub struct PutReport {
    /// The ref written.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The image id.
    pub image: ImageId,
    /// Image size in bytes.
    pub size: u64,
    /// Chunks in the image (zero runs excluded).
    pub chunks: u64,
    /// Bytes of the image in zero runs (stored as nothing).
    pub zero_bytes: u64,
    /// What this put added to the store.
    pub added: Added,
    /// Pack files written.
    pub packs: u64,
    /// The image the ref named before, if it moved.
    pub replaced: Option<ImageId>,
    /// Whether SIF metadata was lifted from the image.
    pub sif: bool,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// What the check for an input that changed while it was read compares.
/// The ctime too: a tool that rewrites bytes in place can set the mtime
/// back (`rsync --inplace -t`, `touch -r`), but nothing sets the ctime.
#[derive(PartialEq, Eq)]
struct FileStat {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

fn stat(path: &Path, f: &File) -> Result<FileStat> {
    let m = f.metadata().map_err(|e| Error::io(path, e))?;
    Ok(FileStat {
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        ino: m.ino(),
    })
}

/// The clock the kernel stamps files with (`CLOCK_REALTIME_COARSE`, a
/// tick of a few ms), as (seconds, nanoseconds).
#[allow(unsafe_code)]
fn file_clock() -> (i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    (ts.tv_sec, ts.tv_nsec)
}

/// Waits until a change to the input from now on gets a later ctime than
/// `st`'s. A write lands on the kernel's coarse clock (or a filesystem's
/// whole seconds), so one in the same tick as the last change before the
/// put left every timestamp as it was, and an in-place rewrite of the same
/// size went unseen. Waits only for an input that changed within the
/// tick (a few ms; up to a second where ctimes are whole seconds), and
/// never longer than two seconds (a ctime from a clock ahead of ours).
fn wait_for_a_later_ctime(st: &FileStat) {
    let (sec, nsec) = st.ctime;
    let past = if nsec == 0 { (sec + 1, 0) } else { (sec, nsec + 1) };
    let started = Instant::now();
    while file_clock() < past && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Opens the input, refusing what cannot be an image.
fn open_input(path: &Path) -> Result<(File, FileStat)> {
    let f = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::not_found(format!("input file {}", path.display())),
        _ => Error::io(path, e),
    })?;
    let st = stat(path, &f)?;
    let m = f.metadata().map_err(|e| Error::io(path, e))?;
    if m.is_dir() {
        return Err(Error::BadInput {
            reason: format!("{} is a directory, not an image file", path.display()),
        });
    }
    wait_for_a_later_ctime(&st);
    Ok((f, st))
}

fn read_sif(path: &Path, f: &File, len: u64) -> Result<Option<sif::SifInfo>> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 64];
    let n = f.read_at(&mut head, 0).map_err(|e| Error::io(path, e))?;
    if !sif::is_sif(&head[..n]) {
        return Ok(None);
    }
    let mut read_at = |off: u64, buf: &mut [u8]| f.read_exact_at(buf, off);
    sif::parse(len, &mut read_at)
        .map(Some)
        .map_err(|source| Error::Sif {
            path: path.to_path_buf(),
            source,
        })
}

/// What the reader thread reads from.
enum Source {
    File(FileReader, u64),
    Stream(Box<dyn Read + Send>),
}

/// A block of input, with room before the data for the previous block's tail.
struct Block {
    buf: Vec<u8>,
    /// Where the data starts in `buf` (page-aligned, for `O_DIRECT`).
    at: usize,
    len: usize,
    eof: bool,
    /// A hole of this many bytes follows the block's data (sparse files).
    hole_after: u64,
}

/// Holes at least this long in a sparse input file are skipped without
/// reading them. Chunks are cut through them as if they had been read (see
/// [`cut_blocks`]), because which zeros a filesystem calls a hole can change
/// from one read to the next: ext4 reports unwritten extents as holes only
/// while their pages are not cached, and a cold and a warm put of the same
/// image cut 64566 and 65497 chunks before chunks were cut through holes.
const HOLE_MIN: u64 = 1 << 20;

/// `lseek(fd, offset, whence)`, or `None` past the end (ENXIO) or on
/// filesystems without SEEK_DATA/SEEK_HOLE.
#[allow(unsafe_code)]
fn seek(file: &File, offset: u64, whence: libc::c_int) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: lseek only reads its integer arguments; a bad fd or offset is
    // reported through the return value, which is checked.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    u64::try_from(r).ok()
}

/// Where the next hole of at least [`HOLE_MIN`] bytes at or after `pos`
/// starts, and how long it is; the first `lead` bytes of it are left to be
/// read (as zeros), so that the chunk that runs into the hole ends in it.
fn next_hole(file: &File, pos: u64, file_len: u64, lead: u64) -> Option<(u64, u64)> {
    next_hole_whole(file, pos, file_len)
        .filter(|&(_, len)| len > lead)
        .map(|(start, len)| (start + lead, len - lead))
}

fn next_hole_whole(file: &File, pos: u64, file_len: u64) -> Option<(u64, u64)> {
    let mut at = pos;
    while at < file_len {
        let start = seek(file, at, libc::SEEK_HOLE)?;
        if start >= file_len {
            return None;
        }
        let end = seek(file, start, libc::SEEK_DATA)
            .unwrap_or(file_len)
            .min(file_len);
        if end - start >= HOLE_MIN {
            return Some((start, end - start));
        }
        at = end;
    }
    None
}

/// Fills `buf` by calling `read(rest, offset_in_buf)` until it is full or
/// the input ends; returns the bytes read and whether the input ended.
fn fill(
    buf: &mut [u8],
    mut read: impl FnMut(&mut [u8], usize) -> io::Result<usize>,
) -> io::Result<(usize, bool)> {
    let mut len = 0;
    while len < buf.len() {
        match read(&mut buf[len..], len) {
            Ok(0) => return Ok((len, true)),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((len, false))
}

/// Reads the input into blocks from a pool; stops at EOF or on the first
/// error. A regular file is read with positioned reads and its large holes
/// are skipped, each ending a block. This thread only reads: an `O_DIRECT`
/// read has nothing in flight while its caller computes, so any work here
/// (the whole-image hash was here) idles the disk.
fn spawn_reader(
    mut source: Source,
    head: usize,
    name: PathBuf,
    full: SyncSender<Result<Block>>,
    free: Receiver<Vec<u8>>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("imgstore-read".into())
        .spawn(move || {
            let mut pos: u64 = 0;
            // Page-aligned, so that reads stay aligned for O_DIRECT.
            let lead = head.next_multiple_of(direct::ALIGN) as u64;
            let mut hole = match &source {
                Source::File(f, len) => next_hole(f.file(), 0, *len, lead),
                Source::Stream(_) => None,
            };
            // Where this thread's time went, logged at debug level.
            let (mut reading, mut for_buffers, mut handing_on) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let mut since = Instant::now();
            let mut first = true;
            while let Ok(mut buf) = free.recv() {
                for_buffers += since.elapsed();
                since = Instant::now();
                let at = direct::data_start(&buf, head);
                let room = buf.len() - head - direct::ALIGN;
                let limit = match hole {
                    Some((start, _)) if start >= pos => (start - pos).min(room as u64) as usize,
                    _ => room,
                };
                let window = &mut buf[at..at + limit];
                let filled = match &mut source {
                    Source::File(f, _) => fill(window, |b, off| f.read_at(b, pos + off as u64)),
                    Source::Stream(r) => fill(window, |b, _| r.read(b)),
                };
                reading += since.elapsed();
                since = Instant::now();
                let (len, eof) = match filled {
                    Ok(done) => done,
                    Err(e) => {
                        let _ = full.send(Err(Error::io(&name, e)));
                        break;
                    }
                };
                pos += len as u64;
                if std::mem::take(&mut first) {
                    hold::point("put-reading");
                }
                let mut hole_after = 0;
                if let Some((start, hole_len)) = hole.filter(|(s, _)| *s == pos && !eof) {
                    hole_after = hole_len;
                    pos = start + hole_len;
                    if let Source::File(f, file_len) = &source {
                        hole = next_hole(f.file(), pos, *file_len, lead);
                    }
                }
                let block = Block {
                    buf,
                    at,
                    len,
                    eof,
                    hole_after,
                };
                if full.send(Ok(block)).is_err() || eof {
                    break;
                }
                handing_on += since.elapsed();
                since = Instant::now();
            }
            let direct_bytes = match &source {
                Source::File(f, _) => f.direct_bytes(),
                Source::Stream(_) => 0,
            };
            tracing::debug!(
                ?reading,
                ?for_buffers,
                ?handing_on,
                direct_bytes,
                "put: input read"
            );
        })
        .map_err(|e| Error::threads("the put's reader", e))
}

/// A block with its chunk boundaries.
struct Cut {
    buf: Vec<u8>,
    /// The part of `buf` that the cuts tile.
    data: std::ops::Range<usize>,
    /// Chunk ranges, relative to `data`.
    cuts: Vec<std::ops::Range<usize>>,
    /// Each chunk's id; `None` for a chunk of zeros (stored as nothing).
    ids: Vec<Option<ChunkId>>,
    /// Input bytes this block brought.
    len: usize,
    eof: bool,
    /// Input bytes of a skipped hole that follow the block.
    hole: u64,
    /// Zero bytes, cut into whole chunks, that follow the block's chunks.
    zeros: u64,
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
fn cut_blocks(
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

/// The cutter's own threads, as many as there are cores (or
/// `RAYON_NUM_THREADS`). Cutting and hashing on the pool that compresses
/// queued each block's cut behind the blocks being compressed (rayon takes
/// outside work first in, first out), so a first put alternated between
/// compressing and cutting, and the lookup thread waited 7.1 s of an 8.2 s
/// put of c00-init.ext3 for cuts while both cores were busy only 1.66 of
/// the time. With a pool of its own the next block is cut while earlier
/// ones compress.
fn cut_pool() -> Result<rayon::ThreadPool> {
    pool("cutter", "imgstore-cut")
}

/// The put's compression threads, as many as the cutter's. Not rayon's
/// global pool: that one is started on first use, where a failure to start
/// a thread is a panic, and a panic in a job on it aborts the process.
fn encode_pool() -> Result<rayon::ThreadPool> {
    pool("compressor", "imgstore-enc")
}

/// A pool of the put's own, built so that a thread that cannot be started
/// (the process limit) is an error. A panic that escapes a job is caught
/// in the job ([`EncodedBlock::encode_caught`]); the handler only keeps
/// rayon from aborting the process should one get past it.
fn pool(what: &str, prefix: &'static str) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(move |i| format!("{prefix}{i}"))
        .panic_handler(|_| tracing::error!("a job of the put panicked"))
        .build()
        .map_err(|e| Error::threads(format!("the put's {what}"), io::Error::other(e)))
}

/// A failure of the put itself, not of its input or the store (exit 1).
fn internal(what: impl std::fmt::Display) -> Error {
    Error::Internal {
        detail: format!("in the put: {what}"),
    }
}

/// A panic of one of the put's threads or jobs, as an error of the put.
fn panicked(what: &str, payload: Box<dyn std::any::Any + Send>) -> Error {
    let message = payload
        .downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    internal(format!("{what} panicked: {message}"))
}

/// Packs whose chunk locations go into one index segment: a put of new
/// data keeps at most this many packs' locations (~80 B per chunk) in memory,
/// and, once the segment is in the index, forgets which chunks it stored.
const PACKS_PER_SEGMENT: u64 = 8;

/// `IMGSTORE_TEST_PACKS_PER_SEGMENT`: tests make a small image cross
/// segments, and have the put wait for each segment, so that what it
/// forgets is the same from run to run.
fn test_packs_per_segment() -> Option<u64> {
    std::env::var("IMGSTORE_TEST_PACKS_PER_SEGMENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}

/// Packs written but not yet committed (fsynced and renamed into place).
/// Each pack's write-back starts when it is written, and its commit waits
/// until the next one is written, so the disk works on one pack while the
/// next is filled, and the pack's buffer goes back to the put at once
/// instead of after its fsync.
const STAGED_PACKS: usize = 1;

/// Writes finished packs, hands their buffers back through `free`, and
/// writes an index segment every [`PACKS_PER_SEGMENT`] packs and at the end,
/// telling `indexed` how many packs the segments written so far cover.
/// Returns the number of packs. A segment only says where chunks are, and
/// is written only after the packs it names are durable; until the ref is
/// written no image uses them, and a put that fails leaves them to gc like
/// its packs (an uncommitted pack is a temporary file gc removes).
fn spawn_pack_writer(
    backend: Arc<dyn Backend>,
    packs: Receiver<PackBuilder>,
    free: SyncSender<Vec<u8>>,
    indexed: std::sync::mpsc::Sender<u64>,
) -> Result<JoinHandle<Result<u64>>> {
    let write_segment = |backend: &dyn Backend,
                         staged: &mut VecDeque<Box<dyn Staged>>,
                         locations: &mut Vec<(ChunkId, Location)>|
     -> Result<()> {
        for pack in staged.drain(..) {
            pack.commit()?;
        }
        if !locations.is_empty() {
            let (seg_id, bytes) = segment::encode(locations);
            backend.put(&seg_id.key(INDEX_DIR), &bytes)?;
            locations.clear();
        }
        Ok(())
    };
    std::thread::Builder::new()
        .name("imgstore-pack".into())
        .spawn(move || {
            let mut locations = Vec::new();
            let mut staged = VecDeque::new();
            let mut count: u64 = 0;
            let per_segment = test_packs_per_segment().unwrap_or(PACKS_PER_SEGMENT);
            for builder in packs {
                let (id, bytes, entries) = builder.finish();
                staged.push_back(backend.stage(&pack::key(&id), &bytes)?);
                hold::point("put-after-stage");
                // The builder may be gone (it failed): then so is the pool.
                let _ = free.send(bytes.into_buffer());
                if staged.len() > STAGED_PACKS {
                    staged.pop_front().expect("not empty").commit()?;
                }
                locations.extend(entries.iter().map(|e| (e.id, e.location(id))));
                count += 1;
                if count.is_multiple_of(per_segment) {
                    write_segment(backend.as_ref(), &mut staged, &mut locations)?;
                    let _ = indexed.send(count);
                }
            }
            write_segment(backend.as_ref(), &mut staged, &mut locations)?;
            Ok(count)
        })
        .map_err(|e| Error::threads("the put's pack writer", e))
}

/// A fresh view of the index, and how many of this put's packs it covers.
type Indexed = Result<(u64, index::Reader)>;

/// Catches the local index up with each segment the pack writer puts in
/// the store and opens a new reader of it, off the thread that looks
/// chunks up: done on that thread, a catch-up (44-779 ms in a first put of
/// a 3.2 GiB ext3 image) held up the lookups, and the pool ran out of
/// blocks to compress. Stops after the first error, which it hands on.
fn spawn_indexer(
    index_dir: PathBuf,
    store_id: String,
    backend: Arc<dyn Backend>,
    segments: Receiver<u64>,
    readers: std::sync::mpsc::Sender<Indexed>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("imgstore-index".into())
        .spawn(move || {
            while let Ok(first) = segments.recv() {
                // Behind? One catch-up covers every segment written so far.
                let covered = segments.try_iter().last().unwrap_or(first);
                let started = Instant::now();
                let fresh = index::catch_up(&index_dir, &store_id, backend.as_ref())
                    // A new reader, not a refresh: a RocksDB secondary that
                    // catches up keeps what it replays in memory (a 16 GiB
                    // put peaked at 183 MiB refreshing, 161 MiB reopening;
                    // benches/rss_size.sh).
                    .and_then(|_| index::Reader::open(&index_dir))
                    .map(|reader| (covered, reader));
                if let Ok((_, reader)) = &fresh {
                    // A few property reads per catch-up (every 8 packs).
                    let mem = reader.memory();
                    tracing::debug!(
                        covered,
                        ms = started.elapsed().as_millis() as u64,
                        table_readers = mem.table_readers,
                        memtables = mem.memtables,
                        block_cache = mem.block_cache,
                        "put: index caught up"
                    );
                }
                let failed = fresh.is_err();
                if readers.send(fresh).is_err() || failed {
                    return;
                }
            }
        })
        .map_err(|e| Error::threads("the put's indexer", e))
}

/// Raw bytes a put compresses together as one group at most: zstd on
/// groups of 1 MiB stored the first full ext3 image in 47.2% of its bytes,
/// on 32 KiB chunks alone 57.2% (benches/zstd_groups.py). A get decodes
/// the whole group of any chunk it needs.
pub const GROUP_BYTES: usize = 1 << 20;

/// Splits the new chunks of a block into runs to encode together: chunks
/// that follow each other in the image, all worth compressing, at most
/// `group_bytes` in all. An incompressible chunk is a run of its own.
fn runs(
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
fn span(chunks: &[(ChunkId, std::ops::Range<usize>)]) -> std::ops::Range<usize> {
    chunks[0].1.start..chunks[chunks.len() - 1].1.end
}

fn is_zero(data: &[u8]) -> bool {
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
const ENCODING_BLOCKS: usize = 4;

/// A block's new chunks, compressed on the rayon pool, on their way into
/// packs in image order.
struct EncodedBlock {
    buf: Vec<u8>,
    /// The part of `buf` the chunk ranges below are relative to.
    data: std::ops::Range<usize>,
    /// The chunks this block stores, in image order, with their bytes.
    new: Vec<(ChunkId, std::ops::Range<usize>)>,
    /// `new` split into runs, each encoded as one unit.
    runs: Vec<std::ops::Range<usize>>,
    encoded: Result<Vec<Encoded>>,
}

impl EncodedBlock {
    /// [`EncodedBlock::encode`], with a panic in it (a bug) turned into an
    /// error of the put: the job runs on a pool thread, where a panic would
    /// abort the process.
    fn encode_caught(
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
    fn encode(
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
fn members(chunks: &[(ChunkId, std::ops::Range<usize>)]) -> Vec<(ChunkId, u32)> {
    chunks.iter().map(|(id, r)| (*id, r.len() as u32)).collect()
}

/// Where the lookup thread spent a put's wall time, beside its own work:
/// logged at debug level (`IMGSTORE_LOG=imgstore_store=debug`) to find
/// the stage that holds the pipeline up.
#[derive(Debug, Default)]
struct Waits {
    /// For the cutter's next block.
    cut: std::time::Duration,
    /// In index lookups.
    lookup: std::time::Duration,
    /// For the oldest block's compression.
    encode: std::time::Duration,
    /// For the pack writer: a free pack buffer, or its taking a full pack.
    pack: std::time::Duration,
}

/// State of one put between blocks.
struct Ingest<'a> {
    waits: Waits,
    lookup: index::Reader,
    /// Packs a pending GC plan condemned: chunks found only there are stored anew.
    condemned: &'a HashSet<PackId>,
    zstd_level: i32,
    /// Raw bytes per group at most; 0 in a store without groups.
    group_bytes: usize,
    pack_size: usize,
    entries: manifest::Spool,
    /// Chunks this put stored and the index cannot find yet, so an image
    /// repeating itself stores each once: id -> the pack it went into
    /// ([`PENDING`] until it is in one).
    written: HashMap<ChunkId, u64>,
    /// Blocks being compressed, oldest first.
    encoding: VecDeque<Receiver<Result<EncodedBlock>>>,
    /// Where they are compressed.
    encode_pool: &'a rayon::ThreadPool,
    /// Packs handed to the writer so far.
    packs_sent: u64,
    /// From the indexer: a reader of the index that now covers this many
    /// of this put's packs.
    indexed: Receiver<Indexed>,
    /// Tests: wait for a segment every this many packs.
    wait_for_segments: Option<u64>,
    pack: PackBuilder,
    packs: SyncSender<PackBuilder>,
    /// Buffers of written packs, back from the writer: two in all, so a
    /// put holds at most one pack being filled and one being written.
    free_packs: Receiver<Vec<u8>>,
    added: Added,
    chunks: u64,
    zero_bytes: u64,
}

/// [`Ingest::written`]'s mark for a chunk not yet added to a pack.
const PENDING: u64 = u64::MAX;

impl Ingest<'_> {
    /// Looks up the chunks of a cut block, lists them in the manifest and
    /// has the pool compress the new ones; packs get them, in image order,
    /// once up to [`ENCODING_BLOCKS`] later blocks are on their way too.
    /// Blocks whose chunks are in packs go back to the reader by `free`.
    fn block(&mut self, cut: Cut, free: &SyncSender<Vec<u8>>) -> Result<()> {
        self.forget_indexed()?;
        let Cut {
            buf, data, cuts, ids, ..
        } = cut;
        // Look up, in one batch, every chunk this put has not stored itself.
        let mut ask: Vec<ChunkId> = ids
            .iter()
            .flatten()
            .filter(|id| !self.written.contains_key(id))
            .copied()
            .collect();
        ask.sort_unstable();
        ask.dedup();
        let asked = Instant::now();
        let found = self.lookup.lookup(&ask)?;
        self.waits.lookup += asked.elapsed();
        let known: HashSet<ChunkId> = ask
            .iter()
            .zip(found)
            .filter(|(_, f)| f.is_some_and(|loc| !self.condemned.contains(&loc.pack)))
            .map(|(id, _)| *id)
            .collect();

        let mut new: Vec<(ChunkId, std::ops::Range<usize>)> = Vec::new();
        for (r, id) in cuts.iter().zip(&ids) {
            let len = (r.end - r.start) as u64;
            match id {
                None => {
                    self.zero_bytes += len;
                    self.entries.push(Entry::Zero { len })?;
                }
                Some(id) => {
                    self.chunks += 1;
                    self.entries.push(Entry::Chunk {
                        id: *id,
                        len: len as u32,
                    })?;
                    if !known.contains(id) && self.written.insert(*id, PENDING).is_none() {
                        new.push((*id, r.clone()));
                    }
                }
            }
        }
        let (tx, rx) = sync_channel(1);
        if new.is_empty() {
            let done = EncodedBlock {
                buf,
                data,
                new,
                runs: Vec::new(),
                encoded: Ok(Vec::new()),
            };
            tx.send(Ok(done)).expect("channel has room");
        } else {
            let (level, group_bytes) = (self.zstd_level, self.group_bytes);
            self.encode_pool.spawn_fifo(move || {
                // The receiver is gone only if the put already failed.
                let _ = tx.send(EncodedBlock::encode_caught(buf, data, new, level, group_bytes));
            });
        }
        self.encoding.push_back(rx);
        self.settle(free, ENCODING_BLOCKS)
    }

    /// Packs the encoded blocks at the front of the queue, waiting for the
    /// oldest while more than `keep` are still being encoded.
    fn settle(&mut self, free: &SyncSender<Vec<u8>>, keep: usize) -> Result<()> {
        while let Some(oldest) = self.encoding.front() {
            let done = if self.encoding.len() > keep {
                let waited = Instant::now();
                let done = oldest.recv().ok();
                self.waits.encode += waited.elapsed();
                done
            } else {
                match oldest.try_recv() {
                    Ok(done) => Some(done),
                    Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
                }
            };
            self.encoding.pop_front();
            let done = done.ok_or_else(|| internal("a compression job stopped"))??;
            let buf = self.add_to_packs(done)?;
            // The pool has room for every buffer; a closed one means the
            // reader is gone, and its error comes from it.
            let _ = free.send(buf);
        }
        Ok(())
    }

    /// Adds an encoded block's runs to packs; returns its buffer.
    fn add_to_packs(&mut self, block: EncodedBlock) -> Result<Vec<u8>> {
        let bytes = &block.buf[block.data.clone()];
        for (run, encoded) in block.runs.iter().zip(&block.encoded?) {
            let chunks = &block.new[run.clone()];
            let stored = self.pack.add_run(&members(chunks), &bytes[span(chunks)], encoded);
            self.added.stored_bytes += stored;
            for (id, r) in chunks {
                self.added.chunks += 1;
                self.added.raw_bytes += r.len() as u64;
                self.written.insert(*id, self.packs_sent);
            }
            if self.pack.len() >= self.pack_size {
                self.flush_pack()?;
            }
        }
        Ok(block.buf)
    }

    /// Zero chunks, `len` bytes in all, cut through a hole that was never
    /// read (the reader hashed it).
    fn zero_run(&mut self, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.zero_bytes += len;
        self.entries.push(Entry::Zero { len })
    }

    /// Once the indexer has caught the index up with a segment, looks up
    /// with its new reader and forgets the chunks the segment covers:
    /// lookups find them now. So a put of new data remembers only its last
    /// few packs' chunks.
    fn forget_indexed(&mut self) -> Result<()> {
        match self.indexed.try_iter().last() {
            Some(fresh) => self.forget_up_to(fresh),
            None => Ok(()),
        }
    }

    fn forget_up_to(&mut self, fresh: Indexed) -> Result<()> {
        let (covered, reader) = fresh?;
        self.lookup = reader;
        self.written.retain(|_, pack| *pack >= covered);
        Ok(())
    }

    fn flush_pack(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        // A closed channel means the writer failed; its error comes from join.
        let stopped = || internal("the pack writer stopped");
        let waited = Instant::now();
        let next = PackBuilder::reuse(self.free_packs.recv().map_err(|_| stopped())?);
        let full = std::mem::replace(&mut self.pack, next);
        self.packs.send(full).map_err(|_| stopped())?;
        self.waits.pack += waited.elapsed();
        self.packs_sent += 1;
        if let Some(per_segment) = self.wait_for_segments {
            if self.packs_sent.is_multiple_of(per_segment) {
                let fresh = self.indexed.recv().map_err(|_| stopped())?;
                self.forget_up_to(fresh)?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Writes the manifest of the image `id` unless a sound one is there,
    /// as a delta where one pays, else full. Full manifests and deltas have
    /// keys of their own, so no write here can turn a delta's base into a
    /// delta: two puts of one image racing both write, whole, and either
    /// result reads back the same entries (no put-if-absent is needed).
    fn store_manifest(
        &self,
        reference: &TagRef,
        size: u64,
        id: &ImageId,
        meta: &ManifestMeta,
        entries: &manifest::Spooled,
    ) -> Result<()> {
        let key = manifest::key(id);
        let exists =
            self.backend.head(&key)?.is_some() || self.backend.head(&manifest::delta_key(id))?.is_some();
        if exists {
            match self.manifest_file(id) {
                Ok(_) => return Ok(()),
                Err(Error::Corrupt { detail, .. }) => {
                    tracing::warn!("writing a full manifest over the damaged one of image {id} ({detail})");
                }
                Err(e) => return Err(e),
            }
        } else if let Some(base) = self.delta_base(reference, id) {
            if let Some(plan) = manifest::delta::plan(entries, &base)? {
                return self.backend.put_with(&manifest::delta_key(id), &mut |w| {
                    plan.write(entries, size, id, meta, w)
                });
            }
        }
        self.backend
            .put_with(&key, &mut |w| entries.write_manifest(size, id, meta, w))
    }

    /// The full manifest a new image of `reference`'s name is written as a
    /// delta against: that of the newest other image of the same name, or
    /// its base. `None` (write it full) in a store without deltas, for a
    /// name's first image, or if that manifest does not check out.
    fn delta_base(&self, reference: &TagRef, id: &ImageId) -> Option<ManifestFile> {
        if !(self.config.has(MANIFEST_DELTAS) && self.config.has(DELTA_KEYS)) {
            return None;
        }
        let refs = self.refs(Some(&reference.name)).ok()?;
        let (_, newest) = refs
            .iter()
            .filter(|(r, rec)| r.name == reference.name && rec.image != *id)
            .max_by_key(|(_, rec)| rec.created)?;
        let base = self.manifest_base(&newest.image).ok()?.unwrap_or(newest.image);
        self.full_manifest_file(&base).ok()
    }

    /// Stores an image under `reference`. The ref is written last: until
    /// then no reader can see any part of this put.
    pub fn put(
        &self,
        reference: &TagRef,
        input: Input,
        opts: &PutOptions,
        progress: &dyn Progress,
    ) -> Result<PutReport> {
        let started = Instant::now();
        let (reader, total, file_check, sif_info): (Source, Option<u64>, _, _) = match input {
            Input::File(path) => {
                let (f, st) = open_input(&path)?;
                let sif_info = read_sif(&path, &f, st.len)?;
                let total = st.len;
                let check = f.try_clone().map_err(|e| Error::io(&path, e))?;
                (
                    Source::File(FileReader::new(f), st.len),
                    Some(total),
                    Some((path, check, st)),
                    sif_info,
                )
            }
            Input::Stream(r) => (Source::Stream(r), None, None, None),
        };
        let input_name = file_check
            .as_ref()
            .map_or_else(|| PathBuf::from("<stdin>"), |(p, _, _)| p.clone());

        // The session is written before the GC plan is read: a GC that
        // condemns after this point lists the session and waits for it.
        let session = Session::start(self.backend.clone(), "put")?;
        let condemned = self.condemned_packs()?;
        let chunker = Chunker::new(self.config.chunker)?;
        // The put's own threads start before the index is opened: at the
        // user's process limit one of them fails, as an error, before
        // RocksDB (whose threads cannot fail cleanly) is asked for any.
        let cut_pool = cut_pool()?;
        let encode_pool = encode_pool()?;

        let head = chunker.max_len();
        let (full_tx, full_rx) = sync_channel(BLOCKS_IN_FLIGHT);
        let (free_tx, free_rx) = sync_channel(BLOCKS_IN_FLIGHT);
        for _ in 0..BLOCKS_IN_FLIGHT {
            free_tx
                .send(direct::aligned_buffer(head, BLOCK))
                .expect("channel has room");
        }
        let read_thread = spawn_reader(reader, head, input_name.clone(), full_tx, free_rx)?;
        // Room for a full pack plus the group that crosses the limit and the footer.
        let pack_capacity = self.config.pack_size as usize + GROUP_BYTES + (1 << 20);
        let (pack_tx, pack_rx) = sync_channel(0);
        let (free_pack_tx, free_pack_rx) = sync_channel(2);
        free_pack_tx
            .send(Vec::with_capacity(pack_capacity + DIRECT_ALIGN))
            .expect("channel has room");
        let (segment_tx, segment_rx) = std::sync::mpsc::channel();
        let pack_thread = spawn_pack_writer(self.backend.clone(), pack_rx, free_pack_tx, segment_tx)?;
        let (indexed_tx, indexed_rx) = std::sync::mpsc::channel();
        let index_thread = spawn_indexer(
            self.index_dir.clone(),
            self.config.store_id.clone(),
            self.backend.clone(),
            segment_rx,
            indexed_tx,
        )?;
        index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
        let lookup = index::Reader::open(&self.index_dir)?;

        progress.start("put", total);
        let mut ingest = Ingest {
            waits: Waits::default(),
            lookup,
            condemned: &condemned,
            zstd_level: self.config.compression.zstd_level,
            group_bytes: if self.config.has(CHUNK_GROUPS) {
                GROUP_BYTES
            } else {
                0
            },
            pack_size: self.config.pack_size as usize,
            entries: manifest::Spool::new()?,
            written: HashMap::new(),
            encoding: VecDeque::new(),
            encode_pool: &encode_pool,
            packs_sent: 0,
            indexed: indexed_rx,
            wait_for_segments: test_packs_per_segment(),
            pack: PackBuilder::with_capacity(pack_capacity),
            packs: pack_tx,
            free_packs: free_pack_rx,
            added: Added::default(),
            chunks: 0,
            zero_bytes: 0,
        };
        let mut size: u64 = 0;
        // The cutter finds chunk boundaries in block N+1 while this thread
        // hashes, looks up and compresses block N.
        let ingested: Result<blake3::Hasher> = std::thread::scope(|scope| {
            let (cut_tx, cut_rx) = sync_channel::<Result<Cut>>(1);
            let chunker = &chunker;
            let cut_pool = &cut_pool;
            let cutter = std::thread::Builder::new()
                .name("imgstore-cutter".into())
                .spawn_scoped(scope, move || {
                    cut_blocks(chunker, cut_pool, head, full_rx, cut_tx)
                })
                .map_err(|e| Error::threads("the put's cutter", e))?;
            let fed = (|| {
                // Owned here so that leaving early, on an error, also stops
                // the reader (its pool closes) and with it the cutter,
                // before the cutter is joined.
                let free_tx = free_tx;
                let mut waited = Instant::now();
                for cut in cut_rx {
                    ingest.waits.cut += waited.elapsed();
                    let cut = cut?;
                    let (len, eof, hole, zeros) = (cut.len as u64, cut.eof, cut.hole, cut.zeros);
                    ingest.block(cut, &free_tx)?;
                    ingest.zero_run(zeros)?;
                    size += len + hole;
                    progress.advance(len + hole);
                    if eof {
                        break;
                    }
                    waited = Instant::now();
                }
                ingest.settle(&free_tx, 0)
            })();
            let image = cutter.join().map_err(|p| panicked("the cutter", p));
            fed.and(image)
        });
        let read = read_thread.join().map_err(|p| panicked("the reader", p));
        let flushed = ingested
            .and_then(|image| read.map(|()| image))
            .and_then(|image| ingest.flush_pack().map(|()| image));
        tracing::debug!(waits = ?ingest.waits, "put: lookup thread waited");
        let Ingest {
            entries,
            packs,
            added,
            chunks,
            zero_bytes,
            ..
        } = ingest;
        drop(packs);
        let written = pack_thread
            .join()
            .unwrap_or_else(|p| Err(panicked("the pack writer", p)));
        // With the writer done, the indexer ends after the catch-up it is
        // in, if any (its work is not lost: the next command's is shorter).
        let indexer = index_thread.join().map_err(|p| panicked("the indexer", p));
        progress.finish();
        // The writer's error (say, a full disk) is the cause; a failed
        // hand-off to it is only the symptom.
        let pack_count = written?;
        let image = flushed?;
        indexer?;
        hold::point("put-after-lookup");
        hold::point("put-after-pack");

        if let Some((path, f, before)) = &file_check {
            let after = stat(path, f)?;
            if after != *before || size != before.len {
                return Err(Error::InputChanged { path: path.clone() });
            }
        }

        // No catch-up here: the segments are durable in the store, and every
        // command catches the index up before it reads it. Opening the index
        // once more cost ~6 ms of every put (benches/results/HISTORY.md, "Fixed
        // cost of a put").
        hold::point("put-after-segment");

        let id = ImageId(Digest::from(image.finalize()));
        let meta = ManifestMeta { sif: sif_info };
        let is_sif = meta.sif.is_some();
        let entries = entries.finish()?;
        self.store_manifest(reference, size, &id, &meta, &entries)?;
        hold::point("put-after-manifest");

        let previous = self.read_ref(reference)?.map(|r| r.image).filter(|p| *p != id);
        let record = RefRecord {
            format: "imgstore-ref".into(),
            version: 1,
            image: id,
            size,
            created: session::now_unix(),
            user: session::username(),
            host: session::hostname(),
            message: opts.message.clone(),
            labels: opts.labels.clone(),
            deffile: opts.deffile.clone(),
            added,
        };
        hold::point("put-before-ref");
        session.check()?;
        self.backend.put(&reference.key(), &record.to_bytes())?;
        hold::point("put-after-ref");

        let mut event = Event::now("put", reference.to_string(), Some(id));
        event.previous = previous;
        event.added = Some(added);
        if let Err(e) = eventlog::append(self.backend.as_ref(), &event) {
            tracing::warn!("put is committed but its log entry was not written: {e}");
        }
        // The put happened at its ref; a session left behind lapses on its
        // own, and gc stops waiting for it then.
        if let Err(e) = session.end() {
            tracing::warn!("put is committed but its session was not ended: {e}");
        }
        Ok(PutReport {
            reference: reference.to_string(),
            image: id,
            size,
            chunks,
            zero_bytes,
            added,
            packs: pack_count,
            replaced: previous,
            sif: is_sif,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 100]));
        for i in 0..100 {
            let mut v = vec![0u8; 100];
            v[i] = 1;
            assert!(!is_zero(&v), "{i}");
        }
    }
}
