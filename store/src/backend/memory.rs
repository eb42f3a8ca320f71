//! A store held in memory, with faults that tests inject at the door:
//! proof that [`Backend`] is the only way to the store's bytes (a whole
//! put, get, verify and gc run on it, with nothing on disk but the local
//! index), and a place to fail a write, cut the power, skew the store's
//! clock, or hold a writer at a chosen write.
//!
//! Durability is modelled on what [`LocalBackend`](super::LocalBackend)
//! does (docs/ARCHITECTURE.md, "What the backend must do"): a put, a
//! staged object's commit and a delete are durable when they return (a
//! temporary file fsynced, renamed, its directory fsynced; an unlink and a
//! directory fsync); a staged object's bytes are written but not durable
//! until its commit. [`MemoryBackend::cut_power`] stops every operation
//! after a chosen number of write steps; the write at the cut either never
//! happens or lands durably while its caller sees an error (a rename done
//! and its directory fsync cut off; an object store's reply lost), and its
//! temporary file is left behind. [`MemoryBackend::crash`] then loses
//! everything not durable (staged objects never committed) and keeps the
//! temporaries, as a machine that lost power keeps its disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::{checked, dir_prefix, Backend, Fill, ListPage, ObjectMeta, PartialWrite, ReadAt, Staged};
use crate::error::{self, Error, Result};

/// A fault [`MemoryBackend::inject`] arms: a write, read or delete of a key
/// starting with the prefix fails, once, as an object store's 5xx would,
/// or as a crash at that step would stop a writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The next put (or staged commit) of a key with this prefix fails;
    /// nothing is written.
    FailPut(String),
    /// Like [`Fault::FailPut`], after this many matching puts went through:
    /// the second pack of a put, not the first.
    FailPutAfter(String, u32),
    /// The next get or open of a key with this prefix fails.
    FailGet(String),
    /// The next delete of a key with this prefix fails; nothing is deleted.
    FailDelete(String),
    /// The next head of a key with this prefix finds nothing, as if another
    /// writer deleted the object between a get and this head.
    VanishOnHead(String),
}

/// What a fault can strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Delete,
    Head,
}

#[derive(Debug, Clone)]
struct Object {
    data: Arc<Vec<u8>>,
    modified: SystemTime,
}

/// Power to the store: on, or cut after a number of write steps.
#[derive(Debug, Clone, Copy, Default)]
struct Power {
    /// Write steps that still go through before the cut.
    left: Option<u64>,
    /// Whether the write at the cut lands (durably) though it fails.
    lands: bool,
    /// Cut: every operation fails until [`MemoryBackend::crash`].
    off: bool,
}

/// The write a power cut struck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutAt {
    /// `put`, `stage`, `commit` or `delete`.
    pub op: &'static str,
    /// The key written.
    pub key: String,
    /// Whether the write landed (durably) though it failed.
    pub landed: bool,
}

/// What becomes of one write step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Go,
    /// The power is cut at this write: it never happens.
    Lost,
    /// The power is cut at this write: it happens, and its caller sees an error.
    Lands,
}

/// A writer waiting at a held write: it tells `reached`, then waits for `release`.
#[derive(Debug)]
struct Gate {
    prefix: String,
    reached: Sender<()>,
    release: Receiver<()>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    faults: Vec<Fault>,
    puts: u64,
    /// Write steps so far: puts, stages, commits and deletes.
    writes: u64,
    power: Power,
    cut_at: Option<CutAt>,
    /// Crashes so far: a staged object from before one can never commit.
    boots: u64,
    /// Temporary objects: stages not yet committed, and writes a power cut
    /// interrupted (a local store's `.tmp-*` files).
    partial: BTreeMap<String, Object>,
    temporaries: u64,
    /// The store's clock minus the host's, in seconds.
    skew: i64,
    gates: Vec<Gate>,
}

