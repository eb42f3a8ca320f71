//! Garbage collection on a live store, in two phases.
//!
//! A run first *executes* the pending plan, if it is ready, then *condemns*
//! what is garbage now into a new plan (`gc/plan`):
//!
//! - **Condemn**: mark from refs -> manifests; every pack whose chunks are
//!   all unmarked is condemned; a pack that is mostly garbage has its live
//!   chunks copied into a new pack first (repack), then is condemned. The
//!   plan is written, *then* the live sessions are listed into it. A put
//!   writes its session *before* it reads the plan, so every put either saw
//!   the plan (and stores condemned chunks anew instead of referencing them)
//!   or is listed in it.
//! - **Execute** (a later run): only after the grace period has passed by the
//!   store's clock (file mtimes, not host clocks) and every listed session
//!   has ended or lapsed. It marks again and deletes a condemned pack only if
//!   each of its chunks is unmarked or has a copy in a pack that stays. Before
//!   deleting a pack it writes a tombstone, so every host's index drops it;
//!   before each batch it re-checks its own lease.
//!
//! Each run also removes the temporary files of writers that died (a put
//! killed mid-way leaves up to two 32 MiB packs-to-be): those older than
//! [`STALE_TEMPORARY`] and not named for a live session's process.
//!
//! Every read error during a mark aborts the run (fail closed). A crashed
//! run leaves either the old plan, the new plan, or tombstones for packs that
//! may or may not be deleted yet — each of which the next run handles.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::backend::{key_name, Backend};
use crate::error::{Error, Result};
use crate::eventlog::{self, Event, GcDone};
use crate::hold;
use crate::id::{Digest, PackId};
use crate::index;
use crate::mark::Mark;
use crate::pack::{self, PackBuilder, PackEntry};
use crate::progress::Progress;
use crate::segment::{self, INDEX_DIR, TOMBSTONES_DIR};
use crate::session::{Session, SessionRecord, SESSIONS_DIR};
use crate::Store;

/// The pending plan.
pub const PLAN_KEY: &str = "gc/plan";
/// The advisory lock that keeps two gc runs from doing the same work.
pub const LOCK_KEY: &str = "gc/lock";
const CLOCK_KEY: &str = "gc/clock";
/// Default grace period between condemning and deleting.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// A temporary file this much older than the store's now, and not named for
/// a live session's process, was left by a writer that died. Writers that
/// hold no session (tag, rm, repair) write a file in seconds at most; a
/// put's staged pack waits only for the next pack to fill.
pub const STALE_TEMPORARY: Duration = Duration::from_secs(3600);
/// A pack whose garbage is at least this share of its bytes is repacked.
pub const REPACK_THRESHOLD: f64 = 0.5;

/// Options of a GC run.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report what would happen; write and delete nothing.
    pub dry_run: bool,
    /// Time between condemning and deleting.
    pub grace: Duration,
    /// Wait for another GC to finish instead of failing as busy.
    pub wait: bool,
    /// Stop deleting/repacking after this long; the rest waits for the next run.
    pub max_duration: Option<Duration>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            grace: DEFAULT_GRACE,
            wait: false,
            max_duration: None,
        }
    }
}

/// The contents of `gc/plan`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Plan {
    /// Always 1.
    pub version: u32,
    /// Packs condemned, hex ids.
    pub packs: Vec<String>,
    /// Their stored bytes.
    pub bytes: u64,
    /// Grace period in seconds.
    pub grace_secs: u64,
    /// Session files live when the plan was written.
    pub sessions: Vec<String>,
}

