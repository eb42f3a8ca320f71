//! Random access to images: what `mount` and `serve` read through.
//!
//! A [`StoreReader`] is opened once and shared by many threads: it catches
//! the index up once, holds one session lease for its whole life (so a gc
//! that condemns while it is open waits for it before deleting), keeps pack
//! files open and a byte-bounded cache of decoded frames. An [`ImageReader`]
//! reads any range of one image with [`ImageReader::read_at`]; every chunk's
//! bytes are checked against its id before any of them is handed out, and
//! zero runs come back as zeros without I/O.
//!
//! An image's entries are not held in memory: the reader keeps the image
//! offset of every [`WINDOW`]th entry and reads the entries of a window from
//! the manifest when a read needs them (the last [`WINDOWS_KEPT`] stay).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rayon::prelude::*;

use crate::archive::ArchivedView;
use crate::backend::{Backend, ReadAt};
use crate::error::{Error, Object, Result, Wanted};
use crate::id::{ChunkId, ImageId, PackId};
use crate::index;
use crate::manifest::{self, Entry, ManifestFile};
use crate::pack::{self, Check, Location};
use crate::refs::ImageRef;
use crate::session::Session;
use crate::Store;

/// Bytes of decoded frames a [`StoreReader`] keeps by default. A group
/// frame decodes to at most a few MiB, so this holds dozens of them: the
/// frames around the recent reads of several images.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// Open pack files kept; past it the cache starts again.
const OPEN_PACKS: usize = 64;
/// Entries per window of an image's offset table.
pub const WINDOW: u64 = 512;
/// Windows of entries an [`ImageReader`] keeps decoded.
pub const WINDOWS_KEPT: usize = 8;

/// Whether `e` says a store object does not exist (gc deleted it). The one
/// place that knows how a backend says so.
fn is_missing(e: &Error) -> bool {
    matches!(e, Error::Missing { .. })
}

/// Open pack files by id, shared by threads; `get` uses it too.
pub(crate) struct PackCache {
    open: Mutex<HashMap<PackId, Arc<dyn ReadAt>>>,
}

impl PackCache {
    pub(crate) fn new() -> Self {
        PackCache {
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The pack `id`, opened through `backend` unless it is open already.
    pub(crate) fn get(&self, backend: &dyn Backend, id: &PackId) -> Result<Arc<dyn ReadAt>> {
        if let Some(f) = self.open.lock().expect("pack cache").get(id) {
            return Ok(f.clone());
        }
        let f: Arc<dyn ReadAt> = Arc::from(backend.open_unchecked(&pack::key(id))?);
        let mut open = self.open.lock().expect("pack cache");
        if open.len() >= OPEN_PACKS {
            open.clear();
        }
        open.insert(*id, f.clone());
        Ok(f)
    }

    fn len(&self) -> usize {
        self.open.lock().expect("pack cache").len()
    }
}

/// A decoded frame: one chunk's bytes, or a whole group's.
struct Frame {
    bytes: Vec<u8>,
    /// Members (offset in the frame, chunk) whose bytes matched their id.
    checked: Mutex<Vec<(u32, ChunkId)>>,
}

impl Frame {
    /// The bytes of chunk `id` at `loc` in this frame, hashed on first use.
    fn member(&self, id: &ChunkId, loc: &Location) -> Result<Range<usize>> {
        let start = loc.inner as usize;
        let range = start..start + loc.raw_len as usize;
        let known = self
            .checked
            .lock()
            .expect("frame checks")
            .contains(&(loc.inner, *id));
        if !known {
            pack::member(&self.bytes, id, loc, Check::Hash)?;
            let mut checked = self.checked.lock().expect("frame checks");
            if !checked.contains(&(loc.inner, *id)) {
                checked.push((loc.inner, *id));
            }
        }
        Ok(range)
    }
}

/// Checked bytes of an image, shared with the reader's cache (see
/// [`ImageReader::read_parts`]).
pub enum Part {
    /// A range of a decoded frame, which this part keeps alive.
    Bytes(SharedBytes),
    /// This many zero bytes.
    Zeros(u64),
}

impl Part {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Part::Bytes(b) => b.range.len(),
            Part::Zeros(n) => *n as usize,
        }
    }

