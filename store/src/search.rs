//! `imgstore find`: the refs whose image's definition file matches a
//! regular expression, filtered by labels, name and put date.
//!
//! The refs are read fresh (so a put or an rm from any host is seen by the
//! next search); what an image carries itself — a SIF's definition file and
//! labels — comes from the local report view, which caches it per image id
//! forever (an id's manifest never changes). Only images the view has not
//! seen yet cost a manifest read, once.
//!
//! Which definition file a ref has follows `imgstore deffile`: the ref's
//! own `--deffile` when it was given one, else the SIF's. Its labels are the
//! SIF's with the ref's `--label`s over them, as `inspect` shows.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::ImageId;
use crate::stats::view::{ImageMeta, View};
use crate::Store;

/// What to look for; every filter given must hold.
#[derive(Debug, Default)]
pub struct Query {
    /// A regex matched against each line of the definition file; a ref
    /// without a definition file never matches.
    pub deffile: Option<regex::Regex>,
    /// `(key, value)` pairs the labels must all have.
    pub labels: Vec<(String, String)>,
    /// A glob over the name, or over `name:tag` when it holds a `:`.
    pub name: Option<glob::Pattern>,
    /// Put (or tagged) at or after this time (seconds since the epoch).
    pub since: Option<u64>,
}

/// Where a ref's definition file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeffileSource {
    /// The ref's `--deffile`.
    Ref,
    /// The SIF image's own definition file object.
    Sif,
}

/// A line of a definition file that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineMatch {
    /// Line number, from 1.
    pub line: usize,
    /// The line, without its line ending.
    pub text: String,
}

/// One ref that passed every filter.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// `name:tag`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The name.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// The image.
    pub image: ImageId,
    /// When it was put or tagged (seconds since the epoch).
    pub created: u64,
    /// Image size in bytes.
    pub size: u64,
    /// Its labels (the SIF's, then the ref's over them).
    pub labels: BTreeMap<String, String>,
    /// Where its definition file comes from (`null`: it has none).
    pub deffile: Option<DeffileSource>,
    /// The lines the regex matched (empty without `--deffile`).
    pub matches: Vec<LineMatch>,
}

/// `imgstore find`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FindReport {
    /// The refs found, by name then tag.
    pub images: Vec<Found>,
    /// Refs searched (every ref in the store).
    pub searched: usize,
}

impl Query {
    /// Parses `K=V` label filters.
    pub fn parse_label(s: &str) -> Result<(String, String)> {
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Error::BadInput {
                reason: format!("--label {s:?}: expected KEY=VALUE"),
            }),
        }
    }

    fn name_matches(&self, name: &str, tag: &str) -> bool {
        match &self.name {
            None => true,
            Some(p) if p.as_str().contains(':') => p.matches(&format!("{name}:{tag}")),
            Some(p) => p.matches(name),
        }
    }
}

impl Store {
    /// Searches the store's refs; see [`Query`].
    pub fn find(&self, q: &Query) -> Result<FindReport> {
        let refs = self.refs_for_display(None)?;
        let searched = refs.len();
        let candidates: Vec<_> = refs
            .into_iter()
            .filter(|(t, r)| q.name_matches(&t.name, &t.tag) && q.since.is_none_or(|s| r.created >= s))
            .collect();
        let mut ids: Vec<ImageId> = candidates
            .iter()
            .map(|(_, r)| r.image)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        ids.sort();
        let metas = self.image_metas(&ids)?;
        let mut images = Vec::new();
        for (t, r) in candidates {
            let meta = &metas[&r.image];
            let mut labels = meta.labels.clone();
            labels.extend(r.labels.clone());
            if !q.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            let (text, source) = match (&r.deffile, &meta.deffile) {
                (Some(d), _) => (Some(d), Some(DeffileSource::Ref)),
                (None, Some(d)) => (Some(d), Some(DeffileSource::Sif)),
                (None, None) => (None, None),
            };
            let mut matches = Vec::new();
            if let Some(re) = &q.deffile {
                let Some(text) = text else { continue };
                matches = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| re.is_match(l))
                    .map(|(i, l)| LineMatch {
                        line: i + 1,
                        text: l.to_string(),
                    })
                    .collect();
                if matches.is_empty() {
                    continue;
                }
            }
            images.push(Found {
                reference: t.to_string(),
                name: t.name,
                tag: t.tag,
                image: r.image,
                created: r.created,
                size: r.size,
                labels,
                deffile: source,
                matches,
            });
        }
        Ok(FindReport { images, searched })
    }

    /// The metadata of `ids`: from the report view, and from the manifests
    /// of those it lacks (then cached there). A damaged view is built anew.
    fn image_metas(&self, ids: &[ImageId]) -> Result<HashMap<ImageId, ImageMeta>> {
        match self.image_metas_in(ids, false) {
            Err(Error::Index { detail, .. }) => {
                tracing::warn!(%detail, "report view damaged; building it again");
                self.image_metas_in(ids, true)
            }
            other => other,
        }
    }

    fn image_metas_in(&self, ids: &[ImageId], fresh: bool) -> Result<HashMap<ImageId, ImageMeta>> {
        let mut view = View::open(&self.index_dir, fresh)?;
        let cached = view.image_meta(ids)?;
        let missing: Vec<ImageId> = ids
            .iter()
            .zip(&cached)
            .filter(|(_, m)| m.is_none())
            .map(|(id, _)| *id)
            .collect();
        let read: Vec<(ImageId, ImageMeta)> =
            crate::ops::refs::parallel_map(&missing, |id| Ok((*id, ImageMeta::of(&self.manifest(id)?))))?;
        view.put_image_meta(&read)?;
        let mut out: HashMap<ImageId, ImageMeta> = ids
            .iter()
            .zip(cached)
            .filter_map(|(id, m)| m.map(|m| (*id, m)))
            .collect();
        out.extend(read);
        Ok(out)
    }
}

impl Store {
    /// The definition file of a resolved image, by the rule `find` uses:
    /// the ref's `--deffile`, else the SIF's own (read from its manifest).
    pub fn deffile(&self, resolved: &crate::Resolved) -> Result<Option<(String, DeffileSource)>> {
        if let Some(d) = resolved.record.as_ref().and_then(|r| r.deffile.clone()) {
            return Ok(Some((d, DeffileSource::Ref)));
        }
        // The header has the SIF's metadata: no need for the entries.
        let sif = self.manifest_file(&resolved.id)?.head.meta.sif;
        Ok(sif.and_then(|s| s.deffile).map(|d| (d, DeffileSource::Sif)))
    }
}
