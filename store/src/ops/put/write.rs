//! The last stages: the pack writer (staged packs committed one behind,
//! an index segment every few packs) and the indexer that catches the
//! local index up with each segment.

use super::*;

/// Packs whose chunk locations go into one index segment: a put of new
/// data keeps at most this many packs' locations (~80 B per chunk) in memory,
/// and, once the segment is in the index, forgets which chunks it stored.
pub(super) const PACKS_PER_SEGMENT: u64 = 8;

/// `IMGSTORE_TEST_PACKS_PER_SEGMENT`: tests make a small image cross
/// segments, and have the put wait for each segment, so that what it
/// forgets is the same from run to run. Read only in a build with the
/// `test-hooks` feature (what `cargo test` builds), as `hold` is.
#[cfg(feature = "test-hooks")]
pub(super) fn test_packs_per_segment() -> Option<u64> {
    std::env::var("IMGSTORE_TEST_PACKS_PER_SEGMENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}

/// Without the `test-hooks` feature (every release binary): always
/// [`PACKS_PER_SEGMENT`], whatever the environment says.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(super) fn test_packs_per_segment() -> Option<u64> {
    None
}

/// Packs written but not yet committed (fsynced and renamed into place).
/// Each pack's write-back starts when it is written, and its commit waits
/// until the next one is written, so the disk works on one pack while the
/// next is filled, and the pack's buffer goes back to the put at once
/// instead of after its fsync.
pub(super) const STAGED_PACKS: usize = 1;

/// Writes finished packs, hands their buffers back through `free`, and
/// writes an index segment every [`PACKS_PER_SEGMENT`] packs and at the end,
/// telling `indexed` how many packs the segments written so far cover.
/// Returns the number of packs. A segment only says where chunks are, and
/// is written only after the packs it names are durable; until the ref is
/// written no image uses them, and a put that fails leaves them to gc like
/// its packs (an uncommitted pack is a temporary file gc removes).
pub(super) fn spawn_pack_writer(
    backend: Arc<dyn Backend>,
    packs: Receiver<PackBuilder>,
    free: SyncSender<Vec<u8>>,
    buffer_capacity: usize,
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
                let (buf, start) = bytes.into_parts();
                let (stage, back) = backend.stage_owned(&pack::key(&id), buf, start)?;
                staged.push_back(stage);
                hold::point("put-after-stage");
                // An upload keeps its buffer until it is done (object
                // storage): the put fills a new one meanwhile, which costs
                // less than a copy of the pack, and holds one pack less in
                // memory. The builder may be gone (it failed): then so is
                // the pool.
                let buf = back.unwrap_or_else(|| Vec::with_capacity(buffer_capacity));
                let _ = free.send(buf);
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
pub(super) type Indexed = Result<(u64, index::Reader)>;

/// Catches the local index up with each segment the pack writer puts in
/// the store and opens a new reader of it, off the thread that looks
/// chunks up: done on that thread, a catch-up (44-779 ms in a first put of
/// a 3.2 GiB ext3 image) held up the lookups, and the pool ran out of
/// blocks to compress. Stops after the first error, which it hands on.
pub(super) fn spawn_indexer(
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