    /// Whether it is empty (never, as [`ImageReader::read_parts`] makes them).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A checked range of a decoded frame; its bytes stay while it lives, even
/// after the cache dropped the frame.
pub struct SharedBytes {
    frame: Arc<Frame>,
    range: Range<usize>,
}

impl SharedBytes {
    /// Bytes made outside any pack (an archived image's rebuilt block),
    /// checked by whoever made them.
    pub(crate) fn owned(bytes: Vec<u8>) -> SharedBytes {
        let range = 0..bytes.len();
        SharedBytes {
            frame: Arc::new(Frame {
                bytes,
                checked: Mutex::new(Vec::new()),
            }),
            range,
        }
    }

    /// `range` of these bytes, sharing them.
    pub(crate) fn slice(&self, range: Range<usize>) -> SharedBytes {
        let start = self.range.start + range.start;
        SharedBytes {
            frame: self.frame.clone(),
            range: start..start + range.len(),
        }
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.frame.bytes[self.range.clone()]
    }
}

/// `parts` with each run of adjacent ranges of one frame (the members of a
/// group, in order) and each run of zeros made one part.
fn merge(parts: Vec<Part>) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::with_capacity(parts.len());
    for part in parts {
        match (out.last_mut(), part) {
            (Some(Part::Bytes(a)), Part::Bytes(b))
                if Arc::ptr_eq(&a.frame, &b.frame) && a.range.end == b.range.start =>
            {
                a.range.end = b.range.end;
            }
            (Some(Part::Zeros(a)), Part::Zeros(b)) => *a += b,
            (_, part) => out.push(part),
        }
    }
    out
}

type FrameKey = (PackId, u64);

/// Decoded frames by pack and offset, least recently used dropped first
/// once their bytes pass the budget.
struct FrameCache {
    frames: HashMap<FrameKey, (Arc<Frame>, u64)>,
    /// Use tick -> frame, oldest first.
    order: BTreeMap<u64, FrameKey>,
    tick: u64,
    bytes: usize,
    budget: usize,
}

impl FrameCache {
    fn new(budget: usize) -> Self {
        FrameCache {
            frames: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            budget,
        }
    }

    fn get(&mut self, key: &FrameKey) -> Option<Arc<Frame>> {
        self.tick += 1;
        let (frame, used) = self.frames.get_mut(key)?;
        self.order.remove(used);
        *used = self.tick;
        self.order.insert(self.tick, *key);
        Some(frame.clone())
    }

    fn insert(&mut self, key: FrameKey, frame: Arc<Frame>) {
        let size = frame.bytes.capacity();
        if size > self.budget || self.frames.contains_key(&key) {
            return;
        }
        self.tick += 1;
        self.frames.insert(key, (frame, self.tick));
        self.order.insert(self.tick, key);
        self.bytes += size;
        while self.bytes > self.budget {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((f, _)) = self.frames.remove(&old) {
                self.bytes -= f.bytes.capacity();
            }
        }
    }
}

/// Counts of what a [`StoreReader`] did, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Frames read from packs and decoded.
    pub frames_decoded: u64,
    /// Chunks served from the frame cache.
    pub cache_hits: u64,
    /// Index catch-ups after the first (explicit, or to find a moved chunk).
    pub refreshes: u64,
    /// Chunks found in another pack after their pack was gone.
    pub relocated: u64,
}

/// Memory a [`StoreReader`] holds in its own caches, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReaderMemory {
    /// Decoded frames in the cache.
    pub frames: usize,
    /// Open pack files (descriptors, not bytes).
    pub open_packs: usize,
    /// RocksDB's count for the index view.
    pub index: index::ReaderMemory,
}

#[derive(Default)]
struct Counters {
    frames_decoded: AtomicU64,
    cache_hits: AtomicU64,
    refreshes: AtomicU64,
    relocated: AtomicU64,
}

