//! The stage on the put's own thread: each cut block's lookups in the
//! index, its zero runs and known chunks into the manifest, its new chunks
//! queued for compression and then packed in image order.

use super::*;

/// Where the lookup thread spent a put's wall time, beside its own work:
/// logged at debug level (`IMGSTORE_LOG=imgstore_store=debug`) to find
/// the stage that holds the pipeline up.
#[derive(Debug, Default)]
pub(super) struct Waits {
    /// For the cutter's next block.
    pub(super) cut: std::time::Duration,
    /// In index lookups.
    pub(super) lookup: std::time::Duration,
    /// For the oldest block's compression.
    pub(super) encode: std::time::Duration,
    /// For the pack writer: a free pack buffer, or its taking a full pack.
    pub(super) pack: std::time::Duration,
}

/// State of one put between blocks.
pub(super) struct Ingest<'a> {
    pub(super) waits: Waits,
    pub(super) lookup: index::Reader,
    /// Packs a pending GC plan condemned: chunks found only there are stored anew.
    pub(super) condemned: &'a HashSet<PackId>,
    pub(super) zstd_level: i32,
    /// Raw bytes per group at most; 0 in a store without groups.
    pub(super) group_bytes: usize,
    pub(super) pack_size: usize,
    pub(super) entries: manifest::Spool,
    /// Chunks this put stored and the index cannot find yet, so an image
    /// repeating itself stores each once: id -> the pack it went into
    /// ([`PENDING`] until it is in one).
    pub(super) written: HashMap<ChunkId, u64>,
    /// Blocks being compressed, oldest first.
    pub(super) encoding: VecDeque<Receiver<Result<EncodedBlock>>>,
    /// Where they are compressed.
    pub(super) encode_pool: &'a rayon::ThreadPool,
    /// Packs handed to the writer so far.
    pub(super) packs_sent: u64,
    /// From the indexer: a reader of the index that now covers this many
    /// of this put's packs.
    pub(super) indexed: Receiver<Indexed>,
    /// Tests: wait for a segment every this many packs.
    pub(super) wait_for_segments: Option<u64>,
    pub(super) pack: PackBuilder,
    pub(super) packs: SyncSender<PackBuilder>,
    /// Buffers of written packs, back from the writer: two in all, so a
    /// put holds at most one pack being filled and one being written.
    pub(super) free_packs: Receiver<Vec<u8>>,
    pub(super) added: Added,
    pub(super) chunks: u64,
    pub(super) zero_bytes: u64,
}

/// [`Ingest::written`]'s mark for a chunk not yet added to a pack.
pub(super) const PENDING: u64 = u64::MAX;

impl Ingest<'_> {
    /// Looks up the chunks of a cut block, lists them in the manifest and
    /// has the pool compress the new ones; packs get them, in image order,
    /// once up to [`ENCODING_BLOCKS`] later blocks are on their way too.
    /// Blocks whose chunks are in packs go back to the reader by `free`.
    pub(super) fn block(&mut self, cut: Cut, free: &SyncSender<Vec<u8>>) -> Result<()> {
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
    pub(super) fn settle(&mut self, free: &SyncSender<Vec<u8>>, keep: usize) -> Result<()> {
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
    pub(super) fn add_to_packs(&mut self, block: EncodedBlock) -> Result<Vec<u8>> {
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
    pub(super) fn zero_run(&mut self, len: u64) -> Result<()> {
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
    pub(super) fn forget_indexed(&mut self) -> Result<()> {
        match self.indexed.try_iter().last() {
            Some(fresh) => self.forget_up_to(fresh),
            None => Ok(()),
        }
    }

    pub(super) fn forget_up_to(&mut self, fresh: Indexed) -> Result<()> {
        let (covered, reader) = fresh?;
        self.lookup = reader;
        self.written.retain(|_, pack| *pack >= covered);
        Ok(())
    }

    pub(super) fn flush_pack(&mut self) -> Result<()> {
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
