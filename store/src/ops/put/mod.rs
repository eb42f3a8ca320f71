//! `put`: an image file or stream becomes chunks, packs, an index segment, a
//! manifest and finally a ref — in that order, each durable before the next
//! refers to it, so a crash at any point leaves no half-visible image.
//!
//! Pipeline: a reader thread fills large blocks and hashes the whole image;
//! a cutter thread finds the blocks' FastCDC boundaries (each block's two
//! halves at once, see [`Chunker::chunks_parallel`]) and hashes the chunks,
//! on a rayon pool of its own (`cut_pool`); this thread looks known chunks up in the index in one batch per
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
use crate::error::{Error, Object, Result};
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

mod cut;
mod encode;
mod ingest;
mod input;
mod write;

use cut::*;
use encode::*;
use ingest::*;
use input::*;
use write::*;

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

/// What a copied image keeps from its source store.
pub(crate) struct Copied {
    /// The source manifest's metadata (SIF facts).
    pub meta: ManifestMeta,
    /// The source ref's record.
    pub record: RefRecord,
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
    /// Requests made to object storage, by kind (absent for a directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<crate::backend::Requests>,
}

/// An image's bytes stored as chunks, not yet published: see
/// [`Store::ingest`].
pub(crate) struct Ingested {
    /// Keeps gc off the new chunks until the caller publishes; ended by it.
    pub session: Session,
    /// BLAKE3 of the bytes.
    pub id: ImageId,
    /// Bytes read.
    pub size: u64,
    /// The chunk list, in order.
    pub entries: manifest::Spooled,
    /// What was added to the store.
    pub added: Added,
    /// Chunks (zero runs excluded).
    pub chunks: u64,
    /// Bytes in zero runs.
    pub zero_bytes: u64,
    /// Packs written.
    pub packs: u64,
}

/// The cutter's own threads, as many as there are cores (or
/// `RAYON_NUM_THREADS`). Cutting and hashing on the pool that compresses
/// queued each block's cut behind the blocks being compressed (rayon takes
/// outside work first in, first out), so a first put alternated between
/// compressing and cutting, and the lookup thread waited 7.1 s of an 8.2 s
/// put of c00-init.ext3 for cuts while both cores were busy only 1.66 of
/// the time. With a pool of its own the next block is cut while earlier
/// ones compress.
pub(super) fn cut_pool() -> Result<rayon::ThreadPool> {
    pool("cutter", "imgstore-cut")
}

/// The put's compression threads, as many as the cutter's. Not rayon's
/// global pool: that one is started on first use, where a failure to start
/// a thread is a panic, and a panic in a job on it aborts the process.
pub(super) fn encode_pool() -> Result<rayon::ThreadPool> {
    pool("compressor", "imgstore-enc")
}

/// A pool of the put's own ([`super::own_pool`]). A panic that escapes a
/// job is caught in the job ([`EncodedBlock::encode_caught`]).
pub(super) fn pool(what: &str, prefix: &'static str) -> Result<rayon::ThreadPool> {
    super::own_pool(&format!("the put's {what}"), prefix)
}

/// A failure of the put itself, not of its input or the store (exit 1).
pub(super) fn internal(what: impl std::fmt::Display) -> Error {
    Error::Internal {
        detail: format!("in the put: {what}"),
    }
}

/// A panic of one of the put's threads or jobs, as an error of the put.
pub(super) fn panicked(what: &str, payload: Box<dyn std::any::Any + Send>) -> Error {
    internal(format!(
        "{what} panicked: {}",
        super::panic_message(payload.as_ref())
    ))
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

    /// The first stage of a put: the image's bytes become chunks in packs
    /// and index segments, durable but not yet referred to by anything,
    /// under a session that keeps gc off them until they are. The caller
    /// publishes (a manifest and a ref; or an archive's stream and recipe).
    fn ingest(
        &self,
        reader: Source,
        total: Option<u64>,
        input_name: PathBuf,
        file_check: Option<&(PathBuf, File, FileStat)>,
        zstd_level: Option<i32>,
        progress: &dyn Progress,
    ) -> Result<Ingested> {
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
        let buffer_capacity = pack_capacity + DIRECT_ALIGN;
        free_pack_tx
            .send(Vec::with_capacity(buffer_capacity))
            .expect("channel has room");
        let (segment_tx, segment_rx) = std::sync::mpsc::channel();
        let pack_thread = spawn_pack_writer(
            self.backend.clone(),
            pack_rx,
            free_pack_tx,
            buffer_capacity,
            segment_tx,
        )?;
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
            zstd_level: zstd_level.unwrap_or(self.config.compression.zstd_level),
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

        if let Some((path, f, before)) = file_check {
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

        Ok(Ingested {
            session,
            id: ImageId(Digest::from(image.finalize())),
            size,
            entries: entries.finish()?,
            added,
            chunks,
            zero_bytes,
            packs: pack_count,
        })
    }

    /// [`Store::ingest`] of a stream that is not a user's image (an
    /// archive's stream), named `what` in errors, its new chunks compressed
    /// at `zstd_level`.
    pub(crate) fn ingest_stream(
        &self,
        stream: Box<dyn Read + Send>,
        what: &str,
        zstd_level: i32,
        progress: &dyn Progress,
    ) -> Result<Ingested> {
        self.ingest(
            Source::Stream(stream),
            None,
            PathBuf::from(what),
            None,
            Some(zstd_level),
            progress,
        )
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
        self.put_as(reference, input, opts, None, progress)
    }

    /// [`Store::put`], or with `copied` the put of an image read from
    /// another store: its manifest metadata and its ref's provenance
    /// (created, user, host, message, labels, deffile) are kept, and
    /// nothing is published unless the bytes hash to the source's id.
    pub(crate) fn put_as(
        &self,
        reference: &TagRef,
        input: Input,
        opts: &PutOptions,
        copied: Option<&Copied>,
        progress: &dyn Progress,
    ) -> Result<PutReport> {
        let started = Instant::now();
        let requests_before = self.backend.requests();
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
        let Ingested {
            session,
            id,
            size,
            entries,
            added,
            chunks,
            zero_bytes,
            packs: pack_count,
        } = self.ingest(reader, total, input_name, file_check.as_ref(), None, progress)?;
        if let Some(c) = copied {
            if c.record.image != id || c.record.size != size {
                return Err(Error::corrupt(
                    Object::Image(c.record.image),
                    format!("it read back from the source store as {size} bytes hashing to {id}; nothing was published"),
                ));
            }
        }
        let meta = match copied {
            Some(c) => c.meta.clone(),
            None => ManifestMeta { sif: sif_info },
        };
        let is_sif = meta.sif.is_some();
        self.store_manifest(reference, size, &id, &meta, &entries)?;
        hold::point("put-after-manifest");

        let previous = self.read_ref(reference)?.map(|r| r.image).filter(|p| *p != id);
        let record = match copied {
            Some(c) => RefRecord {
                added,
                ..c.record.clone()
            },
            None => RefRecord {
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
            },
        };
        hold::point("put-before-ref");
        session.check()?;
        self.backend.put(&reference.key(), &record.to_bytes())?;
        hold::point("put-after-ref");

        let action = if copied.is_some() { "copy" } else { "put" };
        let mut event = Event::now(action, reference.to_string(), Some(id));
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
            requests: self.requests_since(requests_before),
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