struct Shared {
    store: Arc<Store>,
    /// The reader's lease, replaced by [`StoreReader::renew_lease`]; `None`
    /// only when the store was too full to write one (as `get` does, the
    /// bytes are still checked).
    session: Mutex<Option<Session>>,
    index: RwLock<Arc<index::Reader>>,
    /// Bumped by each refresh, so threads that found the same pack gone
    /// catch up once between them.
    generation: AtomicU64,
    refreshing: Mutex<()>,
    packs: PackCache,
    frames: Mutex<FrameCache>,
    /// Decodes the frames a large read needs in parallel.
    pool: rayon::ThreadPool,
    counters: Counters,
}

/// A long-lived read handle on a store, shared by many threads. See the
/// module documentation.
#[derive(Clone)]
pub struct StoreReader {
    shared: Arc<Shared>,
}

impl Store {
    /// A [`StoreReader`] with a [`DEFAULT_CACHE_BYTES`] frame cache.
    pub fn reader(self: &Arc<Self>) -> Result<StoreReader> {
        self.reader_with(DEFAULT_CACHE_BYTES)
    }

    /// A [`StoreReader`] whose frame cache holds up to `cache_bytes`.
    pub fn reader_with(self: &Arc<Self>, cache_bytes: usize) -> Result<StoreReader> {
        // The lease first, then the index: gc lists the live sessions after
        // it writes its plan, so either this reader is listed or its index
        // already sees what gc repacked.
        let session = match Session::start(self.backend.clone(), "read") {
            Ok(s) => Some(s),
            Err(Error::NoSpace { path }) => {
                tracing::warn!("store is full ({}): reading without a lease", path.display());
                None
            }
            Err(e) => return Err(e),
        };
        self.index_catch_up()?;
        let lookup = index::Reader::open(&self.index_dir)?;
        Ok(StoreReader {
            shared: Arc::new(Shared {
                store: self.clone(),
                session: Mutex::new(session),
                index: RwLock::new(Arc::new(lookup)),
                generation: AtomicU64::new(0),
                refreshing: Mutex::new(()),
                packs: PackCache::new(),
                frames: Mutex::new(FrameCache::new(cache_bytes)),
                pool: super::own_pool("the reader's decodes", "imgstore-decode")?,
                counters: Counters::default(),
            }),
        })
    }
}

impl StoreReader {
    /// Opens the image a user's ref names (`name:tag` or an id prefix).
    pub fn open(&self, image: &ImageRef) -> Result<ImageReader> {
        let id = self.shared.store.resolve(image)?.id;
        self.open_id(&id)
    }

    /// Opens the image `id`: checks its manifest whole and notes where
    /// every [`WINDOW`]th entry starts.
    pub fn open_id(&self, id: &ImageId) -> Result<ImageReader> {
        let store = &self.shared.store;
        let stored = |k: &str| store.backend.head(k).map(|m| m.is_some());
        if !(stored(&manifest::key(id))? || stored(&manifest::delta_key(id))?) {
            return Err(Error::not_found(Wanted::Image(id.to_string())));
        }
        let (key, file) = store.open_manifest(id)?;
        let mut reader = self.open_manifest(&key, file, id)?;
        // An archived image is read from its stream, blocks deflated again
        // as reads need them; its manifest still gives its size.
        if let Some(recipe) = store.recipe(id)? {
            let (key, file) = store.open_stream_manifest(&recipe)?;
            let stream = self.open_manifest(&key, file, &ImageId(recipe.stream))?;
            reader.archived = Some(Box::new(ArchivedView::new(recipe, stream)));
        }
        Ok(reader)
    }

    /// Opens the bytes the manifest at `key` (in `file`) lists, which must
    /// describe `id`: an image, or an archived image's stream.
    pub(crate) fn open_manifest(
        &self,
        key: &str,
        file: Box<dyn ReadAt>,
        id: &ImageId,
    ) -> Result<ImageReader> {
        let store = &self.shared.store;
        let (mut at, mut n, mut starts) = (0u64, 0u64, Vec::new());
        let manifest = ManifestFile::open_each(
            file,
            Object::Manifest { key: key.to_owned() },
            &mut |base| store.full_manifest_file(base),
            &mut |e| {
                if n.is_multiple_of(WINDOW) {
                    starts.push(at);
                }
                at += e.len();
                n += 1;
            },
        )?;
        if manifest.head.id != *id {
            return Err(Error::corrupt(
                Object::Manifest { key: key.to_owned() },
                format!("describes image {}", manifest.head.id),
            ));
        }
        starts.shrink_to_fit();
        Ok(ImageReader {
            shared: self.shared.clone(),
            id: *id,
            size: manifest.head.size,
            count: manifest.head.count,
            manifest,
            starts,
            windows: Mutex::new(Vec::with_capacity(WINDOWS_KEPT)),
            archived: None,
        })
    }

