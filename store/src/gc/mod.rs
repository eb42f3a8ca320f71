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
//! What a run does is decided by functions that write nothing and return
//! values ([`Store::execute_plan`], [`Store::condemn_plan`];
//! [`Store::gc_plan`] for `--dry-run`). A run carries out the stored plan
//! pack by pack with the same per-pack decision (one footer read per
//! pack), and the condemn phase's plan whole (a repack reads its pack's
//! footer again when it copies). Nothing holds more than one pack's footer.
//!
//! Every read error during a mark aborts the run (fail closed), and so does
//! a `gc/plan` with an entry that does not parse ([`Plan::parse`]). A crashed
//! run leaves either the old plan, the new plan, or tombstones for packs that
//! may or may not be deleted yet — each of which the next run handles.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{key_name, Backend};
use crate::error::{Error, Object, Result};
use crate::eventlog::{self, Event, GcDone};
use crate::hold;
use crate::id::PackId;
use crate::index;
use crate::mark::Mark;
use crate::pack::{self, PackBuilder, PackEntry};
use crate::progress::Progress;
use crate::segment::{self, INDEX_DIR, TOMBSTONES_DIR};
use crate::session::{Session, SessionRecord, SESSIONS_DIR};
use crate::Store;

mod plan;
pub use plan::{
    CondemnPlan, ExecutePlan, GcPlan, GcReport, PackBytes, Pending, Plan, Repack, StaleTemporary,
};

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
            grace: DEFAULT_GRACE,
            wait: false,
            max_duration: None,
        }
    }
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
        .ok_or_else(|| Error::corrupt(Object::GcClock, "file vanished right after being written"))
}

/// How a pack's frames divide into garbage and live.
struct Classified {
    garbage: u64,
    total: u64,
    /// Footer entries of the live frames, whole frames.
    keep: Vec<PackEntry>,
}

impl Classified {
    fn of(id: &PackId, entries: &[PackEntry], m: &Mark, lookup: &index::Reader) -> Result<Classified> {
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
        let mut c = Classified {
            garbage: 0,
            total: 0,
            keep: Vec::new(),
        };
        let mut at = 0;
        for frame in pack::frames(entries) {
            let dead = is_garbage[at..at + frame.len()].iter().all(|g| *g);
            at += frame.len();
            let bytes = frame_bytes(frame);
            c.total += bytes;
            if dead {
                c.garbage += bytes;
            } else {
                c.keep.extend_from_slice(frame);
            }
        }
        Ok(c)
    }

    /// Stored bytes a repack copies: what [`pack::copy_frames`] returns.
    fn keep_stored(&self) -> u64 {
        pack::frames(&self.keep).map(|f| u64::from(f[0].stored_len)).sum()
    }
}

/// A frame's bytes in its pack: header, stored bytes, footer entries.
fn frame_bytes(frame: &[PackEntry]) -> u64 {
    u64::from(frame[0].stored_len) + (pack::FRAME_HEADER_LEN + pack::FOOTER_ENTRY_LEN * frame.len()) as u64
}

/// What a real run carries its plans out with.
struct Run<'a> {
    mark: &'a Mark,
    lookup: &'a index::Reader,
    session: &'a Session,
    out_of_time: &'a dyn Fn() -> bool,
    progress: &'a dyn Progress,
}

/// What becomes of one condemned pack, decided by the mark.
enum Fate {
    /// Deleted already, by an earlier, interrupted run.
    Gone,
    /// Nothing live needs it: its size, and the tombstone to write first.
    Delete {
        bytes: u64,
        tomb: Vec<(crate::id::ChunkId, Option<pack::Location>)>,
    },
    /// A live chunk has no copy in a pack that stays.
    Rescue,
}

impl Store {
    fn gc_lock(&self, wait: bool) -> Result<crate::backend::Lock> {
        self.backend.lock(LOCK_KEY, wait)?.ok_or_else(|| Error::Busy {
            what: "gc".into(),
            holder: "another imgstore gc is running on this store".into(),
        })
    }

    /// What a gc run would do now, writing and deleting nothing (the
    /// store's clock is read from the host's: reading it needs a write).
    pub fn gc_plan(&self, opts: &GcOptions, progress: &dyn Progress) -> Result<GcPlan> {
        let _lock = self.gc_lock(opts.wait)?;
        hold::point("gc-locked");
        index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
        let lookup = index::Reader::open(&self.index_dir)?;
        let now = SystemTime::now();
        let mut mark = None;
        let pending = match self.read_plan()? {
            None => Pending::None,
            Some((plan, at)) => match self.plan_ready(&plan, at, now)? {
                Some(why) => Pending::Waiting(why),
                None => {
                    let m = self.mark()?;
                    let e = self.execute_plan(&plan, &m, &lookup, progress)?;
                    mark = Some(m);
                    Pending::Execute(e)
                }
            },
        };
        let (mut refs, mut pins, mut images) = (0, 0, 0);
        let condemn = if matches!(pending, Pending::Waiting(_)) {
            None
        } else {
            let m = match mark {
                Some(m) => m,
                None => self.mark()?,
            };
            (refs, pins, images) = (m.refs, m.pins, m.images);
            Some(self.condemn_plan(&m, &lookup, progress)?)
        };
        Ok(GcPlan {
            pending,
            condemn,
            temporaries: self.stale_temporaries(now)?,
            refs,
            pins,
            images,
        })
    }