impl State {
    /// Now by the store's clock.
    fn now(&self) -> SystemTime {
        let skew = Duration::from_secs(self.skew.unsigned_abs());
        if self.skew >= 0 {
            SystemTime::now() + skew
        } else {
            SystemTime::now() - skew
        }
    }

    fn object(&self, data: Vec<u8>) -> Object {
        Object {
            data: Arc::new(data),
            modified: self.now(),
        }
    }

    /// Fails every operation once the power is cut.
    fn powered(&self, key: &str) -> Result<()> {
        if self.power.off {
            return Err(Error::Backend {
                key: key.into(),
                source: "the store lost power".into(),
            });
        }
        Ok(())
    }

    /// Counts one write step (`op` of `key`) and decides it.
    fn step(&mut self, op: &'static str, key: &str) -> Result<Step> {
        self.powered(key)?;
        self.writes += 1;
        match &mut self.power.left {
            Some(0) => {
                self.power.off = true;
                self.cut_at = Some(CutAt {
                    op,
                    key: key.into(),
                    landed: self.power.lands,
                });
                Ok(if self.power.lands { Step::Lands } else { Step::Lost })
            }
            Some(n) => {
                *n -= 1;
                Ok(Step::Go)
            }
            None => Ok(Step::Go),
        }
    }

    /// A temporary object beside `key`, as a local put's `.tmp-<pid>-<n>`;
    /// the pid is one no test process has, and a new one after each crash.
    fn temporary(&mut self, key: &str, data: Vec<u8>) -> String {
        self.temporaries += 1;
        let dir = key.rsplit_once('/').map_or("", |(d, _)| d);
        let pid = 4_000_000 + self.boots;
        let name = format!("{}{pid}-{}", crate::fsutil::TMP_PREFIX, self.temporaries);
        let tmp = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        let object = self.object(data);
        self.partial.insert(tmp.clone(), object);
        tmp
    }

    /// A clone that shares nothing (held writers are not copied).
    fn fork(&self) -> State {
        State {
            objects: self.objects.clone(),
            faults: self.faults.clone(),
            puts: self.puts,
            writes: self.writes,
            power: self.power,
            cut_at: self.cut_at.clone(),
            boots: self.boots,
            partial: self.partial.clone(),
            temporaries: self.temporaries,
            skew: self.skew,
            gates: Vec::new(),
        }
    }
}

fn cut(key: &str) -> Error {
    Error::Backend {
        key: key.into(),
        source: "the store lost power during this write".into(),
    }
}

/// A store's objects in memory. Cloning shares them.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    page: usize,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::with_page_size(1000)
    }
}

/// A writer held at a write by [`MemoryBackend::hold`].
pub struct Held {
    reached: Receiver<()>,
    release: Sender<()>,
}

impl Held {
    /// Waits until a writer is held here; false if none came within `limit`.
    pub fn wait(&self, limit: Duration) -> bool {
        self.reached.recv_timeout(limit).is_ok()
    }

    /// Lets the held writer go on with its write.
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

impl MemoryBackend {
    /// An empty backend whose listings come in pages of `page` objects.
    pub fn with_page_size(page: usize) -> Self {
        MemoryBackend {
            state: Arc::default(),
            page: page.max(1),
        }
    }

    /// An independent copy of this store, as it is now: what a test starts
    /// each of many runs from.
    pub fn fork(&self) -> MemoryBackend {
        MemoryBackend {
            state: Arc::new(Mutex::new(self.lock().fork())),
            page: self.page,
        }
    }

    /// Arms `fault`; it fires once.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// How many objects were put so far.
    pub fn puts(&self) -> u64 {
        self.lock().puts
    }

    /// Write steps so far: each put, stage, commit and delete is one.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Cuts the power at the write step after the next `after` ones: that
    /// write fails (landing durably first when `lands`), and so does every
    /// operation after it, until [`MemoryBackend::crash`].
    pub fn cut_power(&self, after: u64, lands: bool) {
        self.lock().power = Power {
            left: Some(after),
            lands,
            off: false,
        };
    }