    /// Catches the index up with the store and reads through a new view of
    /// it: images put since the reader opened become readable, chunks gc
    /// moved are found where they are now.
    pub fn refresh(&self) -> Result<()> {
        let seen = self.shared.generation.load(Ordering::Acquire);
        self.shared.refresh(seen)
    }

    /// Takes a new lease, catches up, then ends the old lease. gc waits
    /// for the sessions it listed with its plan to end before it deletes,
    /// so a reader that lives for days (`serve`, `mount`) and kept its
    /// first lease would hold every gc back; renewed every few minutes, it
    /// holds one back that long. Reads in flight go on: one that finds a
    /// pack gc deleted refreshes and retries, as any read does.
    pub fn renew_lease(&self) -> Result<()> {
        let new = match Session::start(self.shared.store.backend.clone(), "read") {
            Ok(s) => Some(s),
            Err(Error::NoSpace { path }) => {
                tracing::warn!("store is full ({}): reading without a lease", path.display());
                None
            }
            Err(e) => return Err(e),
        };
        // The new lease first, then the index, as when the reader opened.
        self.refresh()?;
        let old = std::mem::replace(&mut *self.shared.session.lock().expect("reader lease"), new);
        match old {
            Some(old) => old.end(),
            None => Ok(()),
        }
    }

    /// How often a long-lived reader should [`renew_lease`](Self::renew_lease):
    /// half a lease (`IMGSTORE_LEASE_SECS`), at least a second.
    pub fn renew_every() -> std::time::Duration {
        (crate::session::lease() / 2).max(std::time::Duration::from_secs(1))
    }

    /// What this reader has done so far.
    pub fn stats(&self) -> ReaderStats {
        let c = &self.shared.counters;
        ReaderStats {
            frames_decoded: c.frames_decoded.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            relocated: c.relocated.load(Ordering::Relaxed),
        }
    }

    /// Memory held by the caches and the index view.
    pub fn memory(&self) -> ReaderMemory {
        ReaderMemory {
            frames: self.shared.frames.lock().expect("frame cache").bytes,
            open_packs: self.shared.packs.len(),
            index: self.shared.index().1.memory(),
        }
    }
}

impl Shared {
    /// The current index view and its generation.
    fn index(&self) -> (u64, Arc<index::Reader>) {
        let view = self.index.read().expect("index view");
        (self.generation.load(Ordering::Acquire), view.clone())
    }

    /// Catches up and takes a new view, unless another thread did since
    /// generation `seen`.
    fn refresh(&self, seen: u64) -> Result<()> {
        let _one = self.refreshing.lock().expect("refresh lock");
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        self.store.index_catch_up()?;
        let view = Arc::new(index::Reader::open(&self.store.index_dir)?);
        *self.index.write().expect("index view") = view;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The decoded frame at `loc` (for chunk `id`), from the cache or the pack.
    fn frame(&self, id: &ChunkId, loc: &Location) -> Result<Arc<Frame>> {
        let key = (loc.pack, loc.offset);
        if let Some(f) = self.frames.lock().expect("frame cache").get(&key) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(f);
        }
        let file = self.packs.get(self.store.backend.as_ref(), &loc.pack)?;
        let frame = if loc.in_group() {
            Frame {
                bytes: pack::read_group(file.as_ref(), loc)?,
                checked: Mutex::new(Vec::new()),
            }
        } else {
            Frame {
                bytes: pack::read_chunk_with(file.as_ref(), id, loc, Check::Hash)?,
                checked: Mutex::new(vec![(0, *id)]),
            }
        };
        self.counters.frames_decoded.fetch_add(1, Ordering::Relaxed);
        let frame = Arc::new(frame);
        self.frames
            .lock()
            .expect("frame cache")
            .insert(key, frame.clone());
        Ok(frame)
    }

