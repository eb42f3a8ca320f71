//! `verify`: checks the store's structure and, with `read_data`, every
//! stored byte, and maps whatever is damaged to the images (refs) that need it.
//!
//! Structure: every file is where the layout says and of the right kind (a
//! symlink is reported and never followed), every pack's footer and its
//! checksum are sound, every segment and manifest decodes, every ref parses
//! and names a manifest, and every chunk a manifest lists has an index entry
//! pointing at a pack that exists and is sound.
//!
//! Read data: each selected pack is read whole, its BLAKE3 compared with its
//! name, and every chunk decoded and checked against its id. `--subset N/T`
//! selects the packs whose id (first 8 bytes, little-endian) is N mod T, so
//! `--subset $((day % 7))/7` covers the store in a week. Within the
//! selection, packs verified longest ago go first, and the time each pack was
//! last read clean is kept in the local index directory (`verify-state.json`),
//! so a run cut short by `max_duration` resumes where the last one stopped.
//!
//! Memory is proportional to the number of packs (one small record each),
//! the number of refs and images, and one manifest and one pack at a time —
//! never to the number of chunks in the store: chunk locations are looked up
//! in the RocksDB index, in batches.
//!
//! Listing order matters on a live store: a put writes packs, then its
//! segment, then the manifest, then the ref. Verify lists refs, then
//! manifests, then catches up the index, then lists packs, so everything a
//! listed ref needs was durable before verify looked for it.

mod read_data;
mod walk;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Object, Result};
use crate::eventlog;
use crate::id::{ChunkId, Digest, ImageId, PackId};
use crate::index;
use crate::manifest::{self, Entry, Manifest};
use crate::pack;
use crate::pins;
use crate::progress::Progress;
use crate::refs::{self, RefRecord, TagRef};
use crate::segment;
use crate::Store;

/// File in the local index directory: when each pack was last read clean.
const STATE_FILE: &str = "verify-state.json";
/// Chunks looked up in the index per batch.
const LOOKUP_BATCH: usize = 4096;

/// A deterministic share of the packs: those whose id is `n` mod `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Subset {
    /// Which share, `0..t`.
    pub n: u64,
    /// How many shares.
    pub t: u64,
}

impl Subset {
    /// Parses `N/T` with `0 <= N < T`.
    pub fn parse(s: &str) -> Result<Subset> {
        let bad = || Error::BadInput {
            reason: format!("subset {s:?} is not N/T with 0 <= N < T"),
        };
        let (n, t) = s.split_once('/').ok_or_else(bad)?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        let t: u64 = t.trim().parse().map_err(|_| bad())?;
        if t == 0 || n >= t {
            return Err(bad());
        }
        Ok(Subset { n, t })
    }

    /// True when `pack` belongs to this share.
    pub fn contains(&self, pack: &PackId) -> bool {
        let k = u64::from_le_bytes(pack.0[..8].try_into().expect("8 bytes"));
        k % self.t == self.n
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.n, self.t)
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Read, decompress and hash every chunk of the selected packs.
    pub read_data: bool,
    /// Read only this share of the packs (structure is always checked whole).
    pub subset: Option<Subset>,
    /// Stop reading packs once this much time has passed (resumed next run).
    pub max_duration: Option<Duration>,
}

/// The kind of a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    /// A file that should exist does not.
    Missing,
    /// A file's bytes fail their checks.
    Corrupt,
    /// A file or directory the layout has no place for.
    Stray,
    /// A symbolic link in the store (never followed).
    Symlink,
}

impl ProblemKind {
    /// The kind of problem an error reading a stored object is, by the
    /// error's type: an object that is not there is missing; any other
    /// failure to read it (its bytes fail their checks, or it cannot be
    /// read at all) leaves it corrupt for every image that needs it.
    pub fn of(e: &Error) -> ProblemKind {
        match e {
            Error::Missing { .. } => ProblemKind::Missing,
            _ => ProblemKind::Corrupt,
        }
    }
}

impl Problem {
    /// The problem with the object at `key` that reading it failed with `e`.
    pub fn of(key: impl Into<String>, e: &Error) -> Problem {
        Problem {
            kind: ProblemKind::of(e),
            key: key.into(),
            detail: e.to_string(),
        }
    }
}

/// A damaged image's line for the error that reading one of its objects
/// (its ref, its manifest, a delta's base) failed with: the object the
/// error names by its type, which need not be the one verify read.
fn damage_line(e: &Error) -> String {
    match e {
        Error::Corrupt { object, .. } => format!("{object} is corrupt"),
        Error::Missing { key } => format!("store object {key} is missing"),
        other => other.to_string(),
    }
}