/// What a GC run did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// Packs deleted by executing the previous plan.
    pub packs_deleted: u64,
    /// Bytes those packs held.
    pub bytes_freed: u64,
    /// Condemned packs kept because an image needs them again.
    pub packs_rescued: u64,
    /// Packs whose live chunks were copied out this run.
    pub packs_repacked: u64,
    /// Bytes written by repacking.
    pub bytes_repacked: u64,
    /// Packs condemned by this run, waiting for the next.
    pub packs_condemned: u64,
    /// Their bytes: what the next run will free.
    pub bytes_condemned: u64,
    /// Why the pending plan was not executed, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Temporary files of writers that died, removed this run.
    pub temporaries_removed: u64,
    /// Their bytes.
    pub temporary_bytes_freed: u64,
    /// Refs and images marked.
    pub refs: usize,
    /// Distinct images marked.
    pub images: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// Now, by the store's clock: the mtime of a file just written there.
fn store_now(backend: &dyn Backend) -> Result<SystemTime> {
    backend.put(CLOCK_KEY, b"")?;
    backend
        .head(CLOCK_KEY)?
        .map(|m| m.modified)
        .ok_or_else(|| Error::corrupt("gc clock", "file vanished right after being written"))
}

/// Every pack in the store with its footer.
fn packs(backend: &dyn Backend) -> Result<Vec<(PackId, u64, Vec<PackEntry>)>> {
    let mut out = Vec::new();
    for (id, key) in pack::list(backend)? {
        let file = backend.open(&key)?;
        let entries = pack::read_footer(file.as_ref(), &format!("pack {key}"))?;
        out.push((id, file.size()?, entries));
    }
    Ok(out)
}