    /// The write a cut armed by [`MemoryBackend::cut_power`] struck, if it did.
    pub fn power_cut(&self) -> Option<CutAt> {
        let state = self.lock();
        state.cut_at.clone().filter(|_| state.power.off)
    }

    /// The machine comes back after losing power: what was not durable is
    /// gone (staged objects never committed can no longer be), the
    /// temporaries of interrupted writes stay, faults and held writers are
    /// forgotten, and the power is on.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.power = Power::default();
        state.cut_at = None;
        state.boots += 1;
        state.faults.clear();
        state.gates.clear();
    }

    /// Sets the store's clock to the host's plus `secs` (negative: behind).
    /// Objects written from now on get their times from it.
    pub fn set_clock_skew(&self, secs: i64) {
        self.lock().skew = secs;
    }

    /// The store's clock minus the host's, in seconds.
    pub fn clock_skew(&self) -> i64 {
        self.lock().skew
    }

    /// Holds the next writer of a key starting with `prefix` (put or staged
    /// commit) just before its write, until the [`Held`] is released.
    pub fn hold(&self, prefix: &str) -> Held {
        let (reached_tx, reached) = channel();
        let (release, release_rx) = channel();
        self.lock().gates.push(Gate {
            prefix: prefix.into(),
            reached: reached_tx,
            release: release_rx,
        });
        Held { reached, release }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the map whole: each change
        // is one insert or remove.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fire(state: &mut State, key: &str, op: Op) -> Result<()> {
        state.powered(key)?;
        for f in &mut state.faults {
            if let Fault::FailPutAfter(p, n) = f {
                if op == Op::Put && *n > 0 && key.starts_with(p.as_str()) {
                    *n -= 1;
                    return Ok(());
                }
            }
        }
        let hit = state.faults.iter().position(|f| match f {
            Fault::FailPut(p) | Fault::FailPutAfter(p, _) => op == Op::Put && key.starts_with(p.as_str()),
            Fault::FailGet(p) => op == Op::Get && key.starts_with(p.as_str()),
            Fault::FailDelete(p) => op == Op::Delete && key.starts_with(p.as_str()),
            Fault::VanishOnHead(p) => op == Op::Head && key.starts_with(p.as_str()),
        });
        match hit {
            Some(i) => {
                let fault = state.faults.remove(i);
                Err(Error::Backend {
                    key: key.into(),
                    source: format!("injected fault {fault:?}").into(),
                })
            }
            None => Ok(()),
        }
    }

    /// Waits at a gate armed for `key`, if any, with the state unlocked.
    fn pass_gate(&self, key: &str) {
        let gate = {
            let mut state = self.lock();
            let i = state.gates.iter().position(|g| key.starts_with(&g.prefix));
            i.map(|i| state.gates.remove(i))
        };
        if let Some(g) = gate {
            let _ = g.reached.send(());
            let _ = g.release.recv();
        }
    }

    /// A whole-object write of `data` under `key`; `tmp` is the temporary
    /// it was staged in, which the write renames into place.
    fn insert(&self, key: &str, data: Vec<u8>, tmp: Option<&str>) -> Result<()> {
        self.pass_gate(key);
        let mut state = self.lock();
        Self::fire(&mut state, key, Op::Put)?;
        let op = if tmp.is_some() { "commit" } else { "put" };
        match state.step(op, key)? {
            Step::Lost => {
                if tmp.is_none() {
                    state.temporary(key, data);
                }
                return Err(cut(key));
            }
            Step::Go | Step::Lands => {}
        }
        state.puts += 1;
        if let Some(tmp) = tmp {
            state.partial.remove(tmp);
        }
        let object = state.object(data);
        state.objects.insert(key.into(), object);
        if state.power.off {
            return Err(cut(key));
        }
        Ok(())
    }

    fn object(&self, key: &str) -> Result<Option<Object>> {
        let mut state = self.lock();
        Self::fire(&mut state, key, Op::Get)?;
        Ok(state.objects.get(key).cloned())
    }
}

