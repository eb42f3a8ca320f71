//! `prune`: retention per name, like restic's `forget` or borg's `prune`.
//! It removes refs only; `gc` frees their space.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::ImageId;
use crate::refs::{RefRecord, TagRef};
use crate::session::now_unix;
use crate::Store;

/// What to keep; a ref is kept if any rule keeps it.
#[derive(Debug, Clone, Default)]
pub struct KeepPolicy {
    /// The newest N refs of each name.
    pub last: Option<usize>,
    /// Refs created within this long before now.
    pub within: Option<Duration>,
    /// Tags matching any of these glob patterns (`v*`, `release-?`).
    pub tags: Vec<String>,
}

/// One ref's fate.
#[derive(Debug, Clone, Serialize)]
pub struct PruneDecision {
    /// The ref.
    #[serde(skip)]
    pub tag: TagRef,
    /// `name:tag`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The image it names.
    pub image: ImageId,
    /// When it was created.
    pub created: u64,
    /// Kept (true) or removed.
    pub keep: bool,
    /// The rules that keep it; empty when removed.
    pub reasons: Vec<String>,
}

impl Store {
    /// Decides, by `policy`, the fate of each ref of `names` (all names if
    /// empty), newest first within each name. Removes nothing: `prune
    /// --dry-run` prints this, [`Store::apply_prune`] carries it out.
    pub fn prune_plan(&self, names: &[String], policy: &KeepPolicy) -> Result<Vec<PruneDecision>> {
        if policy.last.is_none() && policy.within.is_none() && policy.tags.is_empty() {
            return Err(Error::BadInput {
                reason: "prune needs at least one of --keep-last, --keep-within, --keep-tag \
                         (without one it would remove every tag)"
                    .into(),
            });
        }
        let patterns = policy
            .tags
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|e| Error::BadInput {
                    reason: format!("--keep-tag {p:?}: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut refs: Vec<(TagRef, RefRecord)> = Vec::new();
        if names.is_empty() {
            refs = self.refs(None)?;
        } else {
            for n in names {
                refs.extend(self.refs(Some(n))?.into_iter().filter(|(t, _)| &t.name == n));
            }
        }
        let mut by_name: BTreeMap<String, Vec<(TagRef, RefRecord)>> = BTreeMap::new();
        for (t, r) in refs {
            by_name.entry(t.name.clone()).or_default().push((t, r));
        }
        // A pinned image's tags stay: the pin keeps its data anyway, and a
        // tag is how people find it.
        let pins: HashMap<ImageId, String> = self.pins()?.into_iter().map(|p| (p.image, p.reason)).collect();
        let now = now_unix();
        let mut out = Vec::new();
        for (_, mut group) in by_name {
            group.sort_by(|a, b| b.1.created.cmp(&a.1.created).then_with(|| b.0.tag.cmp(&a.0.tag)));
            for (i, (t, r)) in group.into_iter().enumerate() {
                let mut reasons = Vec::new();
                if policy.last.is_some_and(|n| i < n) {
                    reasons.push(format!("among the last {}", policy.last.unwrap_or(0)));
                }
                if let Some(w) = policy.within {
                    if now.saturating_sub(r.created) <= w.as_secs() {
                        reasons.push(format!("created within {}", humanize(w)));
                    }
                }
                if let Some(p) = patterns.iter().find(|p| p.matches(&t.tag)) {
                    reasons.push(format!("tag matches {:?}", p.as_str()));
                }
                if let Some(why) = pins.get(&r.image) {
                    reasons.push(format!("image pinned ({why})"));
                }
                out.push(PruneDecision {
                    keep: !reasons.is_empty(),
                    tag: t.clone(),
                    reference: t.to_string(),
                    image: r.image,
                    created: r.created,
                    reasons,
                });
            }
        }
        Ok(out)
    }

    /// Removes the refs `plan` does not keep. A ref moved to another image
    /// since the plan was made, or removed, is left alone: the plan decided
    /// about the image it named then.
    pub fn apply_prune(&self, plan: &[PruneDecision]) -> Result<()> {
        for d in plan.iter().filter(|d| !d.keep) {
            if self.read_ref(&d.tag)?.is_some_and(|r| r.image == d.image) {
                self.rm_as(&d.tag, "prune")?;
            }
        }
        Ok(())
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}
