//! Where reads cost a request (object storage), a get reads its batches'
//! frames as a few long ranged GETs started ahead of the decoding.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::Located;
use crate::backend::{Pending, ReadAt};
use crate::error::Result;
use crate::id::PackId;
use crate::pack;
use crate::Store;

/// Ranges of packs read ahead in one request each, by pack: where a
/// request costs what an object store's costs, a batch's frames are read as
/// a few long ranged GETs, not two small ones per chunk.
pub(super) type Spans = HashMap<PackId, Arc<Vec<(u64, Vec<u8>)>>>;

/// Frames closer than this are read in one span, the bytes between them
/// with them.
const SPAN_GAP: u64 = 256 << 10;
/// A span is at most this long (a frame longer than it is a span of its
/// own): a batch's spans are fetched concurrently, and one long GET of a
/// pack is as slow as one stream from the server.
const SPAN_MAX: u64 = 4 << 20;

/// Where a batch's frames are read as spans: its group frames that the
/// batch before did not decode too (`decoded_before`) and its chunks'
/// own frames, merged into runs of one pack (pack, start, end).
fn span_runs(jobs: &Located, decoded_before: &GroupKeys) -> Vec<(PackId, u64, u64)> {
    let mut extents: Vec<(PackId, u64, u64)> = jobs
        .iter()
        .filter_map(|job| job.as_ref().ok().map(|(_, loc)| *loc))
        .filter(|loc| !loc.in_group() || !decoded_before.contains(&(loc.pack, loc.offset)))
        .map(|l| {
            (
                l.pack,
                l.offset,
                l.offset + pack::FRAME_HEADER_LEN as u64 + u64::from(l.stored_len),
            )
        })
        .collect();
    extents.sort_unstable();
    extents.dedup();
    let mut runs: Vec<(PackId, u64, u64)> = Vec::new();
    for (pack, start, end) in extents {
        match runs.last_mut() {
            Some((p, s, e)) if *p == pack && start <= *e + SPAN_GAP && end - *s <= SPAN_MAX => {
                *e = (*e).max(end)
            }
            _ => runs.push((pack, start, end)),
        }
    }
    runs
}

/// The group frames of a batch, by pack and offset.
type GroupKeys = HashSet<(PackId, u64)>;

/// A batch's span reads, started: where each begins, and its read.
pub(super) type Started = Vec<(PackId, u64, Box<dyn Pending>)>;

/// Starts the span reads of batch after batch, where a read costs what an
/// object store's request costs; elsewhere (a directory) none.
pub(super) struct ReadAhead {
    on: bool,
    /// The group frames of the batch before, which the fetch keeps
    /// decoded: not read again.
    decoded_before: GroupKeys,
}

impl ReadAhead {
    pub(super) fn new(store: &Store) -> Self {
        ReadAhead {
            on: store.backend.requests().is_some(),
            decoded_before: GroupKeys::new(),
        }
    }

    pub(super) fn start(&mut self, store: &Store, jobs: &Located) -> Started {
        if !self.on {
            return Started::new();
        }
        let runs = span_runs(jobs, &self.decoded_before);
        self.decoded_before = jobs
            .iter()
            .filter_map(|job| job.as_ref().ok().map(|(_, loc)| *loc))
            .filter(|loc| loc.in_group())
            .map(|loc| (loc.pack, loc.offset))
            .collect();
        runs.into_iter()
            .map(|(pack, start, end)| {
                let read = store.backend.read_ahead(&pack::key(&pack), start, end - start);
                (pack, start, read)
            })
            .collect()
    }
}

/// The spans of a batch, once read. A span that fails is left out (its
/// frames are then read one by one, which names the damage), unless the
/// server gave no answer: asked again frame by frame, it would cost
/// another retry budget before the same error.
pub(super) fn wait_spans(started: Started) -> Result<Spans> {
    let mut spans: HashMap<PackId, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for (pack, start, read) in started {
        match read.wait() {
            Ok(bytes) => spans.entry(pack).or_default().push((start, bytes)),
            Err(e) if e.is_unanswered() => return Err(e),
            Err(_) => {}
        }
    }
    Ok(spans.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}

/// A pack whose reads inside a span come from memory.
pub(super) struct Spanned {
    pub(super) spans: Arc<Vec<(u64, Vec<u8>)>>,
    pub(super) file: Arc<dyn ReadAt>,
}

impl ReadAt for Spanned {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let inside = self
            .spans
            .iter()
            .find(|(start, data)| *start <= offset && end <= start + data.len() as u64);
        match inside {
            Some((start, data)) => {
                let from = (offset - start) as usize;
                buf.copy_from_slice(&data[from..from + buf.len()]);
                Ok(())
            }
            None => self.file.read_exact_at(buf, offset),
        }
    }

    fn size(&self) -> Result<u64> {
        self.file.size()
    }
}