/// A staged object: in place only at commit (where a put fault fires);
/// until then a temporary object, removed if dropped uncommitted.
struct MemoryStaged {
    backend: MemoryBackend,
    key: String,
    tmp: String,
    boot: u64,
    data: Option<Vec<u8>>,
}

impl Staged for MemoryStaged {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let data = self.data.take().expect("committed once");
        if self.backend.lock().boots != self.boot {
            return Err(Error::Backend {
                key: self.key.clone(),
                source: "staged before a crash: its bytes were never durable".into(),
            });
        }
        self.backend.insert(&self.key, data, Some(&self.tmp))
    }
}

impl Drop for MemoryStaged {
    fn drop(&mut self) {
        if self.data.is_some() {
            let mut state = self.backend.lock();
            // A process that lost power removes nothing.
            if !state.power.off && state.boots == self.boot {
                state.partial.remove(&self.tmp);
            }
        }
    }
}

struct MemoryObject {
    data: Arc<Vec<u8>>,
    key: String,
}

impl ReadAt for MemoryObject {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| {
                Error::corrupt(
                    error::Object::StoreObject(self.key.clone()),
                    format!("too short: {} bytes at offset {offset} are missing", buf.len()),
                )
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> Result<u64> {
        Ok(self.data.len() as u64)
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory:".into()
    }

    fn put_with(&self, key: &str, fill: &mut Fill) -> Result<()> {
        checked(key)?;
        let mut data = Vec::new();
        fill(&mut data).map_err(|source| Error::Backend {
            key: key.into(),
            source: source.into(),
        })?;
        self.insert(key, data, None)
    }

    fn stage(&self, key: &str, data: &[u8]) -> Result<Box<dyn Staged>> {
        checked(key)?;
        let mut state = self.lock();
        let step = state.step("stage", key)?;
        // The bytes go to a temporary object now, durable or not.
        let tmp = state.temporary(key, data.to_vec());
        if step != Step::Go {
            return Err(cut(key));
        }
        Ok(Box::new(MemoryStaged {
            backend: self.clone(),
            key: key.into(),
            tmp,
            boot: state.boots,
            data: Some(data.to_vec()),
        }))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        checked(key)?;
        Ok(self.object(key)?.map(|o| o.data.as_ref().clone()))
    }

