//! `get`: ref -> manifest -> chunks, the whole image checked against its id,
//! and only then the output file appears. Written to a stream, each chunk
//! is also checked against its id before it goes out; to a file, only when
//! the whole image is wrong, to name the damaged chunk.
//!
//! Batches of chunks go through a pipeline: a thread looks them up, a fetch
//! thread reads and decodes them in parallel (rayon) and hands them over in
//! order, this thread hashes them and a write thread writes them. Zero runs
//! become holes in a file.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::ReadAt;
use crate::error::{Error, Object, Result};
use crate::fsutil::sync_dir;
use crate::hold;
use crate::id::unique_suffix;
use crate::id::{ChunkId, ImageId, PackId};
use crate::index;
use crate::manifest::{Entry, ManifestFile};
use crate::ops::outfile::OutFile;
use crate::ops::reader::PackCache;
use crate::pack::{self, Check, Location};
use crate::progress::Progress;
use crate::refs::ImageRef;
use crate::segment::TOMBSTONES_DIR;
use crate::session::Session;
use crate::Store;

mod archived;
mod spans;
use spans::{wait_spans, ReadAhead, Spanned, Spans, Started};

/// Raw bytes per read-ahead batch.
const BATCH_BYTES: u64 = 16 << 20;
/// Located batches waiting for the fetch thread, their span reads started
/// (object storage); one more waits in the lookup thread to be handed on.
const READ_AHEAD_BATCHES: usize = 1;

/// Where the image goes.
pub enum Output {
    /// A file, written beside its final name and renamed into place.
    File(PathBuf),
    /// A stream, e.g. stdout. Bytes are written as they are checked; the
    /// whole-image check can only fail after they were written.
    Stream(Box<dyn Write + Send>),
}

/// What a get did.
#[derive(Debug, Clone, Serialize)]
pub struct GetReport {
    /// The image.
    pub image: ImageId,
    /// Its size.
    pub size: u64,
    /// Chunks read (0 for an archived image, rebuilt from its stream).
    pub chunks: u64,
    /// The image was archived and rebuilt (see [`crate::archive`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Requests made to object storage, by kind (absent for a directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<crate::backend::Requests>,
}

enum Piece {
    Data(Vec<u8>),
    /// A chunk inside a decoded group: the group, shared, and where in it.
    /// Handing on the group instead of a copy of each member saved a get
    /// of c00-init.ext3 a copy of every grouped byte.
    Member(Arc<Vec<u8>>, std::ops::Range<usize>),
    Zero(u64),
}

impl Piece {
    /// The bytes of a data piece, or the length of a zero run.
    fn bytes(&self) -> std::result::Result<&[u8], u64> {
        match self {
            Piece::Data(d) => Ok(d),
            Piece::Member(group, range) => Ok(&group[range.clone()]),
            Piece::Zero(n) => Err(*n),
        }
    }
}

/// Open pack files, shared by the reading threads.
struct Packs<'a> {
    store: &'a Store,
    open: PackCache,
}

impl Packs<'_> {
    fn get(&self, id: &PackId) -> Result<Arc<dyn ReadAt>> {
        self.open.get(self.store.backend.as_ref(), id)
    }

    /// Pack `id`, its reads served from `spans` where they fall inside one.
    fn get_in(&self, id: &PackId, spans: &Spans) -> Result<Arc<dyn ReadAt>> {
        let file = self.get(id)?;
        Ok(match spans.get(id) {
            Some(read) => Arc::new(Spanned {
                spans: read.clone(),
                file,
            }),
            None => file,
        })
    }
}

/// Decoded groups by pack and frame offset, kept from one batch to the
/// next so that a group whose members straddle two batches is decoded once.
type Groups = HashMap<(PackId, u64), Arc<Vec<u8>>>;

/// A batch's entries in order: a zero run's length, or a chunk and where
/// the index says it is.
type Located = Vec<std::result::Result<(ChunkId, Location), u64>>;