    /// Chunk `id`'s checked bytes: its frame and where in it.
    fn chunk(&self, id: &ChunkId, loc: &Location) -> Result<(Arc<Frame>, Range<usize>)> {
        let frame = self.frame(id, loc)?;
        let range = frame.member(id, loc)?;
        Ok((frame, range))
    }
}

/// One entry of an image and where in the image it starts.
#[derive(Clone, Copy)]
struct Placed {
    at: u64,
    entry: Entry,
}

/// The decoded entries of one window of a manifest.
struct Window {
    /// Image offset where each entry starts.
    starts: Vec<u64>,
    entries: Vec<Entry>,
}

/// Random access to one image. `Send + Sync`: threads may share it.
pub struct ImageReader {
    shared: Arc<Shared>,
    id: ImageId,
    size: u64,
    count: u64,
    manifest: ManifestFile,
    /// Image offset of entry `k * WINDOW`.
    starts: Vec<u64>,
    /// Recently used windows, most recent last.
    windows: Mutex<Vec<(u64, Arc<Window>)>>,
    /// Set for an archived image: reads go through its stream.
    archived: Option<Box<ArchivedView>>,
}

impl ImageReader {
    /// The image's id.
    pub fn id(&self) -> ImageId {
        self.id
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Heap bytes this reader holds beside the shared caches: the offset
    /// table and the windows of entries it keeps (a delta manifest's own
    /// bytes, at most [`manifest::delta::MAX_BYTES`], are not counted).
    pub fn memory(&self) -> usize {
        let windows = self.windows.lock().expect("windows");
        self.starts.capacity() * 8
            + windows.capacity() * std::mem::size_of::<(u64, Arc<Window>)>()
            + windows
                .iter()
                .map(|(_, w)| {
                    std::mem::size_of::<Window>()
                        + w.starts.capacity() * 8
                        + w.entries.capacity() * std::mem::size_of::<Entry>()
                })
                .sum::<usize>()
    }

    /// Reads up to `buf.len()` bytes of the image from `offset`; fewer only
    /// at the end of the image (0 at or past it). Every chunk is checked
    /// against its id before any of its bytes reach `buf`: damage is an
    /// error naming the image, the chunk and where it is stored.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut at = 0;
        for part in self.read_parts(offset, buf.len())? {
            let out = &mut buf[at..at + part.len()];
            match &part {
                Part::Bytes(b) => out.copy_from_slice(b.as_ref()),
                Part::Zeros(_) => out.fill(0),
            }
            at += out.len();
        }
        Ok(at)
    }

    /// The bytes [`read_at`](Self::read_at) would copy, without the copy:
    /// up to `len` bytes from `offset` as checked ranges of the decoded
    /// frames the reader's cache shares, and zero runs. Every chunk in them
    /// was checked against its id, in parallel on the reader's pool.
    /// Adjacent ranges of one frame come back as one part.
    pub fn read_parts(&self, offset: u64, len: usize) -> Result<Vec<Part>> {
        if offset >= self.size || len == 0 {
            return Ok(Vec::new());
        }
        if let Some(a) = &self.archived {
            return a.read_parts(offset, len, &self.shared.pool);
        }
        let end = self.size.min(offset.saturating_add(len as u64));
        let placed = self.entries(offset, end)?;
        let ids: Vec<ChunkId> = placed
            .iter()
            .filter_map(|p| match p.entry {
                Entry::Chunk { id, .. } => Some(id),
                Entry::Zero { .. } => None,
            })
            .collect();
        let (generation, locations) = self.locate(&ids)?;
        let mut located = locations.into_iter();
        let jobs: Vec<(Placed, Option<Option<Location>>)> = placed
            .into_iter()
            .map(|p| match p.entry {
                Entry::Chunk { .. } => (p, Some(located.next().expect("one location per chunk"))),
                Entry::Zero { .. } => (p, None),
            })
            .collect();
        // One part per entry, clipped to offset..end: a chunk's frame is
        // decoded (once, whichever job gets there first is
        // `decode_cold`'s) and the chunk hashed on the pool's threads.
        let part = |(p, loc): &(Placed, Option<Option<Location>>)| -> Result<Part> {
            let from = p.at.max(offset);
            let to = (p.at + p.entry.len()).min(end);
            match (p.entry, loc) {
                (Entry::Chunk { id, .. }, Some(loc)) => {
                    let (frame, range) = self.chunk(&id, *loc, generation, p.at)?;
                    let start = range.start + (from - p.at) as usize;
                    Ok(Part::Bytes(SharedBytes {
                        frame,
                        range: start..start + (to - from) as usize,
                    }))
                }
                _ => Ok(Part::Zeros(to - from)),
            }
        };
        let parts: Vec<Part> = if ids.len() > 1 {
            self.decode_cold(&jobs);
            self.shared
                .pool
                .install(|| jobs.par_iter().map(part).collect::<Result<_>>())?
        } else {
            jobs.iter().map(part).collect::<Result<_>>()?
        };
        Ok(merge(parts))
    }