    fn open(&self, key: &str) -> Result<Box<dyn ReadAt>> {
        checked(key)?;
        match self.object(key)? {
            Some(o) => Ok(Box::new(MemoryObject {
                data: o.data,
                key: key.into(),
            })),
            None => Err(Error::Missing { key: key.into() }),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        checked(key)?;
        let mut state = self.lock();
        match Self::fire(&mut state, key, Op::Head) {
            Err(Error::Backend { .. }) if !state.power.off => return Ok(None),
            r => r?,
        }
        Ok(state.objects.get(key).map(|o| ObjectMeta {
            key: key.into(),
            size: o.data.len() as u64,
            modified: o.modified,
        }))
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage> {
        let start = dir_prefix(prefix);
        let state = self.lock();
        state.powered(prefix)?;
        let mut keys = Vec::new();
        let mut more = false;
        // Keys under a prefix are one contiguous run of the sorted map.
        let from = match after {
            Some(a) if a >= start.as_str() => Bound::Excluded(a.to_string()),
            _ => Bound::Included(start.clone()),
        };
        for key in state.objects.range((from, Bound::Unbounded)).map(|(k, _)| k) {
            if !key.starts_with(&start) {
                break;
            }
            if keys.len() == self.page {
                more = true;
                break;
            }
            keys.push(key.clone());
        }
        Ok(ListPage { keys, more })
    }

    fn delete(&self, key: &str) -> Result<()> {
        checked(key)?;
        let mut state = self.lock();
        Self::fire(&mut state, key, Op::Delete)?;
        if state.step("delete", key)? == Step::Lost {
            return Err(cut(key));
        }
        state.objects.remove(key);
        state.partial.remove(key);
        if state.power.off {
            return Err(cut(key));
        }
        Ok(())
    }

    fn partial_writes(&self) -> Result<Vec<PartialWrite>> {
        let state = self.lock();
        state.powered("")?;
        Ok(state
            .partial
            .iter()
            .map(|(key, o)| PartialWrite {
                key: key.clone(),
                bytes: o.data.len() as u64,
                modified: o.modified,
                pid: super::key_name(key)
                    .strip_prefix(crate::fsutil::TMP_PREFIX)
                    .and_then(|n| n.split('-').next())
                    .and_then(|p| p.parse().ok()),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_fault_fires_once_and_writes_nothing() {
        let b = MemoryBackend::default();
        b.inject(Fault::FailPut("packs/".into()));
        assert!(matches!(b.put("packs/ab/x", b"1"), Err(Error::Backend { .. })));
        assert!(b.head("packs/ab/x").unwrap().is_none());
        b.put("packs/ab/x", b"1").unwrap();
        b.inject(Fault::FailGet("packs/ab/x".into()));
        assert!(b.get("packs/ab/x").is_err());
        assert_eq!(b.get("packs/ab/x").unwrap().unwrap(), b"1");
    }

    /// The durability model: a staged object is lost by a crash unless
    /// committed; the write at a cut is lost or lands, and nothing after it
    /// happens; temporaries stay; a fork shares nothing.
    #[test]
    fn a_crash_keeps_what_was_durable_and_nothing_else() {
        for lands in [false, true] {
            let b = MemoryBackend::default();
            b.put("refs/a", b"old").unwrap();
            let fork = b.fork();
            let committed = b.stage("packs/1", b"one").unwrap();
            let uncommitted = b.stage("packs/2", b"two").unwrap();
            committed.commit().unwrap();
            let w = b.writes();
            b.cut_power(1, lands);
            b.put("index/s", b"seg").unwrap();
            assert!(b.put("refs/a", b"new").is_err(), "the write at the cut");
            let at = b.power_cut().expect("cut");
            assert_eq!((at.op, at.key.as_str(), at.landed), ("put", "refs/a", lands));
            assert!(
                b.get("packs/1").is_err() && b.list("").is_err(),
                "a read after the cut"
            );
            assert!(b.delete("index/s").is_err());
            assert!(uncommitted.commit().is_err());
            b.crash();
            assert_eq!(b.writes(), w + 2);
            let expect: &[u8] = if lands { b"new" } else { b"old" };
            assert_eq!(b.get("refs/a").unwrap().unwrap(), expect);
            assert_eq!(b.list("").unwrap(), ["index/s", "packs/1", "refs/a"]);
            let left: Vec<String> = b.partial_writes().unwrap().into_iter().map(|p| p.key).collect();
            // The uncommitted stage's temporary, and the lost put's.
            assert_eq!(left.len(), if lands { 1 } else { 2 }, "{left:?}");
            assert!(left
                .iter()
                .all(|k| k.starts_with("packs/.tmp-") || k.starts_with("refs/.tmp-")));
            assert_eq!(fork.list("").unwrap(), ["refs/a"], "a fork shares nothing");
        }
    }

    #[test]
    fn the_store_clock_is_skewed_and_a_held_writer_waits() {
        let b = MemoryBackend::default();
        b.set_clock_skew(-3 * 3600);
        b.put("a", b"").unwrap();
        let behind = SystemTime::now()
            .duration_since(b.head("a").unwrap().unwrap().modified)
            .unwrap();
        assert!(behind >= Duration::from_secs(3 * 3600 - 1), "{behind:?}");
        let held = b.hold("b");
        let writer = {
            let b = b.clone();
            std::thread::spawn(move || b.put("b", b"x"))
        };
        assert!(held.wait(Duration::from_secs(10)));
        assert!(b.head("b").unwrap().is_none(), "written while held");
        held.release();
        writer.join().unwrap().unwrap();
        assert!(b.head("b").unwrap().is_some());
    }
}