/// Looks up where the chunks of `batch` are.
fn locate(lookup: &index::Reader, image: &ImageId, batch: &[Entry]) -> Result<Located> {
    let ids: Vec<_> = batch
        .iter()
        .filter_map(|e| match e {
            Entry::Chunk { id, .. } => Some(*id),
            Entry::Zero { .. } => None,
        })
        .collect();
    let locations = lookup.lookup(&ids)?;
    let mut located = ids.iter().zip(locations);
    let jobs: Vec<_> = batch
        .iter()
        .map(|e| match e {
            Entry::Zero { len } => Ok(Err(*len)),
            Entry::Chunk { .. } => {
                let (id, loc) = located.next().expect("one location per chunk");
                loc.map(|l| Ok((*id, l))).ok_or_else(|| {
                    Error::corrupt(
                        Object::Image(*image),
                        format!("chunk {id} is in no pack the index knows; run `imgstore index rebuild`, then `imgstore verify`"),
                    )
                })
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(jobs)
}

/// Reads the chunks of a located batch in parallel, in order. Each group
/// frame the batch needs is decoded once (`groups` holds those of the last
/// batch).
fn fetch(
    packs: &Packs,
    lookup: &index::Reader,
    image: &ImageId,
    jobs: Located,
    spans: Spans,
    check: Check,
    groups: &mut Groups,
) -> Result<Vec<Piece>> {
    let mut wanted: Vec<Location> = jobs
        .iter()
        .filter_map(|job| job.as_ref().ok().map(|(_, loc)| *loc))
        .filter(|loc| loc.in_group())
        .collect();
    wanted.sort_unstable_by_key(|l| (l.pack, l.offset));
    wanted.dedup_by_key(|l| (l.pack, l.offset));
    let mut now = Groups::new();
    let mut decode = Vec::new();
    for loc in wanted {
        match groups.remove(&(loc.pack, loc.offset)) {
            Some(g) => {
                now.insert((loc.pack, loc.offset), g);
            }
            None => decode.push(loc),
        }
    }
    // A group that fails to decode is left out: its members are then read
    // one by one, which names the damage or finds where gc moved them.
    let decoded: Vec<_> = decode
        .par_iter()
        .filter_map(|loc| {
            let group = packs
                .get_in(&loc.pack, &spans)
                .and_then(|f| pack::read_group(f.as_ref(), loc));
            group.ok().map(|g| ((loc.pack, loc.offset), Arc::new(g)))
        })
        .collect();
    now.extend(decoded);
    let pieces = jobs
        .into_par_iter()
        .map(|job| match job {
            Err(len) => Ok(Piece::Zero(len)),
            Ok((id, loc)) => {
                let from_group = now
                    .get(&(loc.pack, loc.offset))
                    .filter(|_| loc.in_group())
                    .and_then(|g| {
                        let raw = pack::member(g, &id, &loc, check).ok()?;
                        let start = raw.as_ptr() as usize - g.as_ptr() as usize;
                        Some(Piece::Member(g.clone(), start..start + raw.len()))
                    });
                match from_group {
                    Some(piece) => Ok(piece),
                    None => read_or_relocate(packs, &spans, lookup, image, &id, &loc, check).map(Piece::Data),
                }
            }
        })
        .collect();
    *groups = now;
    pieces
}

/// Reads a chunk; if GC deleted its pack meanwhile (a tombstone says so),
/// catches the index up once and reads the chunk where it lives now. An
/// image still named by a ref always has its chunks somewhere: GC deletes a
/// pack only when its live chunks have copies elsewhere.
fn read_or_relocate(
    packs: &Packs,
    spans: &Spans,
    lookup: &index::Reader,
    image: &ImageId,
    id: &ChunkId,
    loc: &Location,
    check: Check,
) -> Result<Vec<u8>> {
    let first = packs
        .get_in(&loc.pack, spans)
        .and_then(|f| pack::read_chunk_with(f.as_ref(), id, loc, check));
    let err = match first {
        Ok(raw) => return Ok(raw),
        Err(e) => e,
    };
    let store = packs.store;
    let tomb = format!("{}/{}", TOMBSTONES_DIR, loc.pack.to_hex());
    if store.backend.head(&tomb)?.is_none() {
        return Err(err);
    }
    index::catch_up(&store.index_dir, &store.config.store_id, store.backend.as_ref())?;
    lookup.refresh()?;
    match lookup.lookup(std::slice::from_ref(id))?.pop().flatten() {
        Some(new) if new.pack != loc.pack => {
            let f = packs.get(&new.pack)?;
            pack::read_chunk_with(f.as_ref(), id, &new, check)
        }
        _ => Err(Error::Busy {
            what: format!("image {image}"),
            holder: format!(
                "garbage collection deleted pack {} while it was being read (the image was removed); \
                 run the get again",
                loc.pack
            ),
        }),
    }
}

/// Removes a half-written output file unless the get completed.
struct TmpFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

enum Sink {
    File {
        file: OutFile,
        tmp: TmpFile,
        target: PathBuf,
    },
    Stream(Box<dyn Write + Send>),
}

impl Sink {
    fn open(out: Output) -> Result<Sink> {
        match out {
            Output::Stream(w) => Ok(Sink::Stream(w)),
            Output::File(target) => {
                if target.is_dir() {
                    return Err(Error::BadInput {
                        reason: format!("{} is a directory; give a file name with -o", target.display()),
                    });
                }
                let dir = match target.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let name = target.file_name().ok_or_else(|| Error::BadInput {
                    reason: format!("{} is not a file name", target.display()),
                })?;
                let tmp = dir.join(format!(
                    ".{}.imgstore-{}.tmp",
                    name.to_string_lossy(),
                    unique_suffix()
                ));
                let file = OutFile::create(&tmp)?;
                Ok(Sink::File {
                    file,
                    tmp: TmpFile {
                        path: tmp,
                        keep: false,
                    },
                    target,
                })
            }
        }
    }

    fn write(&mut self, piece: &Piece) -> Result<()> {
        match (self, piece.bytes()) {
            (Sink::File { file, .. }, Ok(d)) => file.write(d)?,
            (Sink::File { file, .. }, Err(n)) => file.zeros(n)?,
            (Sink::Stream(w), Ok(d)) => w.write_all(d).map_err(|e| Error::io("<stdout>", e))?,
            (Sink::Stream(w), Err(n)) => {
                let zeros = [0u8; 64 * 1024];
                let mut left = n;
                while left > 0 {
                    let k = left.min(zeros.len() as u64) as usize;
                    w.write_all(&zeros[..k]).map_err(|e| Error::io("<stdout>", e))?;
                    left -= k as u64;
                }
            }
        }
        Ok(())
    }

    fn commit(self, size: u64) -> Result<()> {
        match self {
            Sink::Stream(mut w) => w.flush().map_err(|e| Error::io("<stdout>", e)),
            Sink::File {
                file,
                mut tmp,
                target,
            } => {
                file.finish(size)?;
                fs::rename(&tmp.path, &target).map_err(|e| Error::io(&target, e))?;
                tmp.keep = true;
                sync_dir(
                    target
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new(".")),
                )
            }
        }
    }
}

impl Store {
    /// Writes the image `image` names to `out`, byte for byte.
    pub fn get(&self, image: &ImageRef, out: Output, progress: &dyn Progress) -> Result<GetReport> {
        let started = Instant::now();
        let requests_before = self.backend.requests();
        let resolved = self.resolve(image)?;
        if let Some(recipe) = self.recipe(&resolved.id)? {
            return self.get_archived(recipe, out, progress, started, requests_before);
        }
        let manifest = self.manifest_file(&resolved.id)?;
        let (size, id) = (manifest.head.size, manifest.head.id);
        // A get's lease only spares it a "retry" error if GC removes packs
        // under it; its bytes are checked either way. So a full store, where
        // not even a lease fits, can still be read.
        let session = match Session::start(self.backend.clone(), "get") {
            Ok(s) => Some(s),
            Err(Error::NoSpace { path }) => {
                tracing::warn!("store is full ({}): reading without a lease", path.display());
                None
            }
            Err(e) => return Err(e),
        };
        index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
        let lookup = index::Reader::open(&self.index_dir)?;
        // A file appears only after the whole image hashed right, so its
        // chunks need not be hashed one by one too (~1 s of user CPU per 4 GiB);
        // a stream's bytes are out before that, so each is checked first.
        let check = match out {
            Output::File(_) => Check::Frame,
            Output::Stream(_) => Check::Hash,
        };
        // Before the output file exists: a get that cannot start its
        // threads leaves nothing behind.
        let pool = fetch_pool()?;
        let sink = Sink::open(out)?;
        hold::point("get-after-open");
        progress.start("get", Some(size));

        let packs = Packs {
            store: self,
            open: PackCache::new(),
        };
        let mut hasher = blake3::Hasher::new();
        let mut chunks = 0;
        // Three stages at once: the fetch thread reads and decodes batch N+1,
        // this thread hashes batch N while the write thread writes it.
        //
        // Every thread is started with a `Builder`, so one that cannot be
        // started (the process limit) is an error, and joined here, so a
        // panic in one is an error too: `std::thread::scope`'s own `spawn`
        // panics on the first, and its end on the second. A thread that
        // was not started drops its channel ends, which stops the others.
        let written: Result<Sink> = std::thread::scope(|s| {
            let (tx, rx) = sync_channel::<Result<Vec<Piece>>>(2);
            let (packs, lookup, manifest, pool) = (&packs, &lookup, &manifest, &pool);
            // Lookups of batch N+1 run beside the reads of batch N: on the
            // fetch thread they were 0.34 s of a 4.3 s get of c09-adddep.ext3.
            // In object storage, the span reads of each batch start as soon
            // as it is located, so the GETs of the next batches are in
            // flight while the fetch thread decodes this one: waited for
            // batch by batch, a batch's few GETs (2-3 of 4 MiB for 16 MiB
            // of chunks) were all that was in flight, and the network sat
            // idle while a batch was decoded.
            let (ltx, lrx) = sync_channel::<Result<(Located, Started)>>(READ_AHEAD_BATCHES);
            let locator = thread("imgstore-lookup")
                .spawn_scoped(s, move || {
                    let mut ahead = ReadAhead::new(self);
                    for batch in Batches::new(manifest) {
                        let located = batch.and_then(|b| locate(lookup, &id, &b)).map(|jobs| {
                            let started = ahead.start(self, &jobs);
                            (jobs, started)
                        });
                        let failed = located.is_err();
                        if ltx.send(located).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::threads("the get's lookups", e))?;
            let fetcher = thread("imgstore-fetch").spawn_scoped(s, move || {
                let mut groups = Groups::new();
                let mut waited = std::time::Duration::ZERO;
                for located in lrx {
                    let pieces = located.and_then(|(jobs, started)| {
                        let at = Instant::now();
                        let spans = wait_spans(started)?;
                        waited += at.elapsed();
                        pool.install(|| {
                            hold::point("get-fetch");
                            fetch(packs, lookup, &id, jobs, spans, check, &mut groups)
                        })
                    });
                    let failed = pieces.is_err();
                    if tx.send(pieces).is_err() || failed {
                        break;
                    }
                }
                tracing::debug!(
                    ms = waited.as_millis() as u64,
                    "get: fetch thread waited for span reads"
                );
            });
            let fetcher = match fetcher {
                Ok(f) => f,
                Err(e) => {
                    let _ = locator.join();
                    return Err(Error::threads("the get's reads", e));
                }
            };
            let (wtx, wrx) = sync_channel::<Arc<Vec<Piece>>>(1);
            let writer = thread("imgstore-write").spawn_scoped(s, move || -> Result<Sink> {
                let mut sink = sink;
                for pieces in wrx {
                    for piece in pieces.iter() {
                        sink.write(piece)?;
                    }
                }
                Ok(sink)
            });
            let writer = match writer {
                Ok(w) => w,
                Err(e) => {
                    drop(rx);
                    let _ = fetcher.join();
                    let _ = locator.join();
                    return Err(Error::threads("the get's writes", e));
                }
            };
            let hashed = (|| -> Result<()> {
                for pieces in rx {
                    let pieces = Arc::new(pieces?);
                    if wtx.send(pieces.clone()).is_err() {
                        return Ok(()); // the writer failed: its error follows
                    }
                    for piece in pieces.iter() {
                        match piece.bytes() {
                            Ok(d) => {
                                hasher.update(d);
                                chunks += 1;
                                progress.advance(d.len() as u64);
                            }
                            Err(n) => {
                                // On all cores, so on the get's pool.
                                pool.install(|| crate::id::hash_zeros(&mut hasher, n));
                                progress.advance(n);
                            }
                        }
                    }
                }
                Ok(())
            })();
            drop(wtx);
            let sink = writer.join().map_err(|p| panicked("the get's writes", p));
            let fetched = fetcher.join().map_err(|p| panicked("the get's reads", p));
            let located = locator.join().map_err(|p| panicked("the get's lookups", p));
            // A panic first: it is why the others stopped.
            located?;
            fetched?;
            let sink = sink?;
            hashed?;
            sink
        });
        progress.finish();
        let sink = written?;
        let got = ImageId(hasher.finalize().into());
        if got != id {
            if check == Check::Frame {
                // Name the damaged chunk: read them again, each hashed.
                let mut groups = Groups::new();
                let mut ahead = ReadAhead::new(self);
                for batch in Batches::new(&manifest) {
                    let jobs = locate(&lookup, &id, &batch?)?;
                    let spans = wait_spans(ahead.start(self, &jobs))?;
                    pool.install(|| fetch(&packs, &lookup, &id, jobs, spans, Check::Hash, &mut groups))?;
                }
            }
            return Err(Error::corrupt(
                Object::Image(id),
                format!("the chunks reassemble to {got}"),
            ));
        }
        sink.commit(size)?;
        if let Some(s) = session {
            s.end()?;
        }
        Ok(GetReport {
            image: id,
            size,
            chunks,
            archived: false,
            seconds: started.elapsed().as_secs_f64(),
            requests: self.requests_since(requests_before),
        })
    }
}

/// A named thread of the get, with a `Builder` so that a failure to start
/// it is an error, not a panic.
fn thread(name: &str) -> std::thread::Builder {
    std::thread::Builder::new().name(name.into())
}

/// The get's read and decode threads. Not rayon's global pool: that one is
/// started on first use, where a failure to start a thread is a panic. A
/// panic in a job reaches the fetch thread (`install` carries it there),
/// whose join makes it an error; the handler only keeps rayon from
/// aborting the process should one get past it.
fn fetch_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("imgstore-read{i}"))
        .panic_handler(|_| tracing::error!("a job of the get panicked"))
        .build()
        .map_err(|e| Error::threads("the get's reads", std::io::Error::other(e)))
}

/// A panic of one of the get's threads, as an error of the get (exit 1).
fn panicked(what: &str, payload: Box<dyn std::any::Any + Send>) -> Error {
    Error::Internal {
        detail: format!(
            "in the get: {what} panicked: {}",
            super::panic_message(payload.as_ref())
        ),
    }
}

/// Entries read from the manifest at a time.
const WINDOW: u64 = 4096;
/// Entries per read-ahead batch, at most.
const BATCH_ENTRIES: usize = 1024;

/// A manifest's entries in read-ahead batches of about [`BATCH_BYTES`] of
/// chunks, read from the manifest file as they are needed.
struct Batches<'a> {
    manifest: &'a ManifestFile,
    /// The next entry to read from the file.
    next: u64,
    /// Read, not yet handed out.
    ahead: VecDeque<Entry>,
}

impl<'a> Batches<'a> {
    fn new(manifest: &'a ManifestFile) -> Self {
        Batches {
            manifest,
            next: 0,
            ahead: VecDeque::new(),
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Vec<Entry>>;

    fn next(&mut self) -> Option<Self::Item> {
        let count = self.manifest.head.count;
        if self.ahead.len() < BATCH_ENTRIES && self.next < count {
            let n = WINDOW.min(count - self.next);
            match self.manifest.entries(self.next, n) {
                Ok(entries) => self.ahead.extend(entries),
                Err(e) => return Some(Err(e)),
            }
            self.next += n;
        }
        if self.ahead.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        for e in &self.ahead {
            n += 1;
            if let Entry::Chunk { len, .. } = e {
                bytes += u64::from(*len);
            }
            if bytes >= BATCH_BYTES || n >= BATCH_ENTRIES {
                break;
            }
        }
        Some(Ok(self.ahead.drain(..n).collect()))
    }
}