    /// Decodes the frames `jobs` need that are not cached, in parallel, so
    /// that no two threads decode the same frame. Failures are met again
    /// when each chunk is read, and named there.
    fn decode_cold(&self, jobs: &[(Placed, Option<Option<Location>>)]) {
        let mut cold: Vec<(ChunkId, Location)> = {
            let mut cache = self.shared.frames.lock().expect("frame cache");
            jobs.iter()
                .filter_map(|(p, loc)| match (p.entry, loc) {
                    (Entry::Chunk { id, .. }, Some(Some(l))) => Some((id, *l)),
                    _ => None,
                })
                .filter(|(_, l)| cache.get(&(l.pack, l.offset)).is_none())
                .collect()
        };
        cold.sort_unstable_by_key(|(_, l)| (l.pack, l.offset));
        cold.dedup_by_key(|(_, l)| (l.pack, l.offset));
        if cold.len() > 1 {
            self.shared.pool.install(|| {
                cold.par_iter().for_each(|(id, loc)| {
                    let _ = self.shared.frame(id, loc);
                })
            });
        }
    }

    /// Locations of `ids`; when the view lacks any (an image put since it
    /// was taken), after one refresh. Returns the view's generation.
    fn locate(&self, ids: &[ChunkId]) -> Result<(u64, Vec<Option<Location>>)> {
        let (generation, view) = self.shared.index();
        let found = view.lookup(ids)?;
        if found.iter().all(Option::is_some) {
            return Ok((generation, found));
        }
        drop(view);
        self.shared.refresh(generation)?;
        let (generation, view) = self.shared.index();
        Ok((generation, view.lookup(ids)?))
    }

    /// Chunk `id` (at image offset `at`), checked; if its pack is gone (gc
    /// repacked it), found again after one refresh of the index.
    fn chunk(
        &self,
        id: &ChunkId,
        loc: Option<Location>,
        generation: u64,
        at: u64,
    ) -> Result<(Arc<Frame>, Range<usize>)> {
        let Some(loc) = loc else {
            return Err(Error::corrupt(
                Object::Image(self.id),
                format!(
                    "chunk {id} at image offset {at} is in no pack the index knows; \
                     run `imgstore index rebuild`, then `imgstore verify`"
                ),
            ));
        };
        let err = match self.shared.chunk(id, &loc) {
            Ok(found) => return Ok(found),
            Err(e) if is_missing(&e) => e,
            Err(e) => return Err(self.named(e, id, &loc, at)),
        };
        self.shared.refresh(generation)?;
        let (_, view) = self.shared.index();
        match view.lookup(std::slice::from_ref(id))?.pop().flatten() {
            Some(moved) if moved != loc => {
                let found = self
                    .shared
                    .chunk(id, &moved)
                    .map_err(|e| self.named(e, id, &moved, at))?;
                self.shared.counters.relocated.fetch_add(1, Ordering::Relaxed);
                Ok(found)
            }
            Some(_) => Err(self.named(err, id, &loc, at)),
            None => Err(Error::Busy {
                what: format!("image {}", self.id),
                holder: format!(
                    "garbage collection deleted pack {} while it was being read, and chunk {id} \
                     is in no other pack (the image was removed)",
                    loc.pack
                ),
            }),
        }
    }