impl Store {
    /// One GC run: execute the pending plan if ready, then condemn.
    pub fn gc(&self, opts: &GcOptions, progress: &dyn Progress) -> Result<GcReport> {
        let started = Instant::now();
        let deadline = opts.max_duration.map(|d| started + d);
        let out_of_time = || deadline.is_some_and(|d| Instant::now() >= d);
        let _lock = match self.backend.lock(LOCK_KEY, opts.wait)? {
            Some(l) => l,
            None => {
                return Err(Error::Busy {
                    what: "gc".into(),
                    holder: "another imgstore gc is running on this store".into(),
                })
            }
        };
        hold::point("gc-locked");
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        let session = if opts.dry_run {
            None
        } else {
            Some(Session::start(self.backend.clone(), "gc")?)
        };
        index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
        let lookup = index::Reader::open(&self.index_dir)?;
        let now = if opts.dry_run {
            SystemTime::now()
        } else {
            store_now(self.backend.as_ref())?
        };

        // Phase 2 of the previous run's plan.
        let mut mark: Option<Mark> = None;
        if let Some((plan, condemned_at)) = self.read_plan()? {
            match self.plan_ready(&plan, condemned_at, now)? {
                Some(reason) => report.waiting = Some(reason),
                None => {
                    let m = self.mark()?;
                    hold::point("gc-after-remark");
                    let condemned: HashSet<PackId> = plan
                        .packs
                        .iter()
                        .filter_map(|h| Digest::from_hex(h).ok())
                        .collect();
                    let mut left = Vec::new();
                    progress.start("gc delete", Some(plan.packs.len() as u64));
                    for hex in &plan.packs {
                        progress.advance(1);
                        let Ok(id) = Digest::from_hex(hex) else { continue };
                        if out_of_time() {
                            left.push(hex.clone());
                            continue;
                        }
                        if let Some(s) = &session {
                            s.check()?;
                        }
                        match self.try_delete_pack(&id, &m, &lookup, &condemned, opts.dry_run)? {
                            Some(freed) => {
                                report.packs_deleted += 1;
                                report.bytes_freed += freed;
                            }
                            None => report.packs_rescued += 1,
                        }
                    }
                    progress.finish();
                    if !opts.dry_run {
                        if left.is_empty() {
                            self.backend.delete(PLAN_KEY)?;
                        } else {
                            let rest = Plan {
                                packs: left,
                                ..plan.clone()
                            };
                            self.backend
                                .put(PLAN_KEY, &serde_json::to_vec_pretty(&rest).expect("plan"))?;
                            report.waiting =
                                Some("stopped at --max-duration; the rest of the plan is kept".into());
                        }
                        index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
                        lookup.refresh()?;
                    }
                    mark = Some(m);
                }
            }
        }

        // Phase 1: condemn what is garbage now (only when no plan is pending).
        if report.waiting.is_none() && !out_of_time() && (opts.dry_run || self.read_plan()?.is_none()) {
            let m = match mark {
                Some(m) => m,
                None => self.mark()?,
            };
            report.refs = m.refs;
            report.images = m.images;
            let (condemned, bytes) = self.condemn(&m, &lookup, opts, &mut report, &out_of_time, progress)?;
            report.packs_condemned = condemned.len() as u64;
            report.bytes_condemned = bytes;
            if !opts.dry_run && !condemned.is_empty() {
                let mut plan = Plan {
                    version: 1,
                    packs: condemned.iter().map(|p| p.to_hex()).collect(),
                    bytes,
                    grace_secs: secs(opts.grace),
                    sessions: Vec::new(),
                };
                // Plan first, then the sessions that might not have seen it.
                self.backend
                    .put(PLAN_KEY, &serde_json::to_vec_pretty(&plan).expect("plan"))?;
                hold::point("gc-after-plan");
                // Gc sessions are not waited for: a gc publishes no image,
                // and copies what it repacks before condemning anything.
                plan.sessions = self
                    .backend
                    .list(SESSIONS_DIR)?
                    .into_iter()
                    .filter(|k| !key_name(k).starts_with("gc-"))
                    .collect();
                self.backend
                    .put(PLAN_KEY, &serde_json::to_vec_pretty(&plan).expect("plan"))?;
            }
        }
        if !opts.dry_run {
            hold::point("gc-after-plan-sessions");
            self.remove_dead_sessions(now)?;
        }
        (report.temporaries_removed, report.temporary_bytes_freed) =
            self.remove_stale_temporaries(now, opts.dry_run)?;
        if let Some(s) = session {
            s.end()?;
        }
        if !opts.dry_run && (report.packs_deleted > 0 || report.bytes_repacked > 0) {
            let done = GcDone {
                packs_deleted: report.packs_deleted,
                bytes_freed: report.bytes_freed,
                bytes_repacked: report.bytes_repacked,
            };
            eventlog::append(self.backend.as_ref(), &Event::gc(done))?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The pending plan and when it was written (store clock).
    pub fn read_plan(&self) -> Result<Option<(Plan, SystemTime)>> {
        let Some(bytes) = self.backend.get(PLAN_KEY)? else {
            return Ok(None);
        };
        let plan: Plan =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt("gc plan gc/plan", e.to_string()))?;
        let at = self
            .backend
            .head(PLAN_KEY)?
            .map_or_else(SystemTime::now, |m| m.modified);
        Ok(Some((plan, at)))
    }

    /// Packs condemned by the pending plan (puts must not reference them).
    pub fn condemned_packs(&self) -> Result<HashSet<PackId>> {
        Ok(self
            .read_plan()?
            .map(|(p, _)| p.packs.iter().filter_map(|h| Digest::from_hex(h).ok()).collect())
            .unwrap_or_default())
    }

    /// How long the session file `key` has gone unrenewed (store clock) and
    /// its lease; `None` once the session ended (its file is gone).
    fn session_silence(&self, key: &str, now: SystemTime) -> Result<Option<(Duration, Duration)>> {
        let Some(renewed) = self.backend.head(key)?.map(|m| m.modified) else {
            return Ok(None);
        };
        let lease = self
            .backend
            .get(key)?
            .and_then(|b| serde_json::from_slice::<SessionRecord>(&b).ok())
            .map_or(crate::session::DEFAULT_LEASE, |r| {
                Duration::from_secs(r.lease_secs)
            });
        Ok(Some((now.duration_since(renewed).unwrap_or_default(), lease)))
    }

    /// Removes session files of processes that died: not renewed for ten
    /// leases. Only tidiness: a lapsed session already counts as ended.
    fn remove_dead_sessions(&self, now: SystemTime) -> Result<()> {
        for session in self.backend.list(SESSIONS_DIR)? {
            if let Some((silent, lease)) = self.session_silence(&session, now)? {
                if silent > lease * 10 {
                    self.backend.delete(&session)?;
                }
            }
        }
        Ok(())
    }

    /// Removes the temporary files that writers which died left behind (see
    /// [`STALE_TEMPORARY`]); returns how many and their bytes. The pid in a
    /// temporary's name (`.tmp-<pid>-<random>`) is checked against the live
    /// sessions' pids: pids repeat across hosts, so a match only keeps a
    /// file until a later run.
    fn remove_stale_temporaries(&self, now: SystemTime, dry_run: bool) -> Result<(u64, u64)> {
        let mut live_pids = HashSet::new();
        for session in self.backend.list(SESSIONS_DIR)? {
            let name = key_name(&session);
            let live = self
                .session_silence(&session, now)?
                .is_some_and(|(silent, lease)| silent <= lease);
            if live {
                // Session files are named `<kind>-<pid>-<random>.json`.
                live_pids.extend(name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()));
            }
        }
        let (mut files, mut bytes) = (0, 0);
        for tmp in self.backend.partial_writes()? {
            let pid = tmp.pid;
            let age = now.duration_since(tmp.modified).unwrap_or_default();
            if age <= STALE_TEMPORARY || pid.is_some_and(|p| live_pids.contains(&p)) {
                continue;
            }
            if !dry_run {
                self.backend.abort_partial(&tmp)?;
            }
            files += 1;
            bytes += tmp.bytes;
        }
        Ok((files, bytes))
    }