/// One thing wrong with the store.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The store key of the file (or of what is missing).
    pub key: String,
    /// Where and how, e.g. `chunk 3f… at offset 4096: hash mismatch`.
    pub detail: String,
}

/// An image that cannot be read back whole, and why.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedImage {
    /// The image, when known (a corrupt ref does not say).
    pub image: Option<ImageId>,
    /// Every ref that names it, as `name:tag`.
    pub refs: Vec<String>,
    /// What is damaged (the first few causes).
    pub damage: Vec<String>,
}

/// A pack that verify proved damaged (input to `repair`).
#[derive(Debug, Clone, Serialize)]
pub struct DamagedPack {
    /// The pack.
    pub pack: PackId,
    /// Its store key.
    pub key: String,
    /// The file is gone (the index still points at it).
    pub missing: bool,
    /// The footer cannot be read: no chunk in it can be trusted by offset.
    pub footer_bad: bool,
    /// Chunks whose frame fails its check (read_data only).
    pub bad_chunks: Vec<ChunkId>,
    /// The file's BLAKE3 does not match its name (read_data only).
    pub hash_mismatch: bool,
}

/// What verify found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Refs checked.
    pub refs: u64,
    /// Pins read.
    pub pins: u64,
    /// Distinct images (manifests) checked.
    pub images: u64,
    /// Packs whose footer was checked.
    pub packs: u64,
    /// Segments checked.
    pub segments: u64,
    /// Whether chunk data was read.
    pub read_data: bool,
    /// The share of packs read, when not all.
    pub subset: Option<Subset>,
    /// Packs read whole.
    pub packs_read: u64,
    /// Packs selected but not read because `max_duration` ran out.
    pub packs_left: u64,
    /// Chunks decoded and checked.
    pub chunks_read: u64,
    /// Pack bytes read.
    pub bytes_read: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Everything wrong, sorted by key.
    pub problems: Vec<Problem>,
    /// Images that cannot be read back whole, sorted by ref.
    pub damaged: Vec<DamagedImage>,
    /// Packs proven damaged or missing.
    pub damaged_packs: Vec<DamagedPack>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.damaged.is_empty()
    }
}

/// One pack as verify knows it: memory per pack, not per chunk.
struct PackInfo {
    key: String,
    size: u64,
    damage: Option<DamagedPack>,
}

impl PackInfo {
    fn damage(&mut self, id: PackId) -> &mut DamagedPack {
        let key = self.key.clone();
        self.damage.get_or_insert_with(|| DamagedPack {
            pack: id,
            key,
            missing: false,
            footer_bad: false,
            bad_chunks: Vec::new(),
            hash_mismatch: false,
        })
    }
}