    /// A chunk's failure as the image's: which chunk, where in the image,
    /// in which pack at which offset.
    fn named(&self, e: Error, id: &ChunkId, loc: &Location, at: u64) -> Error {
        match e {
            Error::Corrupt { object, detail } => Error::corrupt(
                Object::Image(self.id),
                format!(
                    "chunk {id} at image offset {at}, in pack {} at offset {}: {object}: {detail}",
                    loc.pack, loc.offset
                ),
            ),
            other => other,
        }
    }

    /// The entries that overlap `offset..end`, with where each starts.
    fn entries(&self, offset: u64, end: u64) -> Result<Vec<Placed>> {
        let mut out = Vec::new();
        let mut w = (self.starts.partition_point(|s| *s <= offset) - 1) as u64;
        loop {
            let window = self.window(w)?;
            let first = window
                .starts
                .partition_point(|s| *s <= offset.max(window.starts[0]))
                - 1;
            for (k, entry) in window.entries.iter().enumerate().skip(first) {
                let at = window.starts[k];
                if at >= end {
                    return Ok(out);
                }
                if entry.is_empty() {
                    continue;
                }
                out.push(Placed { at, entry: *entry });
            }
            w += 1;
            if w * WINDOW >= self.count {
                return Ok(out);
            }
        }
    }

    /// Window `w` of the manifest's entries, read and kept if not kept yet.
    fn window(&self, w: u64) -> Result<Arc<Window>> {
        {
            let mut kept = self.windows.lock().expect("windows");
            if let Some(i) = kept.iter().position(|(k, _)| *k == w) {
                let hit = kept.remove(i);
                let window = hit.1.clone();
                kept.push(hit);
                return Ok(window);
            }
        }
        let first = w * WINDOW;
        let n = WINDOW.min(self.count - first);
        let entries = self.manifest.entries(first, n)?;
        let mut at = self.starts[w as usize];
        let starts = entries
            .iter()
            .map(|e| {
                let s = at;
                at += e.len();
                s
            })
            .collect();
        let window = Arc::new(Window { starts, entries });
        let mut kept = self.windows.lock().expect("windows");
        if kept.len() >= WINDOWS_KEPT {
            kept.remove(0);
        }
        kept.push((w, window.clone()));
        Ok(window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Digest;

    fn frame(n: usize) -> Arc<Frame> {
        Arc::new(Frame {
            bytes: vec![0; n],
            checked: Mutex::new(Vec::new()),
        })
    }

    #[test]
    fn adjacent_ranges_of_one_frame_and_runs_of_zeros_merge() {
        let (a, b) = (frame(100), frame(100));
        let part = |f: &Arc<Frame>, r: Range<usize>| {
            Part::Bytes(SharedBytes {
                frame: f.clone(),
                range: r,
            })
        };
        let merged = merge(vec![
            part(&a, 0..10),
            part(&a, 10..30),
            part(&a, 40..50),
            part(&b, 50..60),
            Part::Zeros(5),
            Part::Zeros(7),
            part(&b, 60..70),
        ]);
        let shape: Vec<(bool, usize)> = merged
            .iter()
            .map(|p| (matches!(p, Part::Zeros(_)), p.len()))
            .collect();
        assert_eq!(
            shape,
            [(false, 30), (false, 10), (false, 10), (true, 12), (false, 10)]
        );
    }

    #[test]
    fn the_frame_cache_keeps_to_its_budget_dropping_the_least_recently_used() {
        let key = |i: u64| (Digest([1; 32]), i);
        let mut cache = FrameCache::new(1000);
        cache.insert(key(1), frame(400));
        cache.insert(key(2), frame(400));
        assert!(cache.get(&key(1)).is_some());
        cache.insert(key(3), frame(400));
        assert!(cache.get(&key(2)).is_none(), "2 was the least recently used");
        assert!(cache.get(&key(1)).is_some() && cache.get(&key(3)).is_some());
        assert_eq!(cache.bytes, 800);
        cache.insert(key(4), frame(2000));
        assert!(cache.get(&key(4)).is_none(), "larger than the whole budget");
        assert_eq!((cache.bytes, cache.frames.len(), cache.order.len()), (800, 2, 2));
    }
}