    /// One GC run: execute the pending plan if ready, then condemn. The
    /// stored plan is carried out pack by pack, each pack decided as
    /// [`Store::execute_plan`] decides it; the condemn phase is decided whole
    /// ([`Store::condemn_plan`]), then carried out.
    pub fn gc(&self, opts: &GcOptions, progress: &dyn Progress) -> Result<GcReport> {
        let started = Instant::now();
        let deadline = opts.max_duration.map(|d| started + d);
        let out_of_time = || deadline.is_some_and(|d| Instant::now() >= d);
        let _lock = self.gc_lock(opts.wait)?;
        hold::point("gc-locked");
        let mut report = GcReport::default();
        let session = Session::start(self.backend.clone(), "gc")?;
        index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
        let lookup = index::Reader::open(&self.index_dir)?;
        let now = store_now(self.backend.as_ref())?;

        // Phase 2 of the previous run's plan.
        let mut mark: Option<Mark> = None;
        if let Some((plan, condemned_at)) = self.read_plan()? {
            match self.plan_ready(&plan, condemned_at, now)? {
                Some(reason) => report.waiting = Some(reason),
                None => {
                    let m = self.mark()?;
                    hold::point("gc-after-remark");
                    let run = Run {
                        mark: &m,
                        lookup: &lookup,
                        session: &session,
                        out_of_time: &out_of_time,
                        progress,
                    };
                    self.apply_execute(&plan, &run, &mut report)?;
                    mark = Some(m);
                }
            }
        }

        // Phase 1: condemn what is garbage now (only when no plan is pending).
        if report.waiting.is_none() && !out_of_time() && self.read_plan()?.is_none() {
            let m = match mark {
                Some(m) => m,
                None => self.mark()?,
            };
            report.refs = m.refs;
            report.pins = m.pins;
            report.images = m.images;
            let condemn = self.condemn_plan(&m, &lookup, progress)?;
            let run = Run {
                mark: &m,
                lookup: &lookup,
                session: &session,
                out_of_time: &out_of_time,
                progress,
            };
            self.apply_condemn(&condemn, opts, &run, &mut report)?;
        }
        hold::point("gc-after-plan-sessions");
        self.remove_dead_sessions(now)?;
        for t in self.stale_temporaries(now)? {
            self.backend.delete(&t.key)?;
            report.temporaries_removed += 1;
            report.temporary_bytes_freed += t.bytes;
        }
        session.end()?;
        if report.packs_deleted > 0 || report.bytes_repacked > 0 {
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

    /// Decides the fate of each pack the pending plan condemned, by a mark
    /// taken after its grace period (one pack's footer in memory at a time).
    pub fn execute_plan(
        &self,
        plan: &Plan,
        m: &Mark,
        lookup: &index::Reader,
        progress: &dyn Progress,
    ) -> Result<ExecutePlan> {
        let condemned: HashSet<PackId> = plan.packs.iter().copied().collect();
        let mut out = ExecutePlan::default();
        progress.start("gc check", Some(plan.packs.len() as u64));
        for id in &plan.packs {
            progress.advance(1);
            match self.pack_fate(id, m, lookup, &condemned)? {
                Fate::Gone => out.delete.push(PackBytes { pack: *id, bytes: 0 }),
                Fate::Delete { bytes, .. } => out.delete.push(PackBytes { pack: *id, bytes }),
                Fate::Rescue => out.rescue.push(*id),
            }
        }
        progress.finish();
        Ok(out)
    }

    /// Carries out the stored plan, pack by pack: each is decided as
    /// [`Store::execute_plan`] decides it, just before its tombstone is
    /// written (the tombstone needs the pack's footer anyway, so each footer
    /// is read once); what `--max-duration` leaves stays in the plan.
    fn apply_execute(&self, plan: &Plan, run: &Run, report: &mut GcReport) -> Result<()> {
        let condemned: HashSet<PackId> = plan.packs.iter().copied().collect();
        let mut left = Vec::new();
        run.progress.start("gc delete", Some(plan.packs.len() as u64));
        for id in &plan.packs {
            run.progress.advance(1);
            if (run.out_of_time)() {
                left.push(*id);
                continue;
            }
            run.session.check()?;
            match self.pack_fate(id, run.mark, run.lookup, &condemned)? {
                Fate::Gone => report.packs_deleted += 1,
                Fate::Rescue => report.packs_rescued += 1,
                Fate::Delete { bytes, tomb } => {
                    self.backend.put(
                        &format!("{TOMBSTONES_DIR}/{}", id.to_hex()),
                        &segment::encode_tombstone(&tomb),
                    )?;
                    hold::point("gc-before-delete");
                    self.backend.delete(&pack::key(id))?;
                    hold::point("gc-after-delete");
                    report.packs_deleted += 1;
                    report.bytes_freed += bytes;
                }
            }
        }
        run.progress.finish();
        if left.is_empty() {
            self.backend.delete(PLAN_KEY)?;
        } else {
            let rest = Plan {
                packs: left,
                ..plan.clone()
            };
            self.backend.put(PLAN_KEY, &rest.to_bytes())?;
            report.waiting = Some("stopped at --max-duration; the rest of the plan is kept".into());
        }
        index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
        run.lookup.refresh()
    }

    /// Finds the packs that are garbage now and those worth repacking,
    /// reading one pack's footer at a time.
    pub fn condemn_plan(
        &self,
        m: &Mark,
        lookup: &index::Reader,
        progress: &dyn Progress,
    ) -> Result<CondemnPlan> {
        let all = pack::list(self.backend.as_ref())?;
        hold::point("gc-after-list");
        let mut out = CondemnPlan::default();
        progress.start("gc mark", Some(all.len() as u64));
        for (id, key) in &all {
            progress.advance(1);
            let Some(file) = open_listed(self.backend.as_ref(), key)? else {
                continue;
            };
            let entries = pack::read_footer(file.as_ref(), &Object::Pack { key: key.to_owned() })?;
            let bytes = file.size()?;
            let c = Classified::of(id, &entries, m, lookup)?;
            if c.garbage == c.total {
                out.garbage.push(PackBytes { pack: *id, bytes });
            } else if c.garbage as f64 >= REPACK_THRESHOLD * c.total as f64 {
                out.repack.push(Repack {
                    pack: *id,
                    bytes,
                    live_bytes: c.keep_stored(),
                });
            }
        }
        progress.finish();
        Ok(out)
    }

    /// Repacks what `c` says (until `--max-duration`), then writes the plan,
    /// then lists the live sessions into it.
    fn apply_condemn(
        &self,
        c: &CondemnPlan,
        opts: &GcOptions,
        run: &Run,
        report: &mut GcReport,
    ) -> Result<()> {
        let mut repacked = PackBuilder::new();
        let mut new_locations = Vec::new();
        let mut done = Vec::new();
        for r in &c.repack {
            if (run.out_of_time)() {
                break;
            }
            let key = pack::key(&r.pack);
            let Some(file) = open_listed(self.backend.as_ref(), &key)? else {
                continue;
            };
            let entries = pack::read_footer(file.as_ref(), &Object::Pack { key: key.to_owned() })?;
            let keep = Classified::of(&r.pack, &entries, run.mark, run.lookup)?.keep;
            report.bytes_repacked += pack::copy_frames(file.as_ref(), r.pack, &keep, &mut repacked)?;
            report.packs_repacked += 1;
            done.push(PackBytes {
                pack: r.pack,
                bytes: r.bytes,
            });
            if repacked.len() as u64 >= self.config.pack_size {
                new_locations.extend(self.write_pack(std::mem::take(&mut repacked))?);
            }
        }
        if !repacked.is_empty() {
            new_locations.extend(self.write_pack(repacked)?);
        }
        hold::point("gc-after-repack-pack");
        if !new_locations.is_empty() {
            let (seg_id, seg) = segment::encode(&new_locations);
            self.backend.put(&seg_id.key(INDEX_DIR), &seg)?;
            hold::point("gc-after-repack-segment");
            index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
            run.lookup.refresh()?;
        }
        // The repacked packs' live chunks now have copies: condemn the originals.
        let condemned: Vec<PackBytes> = c.garbage.iter().copied().chain(done).collect();
        report.packs_condemned = condemned.len() as u64;
        report.bytes_condemned = condemned.iter().map(|p| p.bytes).sum();
        if condemned.is_empty() {
            return Ok(());
        }
        let mut plan = Plan {
            version: 1,
            packs: condemned.iter().map(|p| p.pack).collect(),
            bytes: report.bytes_condemned,
            grace_secs: secs(opts.grace),
            sessions: Vec::new(),
        };
        // Plan first, then the sessions that might not have seen it.
        self.backend.put(PLAN_KEY, &plan.to_bytes())?;
        hold::point("gc-after-plan");
        // Gc sessions are not waited for: a gc publishes no image,
        // and copies what it repacks before condemning anything.
        plan.sessions = self
            .backend
            .list(SESSIONS_DIR)?
            .into_iter()
            .filter(|k| !key_name(k).starts_with("gc-"))
            .collect();
        self.backend.put(PLAN_KEY, &plan.to_bytes())
    }

    /// The pending plan and when it was written (store clock). A plan with
    /// a damaged entry is refused ([`Plan::parse`]). A plan gone between
    /// its get and its head was carried out (its packs' tombstones are
    /// written before it is deleted): none is pending. Its time never comes
    /// from the host's clock, which may be hours off the store's
    /// (ops::clock).
    pub fn read_plan(&self) -> Result<Option<(Plan, SystemTime)>> {
        let Some(bytes) = self.backend.get(PLAN_KEY)? else {
            return Ok(None);
        };
        let plan = Plan::parse(&bytes)?;
        Ok(self.backend.head(PLAN_KEY)?.map(|m| (plan, m.modified)))
    }

    /// Packs condemned by the pending plan (puts must not reference them).
    pub fn condemned_packs(&self) -> Result<HashSet<PackId>> {
        Ok(self
            .read_plan()?
            .map(|(p, _)| p.packs.into_iter().collect())
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
        for key in self.backend.list(SESSIONS_DIR)? {
            if let Some((silent, lease)) = self.session_silence(&key, now)? {
                if silent > lease * 10 {
                    self.backend.delete(&key)?;
                }
            }
        }
        Ok(())
    }

    /// The temporary files that writers which died left behind (see
    /// [`STALE_TEMPORARY`]). The pid in a
    /// temporary's name (`.tmp-<pid>-<random>`) is checked against the live
    /// sessions' pids: pids repeat across hosts, so a match only keeps a
    /// file until a later run.
    fn stale_temporaries(&self, now: SystemTime) -> Result<Vec<StaleTemporary>> {
        let mut live_pids = HashSet::new();
        for key in self.backend.list(SESSIONS_DIR)? {
            let name = key_name(&key);
            let live = self
                .session_silence(&key, now)?
                .is_some_and(|(silent, lease)| silent <= lease);
            if live {
                // Session files are named `<kind>-<pid>-<random>.json`.
                live_pids.extend(name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()));
            }
        }
        let mut out = Vec::new();
        for tmp in self.backend.partial_writes()? {
            let pid = tmp.pid;
            let age = now.duration_since(tmp.modified).unwrap_or_default();
            if age <= STALE_TEMPORARY || pid.is_some_and(|p| live_pids.contains(&p)) {
                continue;
            }
            out.push(StaleTemporary {
                key: tmp.key,
                bytes: tmp.bytes,
            });
        }
        Ok(out)
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

    /// Whether a condemned pack may go: only if each of its chunks is
    /// unmarked or has a copy in a pack that stays.
    fn pack_fate(
        &self,
        id: &PackId,
        m: &Mark,
        lookup: &index::Reader,
        condemned: &HashSet<PackId>,
    ) -> Result<Fate> {
        let key = pack::key(id);
        // Gone: deleted by an earlier, interrupted run.
        let Some(file) = open_listed(self.backend.as_ref(), &key)? else {
            return Ok(Fate::Gone);
        };
        let bytes = file.size()?;
        let entries = pack::read_footer(file.as_ref(), &Object::Pack { key: key.to_owned() })?;
        let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
        let copies = lookup.lookup(&ids)?;
        let mut tomb = Vec::with_capacity(ids.len());
        for (cid, loc) in ids.iter().zip(copies) {
            let copy = loc.filter(|l| l.pack != *id && !condemned.contains(&l.pack));
            if m.live.may_contain(cid) && copy.is_none() {
                return Ok(Fate::Rescue);
            }
            tomb.push((*cid, copy));
        }
        Ok(Fate::Delete { bytes, tomb })
    }

    fn write_pack(&self, builder: PackBuilder) -> Result<Vec<(crate::id::ChunkId, pack::Location)>> {
        let (id, bytes, entries) = builder.finish();
        self.backend.put(&pack::key(&id), &bytes)?;
        Ok(entries.iter().map(|e| (e.id, e.location(id))).collect())
    }
}

/// A pack the listing named, or `None` when it is gone by the time it is
/// opened: deleted since, or a listing that still shows a deleted object
/// (Garage did, for two gc runs, in `benches/garage.sh`). A pack that is
/// gone has nothing left to condemn or repack.
fn open_listed(backend: &dyn Backend, key: &str) -> Result<Option<Box<dyn crate::backend::ReadAt>>> {
    match backend.open(key) {
        Ok(f) => Ok(Some(f)),
        Err(Error::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
