//! What a gc run decides, as values: the stored plan (`gc/plan`), each
//! phase's decisions, and the report a run gives.

use serde::{Deserialize, Serialize};

use super::PLAN_KEY;
use crate::error::{Error, Object, Result};
use crate::id::{Digest, PackId};
use crate::session::SESSIONS_DIR;

/// The contents of `gc/plan`, every entry checked (see [`Plan::parse`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// Always 1.
    pub version: u32,
    /// Packs condemned.
    pub packs: Vec<PackId>,
    /// Their stored bytes.
    pub bytes: u64,
    /// Grace period in seconds.
    pub grace_secs: u64,
    /// Session files (`sessions/<name>`) live when the plan was written.
    pub sessions: Vec<String>,
}

/// `gc/plan` as stored: pack ids in hex.
#[derive(Serialize, Deserialize)]
struct PlanFile {
    version: u32,
    packs: Vec<String>,
    bytes: u64,
    grace_secs: u64,
    sessions: Vec<String>,
}

impl Plan {
    /// Parses a stored plan, refusing it whole if any entry is damaged: a
    /// skipped pack would stay condemned unchecked, a skipped session would
    /// not be waited for.
    pub fn parse(bytes: &[u8]) -> Result<Plan> {
        let what = Object::GcPlan { key: PLAN_KEY.into() };
        let damaged = |detail: String| {
            Error::corrupt(
                &what,
                format!(
                    "{detail}; gc and put refuse a damaged plan. Removing {PLAN_KEY} is safe \
                     (it only delays deletion: the next gc condemns anew)"
                ),
            )
        };
        let file: PlanFile = serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))?;
        if file.version != 1 {
            return Err(damaged(format!(
                "version {} (this imgstore writes 1)",
                file.version
            )));
        }
        let packs = file
            .packs
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Digest::from_hex(h).map_err(|_| damaged(format!("pack entry {i} {h:?} is not a pack id")))
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, s) in file.sessions.iter().enumerate() {
            let name = s.strip_prefix(SESSIONS_DIR).and_then(|r| r.strip_prefix('/'));
            if !name.is_some_and(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..") {
                return Err(damaged(format!("session entry {i} {s:?} is not a session file")));
            }
        }
        Ok(Plan {
            version: file.version,
            packs,
            bytes: file.bytes,
            grace_secs: file.grace_secs,
            sessions: file.sessions,
        })
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let file = PlanFile {
            version: self.version,
            packs: self.packs.iter().map(|p| p.to_hex()).collect(),
            bytes: self.bytes,
            grace_secs: self.grace_secs,
            sessions: self.sessions.clone(),
        };
        serde_json::to_vec_pretty(&file).expect("a plan serializes")
    }
}

/// A pack and its stored bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PackBytes {
    /// The pack.
    pub pack: PackId,
    /// Its size.
    pub bytes: u64,
}

/// Phase 2: what executing the pending plan does, decided by a fresh mark.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExecutePlan {
    /// Condemned packs nothing live needs any more: deleted.
    pub delete: Vec<PackBytes>,
    /// Condemned packs an image needs again: kept, and dropped from the plan.
    pub rescue: Vec<PackId>,
}

/// What becomes of the pending plan this run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pending {
    /// No plan is pending.
    None,
    /// The plan may not be executed yet, for this reason.
    Waiting(String),
    /// The plan is executed.
    Execute(ExecutePlan),
}

/// A mostly-garbage pack whose live frames are copied out before it is condemned.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Repack {
    /// The pack.
    pub pack: PackId,
    /// Its size.
    pub bytes: u64,
    /// Stored bytes of the frames copied out.
    pub live_bytes: u64,
}

/// Phase 1: what is garbage now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CondemnPlan {
    /// Packs whose every chunk is garbage: condemned as they are.
    pub garbage: Vec<PackBytes>,
    /// Packs at least [`super::REPACK_THRESHOLD`] garbage: repacked, then condemned.
    pub repack: Vec<Repack>,
}

/// A temporary file a writer that died left behind.
#[derive(Debug, Clone, Serialize)]
pub struct StaleTemporary {
    /// Its key.
    pub key: String,
    /// Its size.
    pub bytes: u64,
}

/// What one gc run would do, decided without writing anything: what
/// `gc --dry-run` shows. A real run decides each phase the same way, by the
/// same functions, just before carrying it out ([`Store::gc`](crate::Store::gc)).
#[derive(Debug, Clone, Serialize)]
pub struct GcPlan {
    /// The pending plan's fate.
    pub pending: Pending,
    /// What would be condemned; `None` when a pending plan waits.
    pub condemn: Option<CondemnPlan>,
    /// Temporary files of writers that died.
    pub temporaries: Vec<StaleTemporary>,
    /// Refs read by the mark.
    pub refs: usize,
    /// Pins read by the mark.
    pub pins: usize,
    /// Distinct images marked.
    pub images: usize,
}

impl GcPlan {
    /// The report a run that carried this plan out would give, the plan
    /// attached.
    pub fn into_report(self) -> GcReport {
        let mut r = GcReport {
            dry_run: true,
            refs: self.refs,
            pins: self.pins,
            images: self.images,
            ..GcReport::default()
        };
        match &self.pending {
            Pending::None => {}
            Pending::Waiting(why) => r.waiting = Some(why.clone()),
            Pending::Execute(e) => {
                r.packs_deleted = e.delete.len() as u64;
                r.bytes_freed = e.delete.iter().map(|d| d.bytes).sum();
                r.packs_rescued = e.rescue.len() as u64;
            }
        }
        if let Some(c) = &self.condemn {
            r.packs_repacked = c.repack.len() as u64;
            r.bytes_repacked = c.repack.iter().map(|p| p.live_bytes).sum();
            r.packs_condemned = (c.garbage.len() + c.repack.len()) as u64;
            r.bytes_condemned = c.garbage.iter().map(|p| p.bytes).sum::<u64>()
                + c.repack.iter().map(|p| p.bytes).sum::<u64>();
        }
        r.temporaries_removed = self.temporaries.len() as u64;
        r.temporary_bytes_freed = self.temporaries.iter().map(|t| t.bytes).sum();
        r.plan = Some(self);
        r
    }
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
    /// Refs read by the mark.
    pub refs: usize,
    /// Pins read by the mark.
    pub pins: usize,
    /// Distinct images marked.
    pub images: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// With `dry_run`: the plan, pack by pack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<GcPlan>,
}