    /// `None` when the plan may be executed, else why not.
    fn plan_ready(&self, plan: &Plan, condemned_at: SystemTime, now: SystemTime) -> Result<Option<String>> {
        let age = now.duration_since(condemned_at).unwrap_or_default();
        if age < Duration::from_secs(plan.grace_secs) {
            return Ok(Some(format!(
                "grace period: the plan is {}s old, deletion waits {}s",
                age.as_secs(),
                plan.grace_secs
            )));
        }
        for key in &plan.sessions {
            // A session file not renewed within its lease belongs to a
            // process that died or was paused; its lease check stops it
            // before it publishes anything.
            if self
                .session_silence(key, now)?
                .is_some_and(|(silent, lease)| silent <= lease)
            {
                return Ok(Some(format!("waiting for {key} (live at condemnation) to end")));
            }
        }
        Ok(None)
    }

    /// Deletes a condemned pack if nothing live needs it; returns its size.
    fn try_delete_pack(
        &self,
        id: &PackId,
        m: &Mark,
        lookup: &index::Reader,
        condemned: &HashSet<PackId>,
        dry_run: bool,
    ) -> Result<Option<u64>> {
        let key = pack::key(id);
        let file = match self.backend.open(&key) {
            Ok(f) => f,
            // Deleted by an earlier, interrupted run.
            Err(Error::Missing { .. }) => return Ok(Some(0)),
            Err(e) => return Err(e),
        };
        let size = file.size()?;
        let entries = pack::read_footer(file.as_ref(), &format!("pack {key}"))?;
        let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
        let copies = lookup.lookup(&ids)?;
        let mut tomb = Vec::with_capacity(ids.len());
        for (cid, loc) in ids.iter().zip(copies) {
            let copy = loc.filter(|l| l.pack != *id && !condemned.contains(&l.pack));
            // A live chunk needs a copy that stays; else the pack is rescued.
            if m.live.may_contain(cid) && copy.is_none() {
                return Ok(None);
            }
            tomb.push((*cid, copy));
        }
        if !dry_run {
            self.backend.put(
                &format!("{TOMBSTONES_DIR}/{}", id.to_hex()),
                &segment::encode_tombstone(&tomb),
            )?;
            hold::point("gc-before-delete");
            self.backend.delete(&key)?;
            hold::point("gc-after-delete");
        }
        Ok(Some(size))
    }