impl Store {
    /// Checks the store; see the module documentation. Returns `Err` only
    /// when verification itself cannot proceed (I/O, a damaged local index);
    /// damage found is in the report.
    pub fn verify(&self, opts: &VerifyOptions, progress: &dyn Progress) -> Result<VerifyReport> {
        let started = Instant::now();
        let mut report = VerifyReport {
            read_data: opts.read_data,
            subset: opts.subset,
            ..VerifyReport::default()
        };
        let mut problems = Vec::new();
        let walk = self.walk(&mut problems)?;

        // Refs -> images.
        let mut images: BTreeMap<ImageId, Vec<String>> = BTreeMap::new();
        let mut damage: BTreeMap<ImageId, Vec<String>> = BTreeMap::new();
        let mut damaged = Vec::new();
        for key in &walk.refs {
            report.refs += 1;
            let comps: Vec<String> = key.split('/').skip(1).map(str::to_string).collect();
            let Some(tag) = refs::ref_from_path(&comps) else {
                continue;
            };
            match self.read_checked_ref(&tag, key) {
                Ok(Some(r)) => images.entry(r.image).or_default().push(tag.to_string()),
                Ok(None) => {}
                Err(e) => {
                    problems.push(Problem::of(key, &e));
                    damaged.push(DamagedImage {
                        image: None,
                        refs: vec![tag.to_string()],
                        damage: vec![damage_line(&e)],
                    });
                }
            }
        }

        // Pins -> images: a pinned image is checked like a tagged one.
        for key in &walk.pins {
            report.pins += 1;
            let id = pins::pin_key_image(key).expect("walk keeps only pin keys");
            match self.pin_of(&id) {
                Ok(Some(p)) => images
                    .entry(p.image)
                    .or_default()
                    .push(format!("(pinned: {})", p.reason)),
                Ok(None) => {}
                Err(e) => problems.push(Problem::of(key, &e)),
            }
        }

        // The index, caught up after the manifests were listed (see above).
        self.index_catch_up()?;
        let lookup = index::Reader::open(&self.index_dir)?;

        // Packs: footers always; whole reads for the selection.
        let mut packs: HashMap<PackId, PackInfo> = HashMap::new();
        for key in &walk.packs {
            report.packs += 1;
            let name = key.rsplit('/').next().expect("keys have a name");
            let id = Digest::from_hex(name).expect("walk keeps only hex names");
            let mut info = PackInfo {
                key: key.clone(),
                size: 0,
                damage: None,
            };
            match self.backend.open(key).and_then(|f| {
                info.size = f.size()?;
                pack::read_footer(f.as_ref(), &Object::Pack { key: key.to_owned() })
            }) {
                Ok(_) => {}
                // Deleted by a gc since the listing: not damage.
                Err(_)
                    if self.backend.head(key)?.is_none()
                        && self
                            .backend
                            .head(&format!("{}/{}", crate::segment::TOMBSTONES_DIR, id.to_hex()))?
                            .is_some() =>
                {
                    continue;
                }
                Err(e) => {
                    match e {
                        Error::Missing { .. } => info.damage(id).missing = true,
                        _ => info.damage(id).footer_bad = true,
                    }
                    problems.push(Problem::of(key, &e));
                }
            }
            packs.insert(id, info);
        }
        if opts.read_data {
            self.read_packs(opts, &mut packs, &mut report, &mut problems, progress)?;
        }

        // Segments decode.
        for key in &walk.segments {
            report.segments += 1;
            let result = self
                .backend
                .get(key)?
                .map(|b| segment::decode(&b, &Object::Segment { key: key.to_owned() }).map(|_| ()))
                .unwrap_or(Ok(()));
            if let Err(e) = result {
                problems.push(Problem::of(key, &e));
            }
        }
        for key in &walk.logs {
            if let Some(bytes) = self.backend.get(key)? {
                if let Err(e) = eventlog::parse(&bytes, key) {
                    problems.push(Problem::of(key, &e));
                }
            }
        }

        // Manifests: one at a time; each chunk must be in a sound pack.
        let listed: HashSet<&str> = walk.manifests.iter().map(String::as_str).collect();
        let archived = self.archived_images()?;
        let mut missing_packs: HashMap<PackId, DamagedPack> = HashMap::new();
        for id in images.keys() {
            report.images += 1;
            let key = manifest::key(id);
            if !listed.contains(key.as_str()) && !listed.contains(manifest::delta_key(id).as_str()) {
                problems.push(Problem {
                    kind: ProblemKind::Missing,
                    key: key.clone(),
                    detail: format!("manifest of image {id} is missing"),
                });
                damage
                    .entry(*id)
                    .or_default()
                    .push(format!("manifest {key} is missing"));
                continue;
            }
            // An archived image's manifest must still read (it is the
            // image's metadata); its chunks are its archive stream's.
            let held = self.manifest(id).and_then(|m| {
                if archived.contains(id) {
                    self.held(id)
                } else {
                    Ok(m)
                }
            });
            let m = match held {
                Ok(m) => m,
                Err(e) => {
                    problems.push(Problem::of(key, &e));
                    damage.entry(*id).or_default().push(damage_line(&e));
                    continue;
                }
            };
            let found = check_chunks(&m, &lookup, &packs, &mut missing_packs)?;
            if !found.is_empty() {
                damage.entry(*id).or_default().extend(found);
            }
        }
        // Manifests no ref names still have to decode.
        for key in &walk.manifests {
            let name = key.rsplit('/').next().expect("keys have a name");
            let hex = name.strip_suffix(manifest::DELTA_SUFFIX).unwrap_or(name);
            let id = ImageId(Digest::from_hex(hex).expect("walk keeps only hex names"));
            if images.contains_key(&id) {
                continue;
            }
            if let Err(e) = self.manifest(&id) {
                problems.push(Problem::of(key, &e));
            }
        }
        for (pack, d) in &missing_packs {
            problems.push(Problem {
                kind: ProblemKind::Missing,
                key: d.key.clone(),
                detail: format!("pack {pack} is missing but the index locates chunks in it"),
            });
        }

        for (id, mut why) in damage {
            why.sort();
            why.dedup();
            let n = why.len();
            why.truncate(5);
            if n > 5 {
                why.push(format!("... and {} more", n - 5));
            }
            damaged.push(DamagedImage {
                image: Some(id),
                refs: images.get(&id).cloned().unwrap_or_default(),
                damage: why,
            });
        }
        damaged.sort_by(|a, b| a.refs.cmp(&b.refs));
        problems.sort_by(|a, b| a.key.cmp(&b.key).then(a.detail.cmp(&b.detail)));
        report.problems = problems;
        report.damaged = damaged;
        let mut dp: Vec<DamagedPack> = packs.into_values().filter_map(|p| p.damage).collect();
        dp.extend(missing_packs.into_values());
        dp.sort_by(|a, b| a.key.cmp(&b.key));
        report.damaged_packs = dp;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn read_checked_ref(&self, tag: &TagRef, key: &str) -> Result<Option<RefRecord>> {
        self.backend
            .get(key)?
            .map(|b| {
                RefRecord::parse(
                    &b,
                    &Object::Ref {
                        key: key.to_owned(),
                        tag: Some(tag.to_string()),
                    },
                )
            })
            .transpose()
    }
}

/// Damage found for the chunks of one manifest.
fn check_chunks(
    m: &Manifest,
    lookup: &index::Reader,
    packs: &HashMap<PackId, PackInfo>,
    missing: &mut HashMap<PackId, DamagedPack>,
) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let ids: Vec<ChunkId> = m
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Chunk { id, .. } => Some(*id),
            Entry::Zero { .. } => None,
        })
        .collect();
    for batch in ids.chunks(LOOKUP_BATCH) {
        for (id, loc) in batch.iter().zip(lookup.lookup(batch)?) {
            let Some(loc) = loc else {
                found.push(format!("chunk {id} is in no pack the index knows"));
                continue;
            };
            let key = pack::key(&loc.pack);
            match packs.get(&loc.pack) {
                None => {
                    missing.entry(loc.pack).or_insert_with(|| DamagedPack {
                        pack: loc.pack,
                        key: key.clone(),
                        missing: true,
                        footer_bad: false,
                        bad_chunks: Vec::new(),
                        hash_mismatch: false,
                    });
                    found.push(format!("chunk {id}: pack {key} is missing"));
                }
                Some(PackInfo { damage: Some(d), .. }) if d.footer_bad || d.missing => {
                    found.push(format!("chunk {id}: pack {key} is corrupt (footer)"));
                }
                Some(PackInfo { damage: Some(d), .. }) if d.bad_chunks.contains(id) => {
                    found.push(format!(
                        "chunk {id} in pack {key} at offset {} is corrupt",
                        loc.offset
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_partition_the_packs() {
        let t = 7;
        for i in 0..200u32 {
            let id = Digest::of(&i.to_le_bytes());
            let hits = (0..t).filter(|n| Subset { n: *n, t }.contains(&id)).count();
            assert_eq!(hits, 1);
        }
        assert!(Subset::parse("3/7").is_ok());
        for bad in ["7/7", "1/0", "x", "1/", "-1/3"] {
            assert!(Subset::parse(bad).is_err(), "{bad}");
        }
    }

    /// A damaged object is classified by the error's type, never its text:
    /// a missing object is `missing` and any other failure `corrupt`, and
    /// an image's damage line names the object the error names (a delta's
    /// base, not the delta verify opened), whatever the detail says.
    #[test]
    fn damage_is_classified_by_the_error_type() {
        let base = ImageId(Digest::of(b"base"));
        let misleading = "manifest is missing; not found";
        let corrupt = Error::corrupt(Object::Image(base), misleading);
        assert_eq!(ProblemKind::of(&corrupt), ProblemKind::Corrupt);
        assert_eq!(damage_line(&corrupt), format!("image {base} is corrupt"));
        let pack = Error::corrupt(
            Object::Pack {
                key: "packs/ab/ab12".into(),
            },
            "missing",
        );
        assert_eq!(ProblemKind::of(&pack), ProblemKind::Corrupt);
        assert_eq!(damage_line(&pack), "pack packs/ab/ab12 is corrupt");
        let missing = Error::Missing {
            key: "manifests/ab/ab12".into(),
        };
        assert_eq!(ProblemKind::of(&missing), ProblemKind::Missing);
        assert_eq!(damage_line(&missing), "store object manifests/ab/ab12 is missing");
        let problem = Problem::of("packs/ab/ab12", &missing);
        assert_eq!(
            (problem.kind, problem.key.as_str()),
            (ProblemKind::Missing, "packs/ab/ab12")
        );
    }
}