    /// Finds garbage packs, repacks mostly-garbage ones; returns the packs to condemn.
    fn condemn(
        &self,
        m: &Mark,
        lookup: &index::Reader,
        opts: &GcOptions,
        report: &mut GcReport,
        out_of_time: &dyn Fn() -> bool,
        progress: &dyn Progress,
    ) -> Result<(Vec<PackId>, u64)> {
        let all = packs(self.backend.as_ref())?;
        let mut condemned = Vec::new();
        let mut bytes = 0;
        let mut repacked = PackBuilder::new();
        let mut new_locations = Vec::new();
        let mut to_condemn_after_repack = Vec::new();
        progress.start("gc mark", Some(all.len() as u64));
        for (id, size, entries) in &all {
            progress.advance(1);
            // A chunk is garbage here if no image needs it, or if the index
            // places it in another pack: a duplicate (two puts stored it at
            // once, or an interrupted gc repacked it without condemning).
            // Frames are kept or dropped whole (a repack copies them as
            // they are), so a group with one live member is all live.
            let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
            let placed = lookup.lookup(&ids)?;
            let is_garbage: Vec<bool> = entries
                .iter()
                .zip(&placed)
                .map(|(e, loc)| !m.live.may_contain(&e.id) || loc.is_some_and(|l| l.pack != *id))
                .collect();
            let mut garbage = 0;
            let mut total = 0;
            let mut keep = Vec::new();
            let mut at = 0;
            for frame in pack::frames(entries) {
                let dead = is_garbage[at..at + frame.len()].iter().all(|g| *g);
                at += frame.len();
                let bytes = u64::from(frame[0].stored_len)
                    + (pack::FRAME_HEADER_LEN + pack::FOOTER_ENTRY_LEN * frame.len()) as u64;
                total += bytes;
                if dead {
                    garbage += bytes;
                } else {
                    keep.extend_from_slice(frame);
                }
            }
            if garbage == total {
                condemned.push(*id);
                bytes += size;
            } else if garbage as f64 >= REPACK_THRESHOLD * total as f64 && !out_of_time() {
                let file = self.backend.open(&pack::key(id))?;
                report.bytes_repacked += pack::copy_frames(file.as_ref(), *id, &keep, &mut repacked)?;
                report.packs_repacked += 1;
                to_condemn_after_repack.push((*id, *size));
                if repacked.len() as u64 >= self.config.pack_size && !opts.dry_run {
                    new_locations.extend(self.write_pack(std::mem::take(&mut repacked))?);
                }
            }
        }
        progress.finish();
        if !opts.dry_run {
            if !repacked.is_empty() {
                new_locations.extend(self.write_pack(repacked)?);
            }
            hold::point("gc-after-repack-pack");
            if !new_locations.is_empty() {
                let (seg_id, seg) = segment::encode(&new_locations);
                self.backend.put(&seg_id.key(INDEX_DIR), &seg)?;
                hold::point("gc-after-repack-segment");
                index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
                lookup.refresh()?;
            }
        }
        // The repacked packs' live chunks now have copies: condemn the originals.
        for (id, size) in to_condemn_after_repack {
            condemned.push(id);
            bytes += size;
        }
        Ok((condemned, bytes))
    }

    fn write_pack(&self, builder: PackBuilder) -> Result<Vec<(crate::id::ChunkId, pack::Location)>> {
        let (id, bytes, entries) = builder.finish();
        self.backend.put(&pack::key(&id), &bytes)?;
        Ok(entries.iter().map(|e| (e.id, e.location(id))).collect())
    }
}
