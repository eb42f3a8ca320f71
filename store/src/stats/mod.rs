//! Storage reports: what is stored, what it costs, what a delete frees.
//! Computes; never prints (the CLI renders the `Serialize` structs).
//!
//! Every figure comes from the store's truth — refs, manifests, pack
//! footers and the pending gc plan — never from the chunk index, which holds
//! one location per chunk and so cannot see duplicate copies. The truth is
//! folded into a local [`view`] (per-chunk counts and running totals) that
//! each report first brings up to date, so a report on a store of thousands
//! of images reads the refs and the pack listing, not every manifest.
//!
//! `du` of a whole name, of a single ref, or of every ref reads the view's
//! totals; any other set (several names, a label's refs) is computed over
//! its chunks, one lookup per distinct chunk.

mod counts;
mod meta;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result, Wanted};
use crate::eventlog::Event;
use crate::id::{ChunkId, DigestMap, ImageId};
use crate::pack;
use crate::pins::PinRecord;
use crate::progress::Progress;
use crate::refs::{RefRecord, TagRef};
use crate::Store;
use view::{PackInfo, SetTotals, StoreTotals, Tally, View};

/// Pack bytes that are not a chunk's frame: per chunk copy, a footer entry.
/// A copy's stored bytes include its frame header (a group's is shared
/// among its members), as [`crate::pack::framed_shares`] counts.
pub const CHUNK_OVERHEAD: u64 = pack::FOOTER_ENTRY_LEN as u64;
/// Pack bytes that are not chunk data: per pack, a header and a tail.
pub const PACK_OVERHEAD: u64 = (pack::HEADER_LEN + pack::TAIL_LEN) as u64;
/// The summary cache of earlier versions, removed when found.
const OLD_CACHE_FILE: &str = "report-cache.bin";

/// Everything the reports need: the refs read now and the view brought up
/// to date with them. Holds this host's report lock while it lives.
pub struct Snapshot<'s> {
    store: &'s Store,
    refs: Vec<(TagRef, RefRecord)>,
    pins: Vec<PinRecord>,
    /// Image -> number of refs naming it, plus one if it is pinned.
    image_refs: HashMap<ImageId, u32>,
    /// Name -> number of refs.
    name_refs: HashMap<String, usize>,
    view: View,
    packs: Vec<PackInfo>,
    totals: StoreTotals,
    index_bytes: u64,
    pack_size: u64,
    rebuilt: bool,
}

// ---------------------------------------------------------------- reports

/// `imgstore stats`: the whole store in a few figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsReport {
    /// Sum of the sizes of all refs' images (a tag counts each time), and
    /// of pinned images no ref names.
    pub logical_bytes: u64,
    /// Raw bytes of the distinct chunks live images use (after dedup;
    /// zero runs cost nothing).
    pub unique_bytes: u64,
    /// Compressed bytes of those chunks, one copy each (no pack framing).
    pub live_stored_bytes: u64,
    /// Bytes of all pack files on disk: what the store really uses for data.
    pub stored_bytes: u64,
    /// logical / unique.
    pub dedup_ratio: f64,
    /// unique / live stored.
    pub compression_ratio: f64,
    /// logical / stored.
    pub total_ratio: f64,
    /// Refs (name:tag).
    pub refs: u64,
    /// Distinct live images: named by a ref or pinned.
    pub images: u64,
    /// Pinned images.
    pub pins: u64,
    /// Stored bytes only pinned images use: what unpinning every image
    /// (and a gc) would free.
    pub pinned_only_stored_bytes: u64,
    /// Live images in the archive tier (`imgstore archive`).
    pub archived_images: u64,
    /// Their sizes, summed: what gets rebuilt at get instead of read.
    pub archived_logical_bytes: u64,
    /// Distinct names.
    pub names: u64,
    /// Distinct chunks live images use.
    pub chunks: u64,
    /// Pack files.
    pub packs: u64,
    /// Pack bytes / (packs * pack size): how full packs are on average.
    pub pack_fill: f64,
    /// The store's target pack size.
    pub pack_size: u64,
    /// Garbage waiting for gc: `condemned_bytes + unreferenced_bytes`.
    pub garbage_bytes: u64,
    /// Bytes of packs the pending gc plan condemned (freed by the next gc run
    /// after the grace period).
    pub condemned_bytes: u64,
    /// Packs condemned.
    pub condemned_packs: u64,
    /// Chunk copies (stored bytes + framing) in other packs that no image
    /// uses: a gc condemns them (or repacks around them).
    pub unreferenced_bytes: u64,
    /// Extra copies of live chunks (two puts stored the same new chunk at
    /// once), stored bytes + framing; kept by gc unless repacked.
    pub duplicate_bytes: u64,
    /// Pack framing of the live, one-copy chunks and pack headers/tails in
    /// non-condemned packs: `CHUNK_OVERHEAD` per chunk + `PACK_OVERHEAD` per pack.
    pub overhead_bytes: u64,
    /// Framing per chunk copy outside its frame (a pack footer entry).
    pub chunk_overhead: u64,
    /// Framing per pack (a pack's header and tail).
    pub pack_overhead: u64,
    /// This host's local index (chunk index + report view) on local disk.
    pub index_bytes: u64,
    /// The newest ref's `created` time (seconds since the epoch; 0 if none).
    pub last_put: u64,
    /// Objects (files) in the store, of every kind: what object storage
    /// counts, and what each request is made on.
    pub objects: u64,
    /// Their mean size in bytes.
    pub mean_object_size: u64,
}

/// One row of `imgstore du`: a set of refs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DuRow {
    /// The group: a name, `name:tag`, `label=value`, or `total`.
    pub group: String,
    /// Refs in the set.
    pub refs: u64,
    /// Distinct images.
    pub images: u64,
    /// Sum of the refs' image sizes.
    pub logical_bytes: u64,
    /// Distinct chunks the set's images use.
    pub chunks: u64,
    /// Their raw bytes.
    pub unique_bytes: u64,
    /// Their stored bytes.
    pub unique_stored_bytes: u64,
    /// Stored bytes of those chunks that images outside the set also use.
    pub shared_stored_bytes: u64,
    /// Chunks only this set's images use.
    pub exclusive_chunks: u64,
    /// Their raw bytes.
    pub exclusive_bytes: u64,
    /// Their stored bytes.
    pub exclusive_stored_bytes: u64,
    /// What removing exactly these refs and a gc frees on disk:
    /// exclusive stored bytes + `CHUNK_OVERHEAD` per exclusive chunk.
    pub frees_bytes: u64,
}

/// `imgstore du`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DuReport {
    /// One row per group.
    pub rows: Vec<DuRow>,
    /// All selected refs as one set (not the sum of the rows).
    pub total: DuRow,
    /// Pinned images as one set, when there are pins: its exclusive bytes
    /// are those held only by pins (what unpinning them all would free).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<DuRow>,
}

/// One commit of `imgstore history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    /// The tag.
    pub tag: String,
    /// The image.
    pub image: ImageId,
    /// When it was put (seconds since the epoch).
    pub created: u64,
    /// Image size.
    pub size: u64,
    /// Chunks the put added to the store (kept from the put).
    pub added_chunks: u64,
    /// Raw bytes the put added.
    pub added_bytes: u64,
    /// Stored bytes the put added.
    pub added_stored_bytes: u64,
    /// Stored bytes only this ref's image holds now (0 if another ref
    /// names the same image).
    pub exclusive_stored_bytes: u64,
    /// Raw bytes of the same.
    pub exclusive_bytes: u64,
    /// `bytes`, or `archive` when the image is archived: then the bytes
    /// it holds alone are its archive stream's (`imgstore archive`).
    pub tier: &'static str,
}

/// `imgstore history NAME`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    /// The name.
    pub name: String,
    /// Its refs, oldest first.
    pub commits: Vec<HistoryRow>,
}

/// `imgstore diff REF1 REF2`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    /// First image.
    pub a: String,
    /// Second image.
    pub b: String,
    /// Distinct chunks both use.
    pub common_chunks: u64,
    /// Their raw bytes.
    pub common_bytes: u64,
    /// Their stored bytes.
    pub common_stored_bytes: u64,
    /// Chunks only in the first.
    pub only_a_chunks: u64,
    /// Raw bytes.
    pub only_a_bytes: u64,
    /// Stored bytes.
    pub only_a_stored_bytes: u64,
    /// Chunks only in the second.
    pub only_b_chunks: u64,
    /// Raw bytes.
    pub only_b_bytes: u64,
    /// Stored bytes.
    pub only_b_stored_bytes: u64,
}

/// How `du` groups the selected refs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// One group per name.
    Name,
    /// One group per ref.
    Tag,
    /// One group per value of this label (`-` when absent).
    Label(String),
}

/// A point of the store's growth: a put or a gc run, and the stored bytes
/// after it.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthPoint {
    /// Seconds since the epoch.
    pub time: u64,
    /// The ref put, or `gc`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Stored bytes this put added, or what this gc run wrote (repacking)
    /// minus the pack bytes it deleted.
    pub added_stored_bytes: i64,
    /// Stored bytes after it: all puts' and gc runs' changes so far.
    pub cumulative_stored_bytes: u64,
}

/// The store's growth from the event log, oldest first.
pub fn growth(events: &[Event]) -> Vec<GrowthPoint> {
    let mut total: i64 = 0;
    events
        .iter()
        .filter_map(|e| {
            let change = match (&e.added, &e.gc) {
                (Some(a), _) if e.action == "put" => a.stored_bytes as i64,
                (_, Some(g)) => g.bytes_repacked as i64 - g.bytes_freed as i64,
                _ => return None,
            };
            total += change;
            Some(GrowthPoint {
                time: e.time,
                reference: if e.gc.is_some() {
                    "gc".into()
                } else {
                    e.reference.clone()
                },
                added_stored_bytes: change,
                cumulative_stored_bytes: n(total),
            })
        })
        .collect()
}

// ---------------------------------------------------------------- snapshot

impl Store {
    /// Reads the refs and the gc plan and brings this host's report view up
    /// to date with them and the pack listing: what every report needs.
    /// A damaged view is deleted and built again.
    pub fn snapshot(&self, progress: &dyn Progress) -> Result<Snapshot<'_>> {
        let _ = fs::remove_file(self.index_dir.join(OLD_CACHE_FILE));
        let refs = self.refs(None)?;
        let pins = self.pins()?;
        let condemned = self.condemned_packs()?;
        // The view counts a pin as one more name holding its image's chunks.
        let holders: Vec<(TagRef, RefRecord)> =
            refs.iter().cloned().chain(pins.iter().map(pin_holder)).collect();
        let refresh = |fresh: bool| -> Result<(View, Vec<PackInfo>)> {
            let mut view = View::open(&self.index_dir, fresh)?;
            let packs = view.refresh(self, &holders, &condemned, progress)?;
            Ok((view, packs))
        };
        let ((view, packs), rebuilt) = match refresh(false) {
            Err(Error::Index { detail, .. }) => {
                tracing::warn!(%detail, "report view damaged; building it again");
                (refresh(true)?, true)
            }
            other => (other?, false),
        };
        let mut image_refs: HashMap<ImageId, u32> = HashMap::new();
        let mut name_refs: HashMap<String, usize> = HashMap::new();
        for (t, r) in &refs {
            *image_refs.entry(r.image).or_default() += 1;
            *name_refs.entry(t.name.clone()).or_default() += 1;
        }
        for p in &pins {
            *image_refs.entry(p.image).or_default() += 1;
        }
        Ok(Snapshot {
            store: self,
            pins,
            packs,
            totals: view.store_totals()?,
            view,
            image_refs,
            name_refs,
            refs,
            index_bytes: dir_bytes(&self.index_dir),
            pack_size: self.config.pack_size,
            rebuilt,
        })
    }
}

/// The name under which the report view counts pins: `@` is not allowed in
/// a name, so it is never a ref's.
const PIN_HOLDER: &str = "@pinned";

/// A pin as the report view sees it: a ref of the name [`PIN_HOLDER`].
fn pin_holder(p: &PinRecord) -> (TagRef, RefRecord) {
    let t = TagRef {
        name: PIN_HOLDER.into(),
        tag: p.image.0.to_hex(),
    };
    let r = RefRecord {
        format: "imgstore-ref".into(),
        version: 1,
        image: p.image,
        size: p.size,
        created: p.created,
        user: p.user.clone(),
        host: p.host.clone(),
        message: None,
        labels: Default::default(),
        deffile: None,
        added: Default::default(),
    };
    (t, r)
}

/// Sum of file sizes below `dir` (secondaries of running commands included).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn minus(mut a: Tally, b: &Tally) -> Tally {
    a.plus(&Tally {
        chunks: -b.chunks,
        bytes: -b.bytes,
        stored: -b.stored,
    });
    a
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// A running total as a byte count (negative only in a damaged view).
fn n(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl DuRow {
    fn from_totals(group: String, refs: u64, images: u64, logical_bytes: u64, t: &SetTotals) -> DuRow {
        let (a, e) = (&t.all, &t.exclusive);
        DuRow {
            group,
            refs,
            images,
            logical_bytes,
            chunks: n(a.chunks),
            unique_bytes: n(a.bytes),
            unique_stored_bytes: n(a.stored),
            shared_stored_bytes: n(a.stored - e.stored),
            exclusive_chunks: n(e.chunks),
            exclusive_bytes: n(e.bytes),
            exclusive_stored_bytes: n(e.stored),
            frees_bytes: n(e.stored) + n(e.chunks) * CHUNK_OVERHEAD,
        }
    }
}

impl Snapshot<'_> {
    /// The refs read, sorted.
    pub fn refs(&self) -> &[(TagRef, RefRecord)] {
        &self.refs
    }

    /// Whether the view was found damaged (or inconsistent) and built
    /// again from the store: the figures are right either way; tests use it
    /// to catch a running total that went wrong.
    pub fn rebuilt(&self) -> bool {
        self.rebuilt
    }

    /// The pins read, by image id.
    pub fn pins(&self) -> &[PinRecord] {
        &self.pins
    }

    /// Chunks pinned images use (`all`), and those only they use
    /// (`exclusive`: what unpinning them all and a gc would free).
    fn pinned_totals(&self) -> Result<SetTotals> {
        if self.pins.is_empty() {
            return Ok(SetTotals::default());
        }
        self.view.name_totals(PIN_HOLDER)
    }

    /// `imgstore stats`.
    pub fn stats(&self) -> Result<StatsReport> {
        let t = &self.totals;
        let tagged: BTreeSet<ImageId> = self.refs.iter().map(|(_, r)| r.image).collect();
        let mut r = StatsReport {
            refs: self.refs.len() as u64,
            images: self.image_refs.len() as u64,
            names: self.name_refs.len() as u64,
            chunks: n(t.live.chunks),
            unique_bytes: n(t.live.bytes),
            live_stored_bytes: n(t.live.stored),
            unreferenced_bytes: n(t.unreferenced_bytes),
            duplicate_bytes: n(t.duplicate_bytes),
            overhead_bytes: n(t.first_copies) * CHUNK_OVERHEAD,
            packs: self.packs.len() as u64,
            pack_size: self.pack_size,
            chunk_overhead: CHUNK_OVERHEAD,
            pack_overhead: PACK_OVERHEAD,
            index_bytes: self.index_bytes,
            last_put: self.refs.iter().map(|(_, r)| r.created).max().unwrap_or(0),
            logical_bytes: self.refs.iter().map(|(_, rec)| rec.size).sum::<u64>()
                + self
                    .pins
                    .iter()
                    .filter(|p| !tagged.contains(&p.image))
                    .map(|p| p.size)
                    .sum::<u64>(),
            pins: self.pins.len() as u64,
            pinned_only_stored_bytes: n(self.pinned_totals()?.exclusive.stored),
            ..StatsReport::default()
        };
        for p in &self.packs {
            r.stored_bytes += p.file_bytes;
            if p.condemned {
                r.condemned_bytes += p.file_bytes;
                r.condemned_packs += 1;
            } else {
                r.overhead_bytes += PACK_OVERHEAD;
            }
        }
        // A live chunk whose only copy is condemned (rescued by the next
        // gc): its stored bytes are inside condemned_bytes.
        r.garbage_bytes = r.condemned_bytes + r.unreferenced_bytes;
        let archived = self.store.archived_images()?;
        let mut sizes: HashMap<ImageId, u64> =
            self.refs.iter().map(|(_, rec)| (rec.image, rec.size)).collect();
        sizes.extend(self.pins.iter().map(|p| (p.image, p.size)));
        for (id, size) in &sizes {
            if archived.contains(id) {
                r.archived_images += 1;
                r.archived_logical_bytes += size;
            }
        }
        r.dedup_ratio = ratio(r.logical_bytes, r.unique_bytes);
        r.compression_ratio = ratio(r.unique_bytes, r.live_stored_bytes);
        r.total_ratio = ratio(r.logical_bytes, r.stored_bytes);
        r.pack_fill = ratio(r.stored_bytes, r.packs * self.pack_size);
        Ok(r)
    }

    /// Distinct images of `members` (indices into [`Snapshot::refs`]), each
    /// with whether every ref naming it is a member.
    fn members_images(&self, members: &[usize]) -> BTreeMap<ImageId, bool> {
        let mut set_images: BTreeMap<ImageId, u32> = BTreeMap::new();
        for &i in members {
            *set_images.entry(self.refs[i].1.image).or_default() += 1;
        }
        set_images
            .into_iter()
            .map(|(id, k)| (id, self.image_refs.get(&id) == Some(&k)))
            .collect()
    }

    /// The figures of one set of refs, from the view's totals when the set
    /// is all refs, all refs of one name, or one ref; else computed over its
    /// chunks ([`Snapshot::set_totals_exact`]).
    fn set_row(&self, group: String, members: &[usize]) -> Result<DuRow> {
        let images = self.members_images(members);
        let logical = members.iter().map(|&i| self.refs[i].1.size).sum();
        let names: BTreeSet<&str> = members.iter().map(|&i| self.refs[i].0.name.as_str()).collect();
        let totals = if members.len() == self.refs.len() {
            // Every ref: the live chunks but those only pinned images use;
            // exclusive: but those any pinned image uses.
            let pinned = self.pinned_totals()?;
            SetTotals {
                all: minus(self.totals.live, &pinned.exclusive),
                exclusive: minus(self.totals.live, &pinned.all),
            }
        } else if let [name] = names.into_iter().collect::<Vec<_>>()[..] {
            if self.name_refs.get(name) == Some(&members.len()) {
                self.view.name_totals(name)?
            } else if let [(id, inside)] = images.iter().collect::<Vec<_>>()[..] {
                self.image_totals(id, *inside)?
            } else {
                self.set_totals_exact(members)?
            }
        } else {
            self.set_totals_exact(members)?
        };
        Ok(DuRow::from_totals(
            group,
            members.len() as u64,
            images.len() as u64,
            logical,
            &totals,
        ))
    }

    fn image_totals(&self, id: &ImageId, inside: bool) -> Result<SetTotals> {
        let mut t = self.view.image_totals(id)?;
        if !inside {
            // Another ref outside the set names the image: nothing is freed.
            t.exclusive = Default::default();
        }
        Ok(t)
    }

    /// A set's figures computed over its images' chunks: one view lookup per
    /// distinct chunk. `du` answers with the same figures from running totals
    /// where it can; tests hold the two to each other.
    pub fn set_totals_exact(&self, members: &[usize]) -> Result<SetTotals> {
        // Per chunk: raw length, how many of the set's wholly-inside images use it.
        let mut counts: DigestMap<(u32, u32)> = DigestMap::default();
        for (id, inside) in self.members_images(members) {
            for (c, len) in view::image_chunks(self.store, &id)? {
                counts.entry(c).or_insert((len, 0)).1 += u32::from(inside);
            }
        }
        let ids: Vec<ChunkId> = counts.keys().copied().collect();
        let mut t = SetTotals::default();
        for (c, state) in ids.iter().zip(self.view.chunks(&ids)?) {
            let (len, k) = counts[c];
            t.all.add(1, len, state.stored_one());
            if k > 0 && state.images == k {
                t.exclusive.add(1, len, state.stored_one());
            }
        }
        Ok(t)
    }

    /// Indices of the refs `selectors` pick (`NAME` or `NAME:TAG`; all refs
    /// when empty). A selector that picks nothing is a not-found error.
    pub fn select(&self, selectors: &[String]) -> Result<Vec<usize>> {
        if selectors.is_empty() {
            return Ok((0..self.refs.len()).collect());
        }
        let mut out = BTreeSet::new();
        for s in selectors {
            let hit = |t: &TagRef| match s.split_once(':') {
                Some((n, tag)) => t.name == n && t.tag == tag,
                None => t.name == *s,
            };
            let before = out.len();
            out.extend(
                self.refs
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, _))| hit(t))
                    .map(|(i, _)| i),
            );
            if out.len() == before && !self.refs.iter().any(|(t, _)| hit(t)) {
                return Err(Error::not_found(Wanted::RefOrName(s.to_string())));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// `imgstore du`: the selected refs grouped, and all of them as one set.
    pub fn du(&self, selected: &[usize], by: &GroupBy) -> Result<DuReport> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in selected {
            let (t, rec) = &self.refs[i];
            let key = match by {
                GroupBy::Name => t.name.clone(),
                GroupBy::Tag => t.to_string(),
                GroupBy::Label(k) => format!("{k}={}", rec.labels.get(k).map_or("-", String::as_str)),
            };
            groups.entry(key).or_default().push(i);
        }
        Ok(DuReport {
            rows: groups
                .into_iter()
                .map(|(g, m)| self.set_row(g, &m))
                .collect::<Result<_>>()?,
            total: self.set_row("total".into(), selected)?,
            pinned: self.pinned_row()?,
        })
    }

    /// The pinned images as one `du` row; `None` without pins.
    fn pinned_row(&self) -> Result<Option<DuRow>> {
        if self.pins.is_empty() {
            return Ok(None);
        }
        Ok(Some(DuRow::from_totals(
            "pinned".into(),
            0,
            self.pins.len() as u64,
            self.pins.iter().map(|p| p.size).sum(),
            &self.pinned_totals()?,
        )))
    }

    /// `imgstore history NAME`: the name's refs, oldest first.
    pub fn history(&self, name: &str) -> Result<HistoryReport> {
        let archived = self.store.archived_images()?;
        let mut commits = Vec::new();
        for (i, (t, rec)) in self.refs.iter().enumerate().filter(|(_, (t, _))| t.name == name) {
            let one = self.set_row(String::new(), &[i])?;
            commits.push(HistoryRow {
                tag: t.tag.clone(),
                image: rec.image,
                created: rec.created,
                size: rec.size,
                added_chunks: rec.added.chunks,
                added_bytes: rec.added.raw_bytes,
                added_stored_bytes: rec.added.stored_bytes,
                exclusive_stored_bytes: one.exclusive_stored_bytes,
                exclusive_bytes: one.exclusive_bytes,
                tier: if archived.contains(&rec.image) {
                    "archive"
                } else {
                    "bytes"
                },
            });
        }
        if commits.is_empty() {
            return Err(Error::not_found(Wanted::Name(name.to_string())));
        }
        commits.sort_by(|a, b| (a.created, &a.tag).cmp(&(b.created, &b.tag)));
        Ok(HistoryReport {
            name: name.to_string(),
            commits,
        })
    }

    /// Per-name rows with the whole store as the total (for reports).
    pub fn du_all(&self) -> Result<DuReport> {
        self.du(&(0..self.refs.len()).collect::<Vec<_>>(), &GroupBy::Name)
    }
}

impl Store {
    /// `imgstore diff`: chunks and bytes two images have in common.
    pub fn diff(&self, a: &ImageId, b: &ImageId, snapshot: &Snapshot<'_>) -> Result<DiffReport> {
        let chunks = |id: &ImageId| -> Result<HashMap<ChunkId, u32>> {
            Ok(view::image_chunks(self, id)?.into_iter().collect())
        };
        let ca = chunks(a)?;
        let cb = chunks(b)?;
        let ids: Vec<ChunkId> = ca
            .keys()
            .chain(cb.keys().filter(|c| !ca.contains_key(c)))
            .copied()
            .collect();
        let stored: HashMap<ChunkId, u64> = ids
            .iter()
            .zip(snapshot.view.chunks(&ids)?)
            .map(|(c, s)| (*c, s.stored_one()))
            .collect();
        let mut r = DiffReport {
            a: a.to_string(),
            b: b.to_string(),
            ..DiffReport::default()
        };
        for (c, len) in &ca {
            let (len, st) = (u64::from(*len), stored[c]);
            if cb.contains_key(c) {
                r.common_chunks += 1;
                r.common_bytes += len;
                r.common_stored_bytes += st;
            } else {
                r.only_a_chunks += 1;
                r.only_a_bytes += len;
                r.only_a_stored_bytes += st;
            }
        }
        for (c, len) in cb.iter().filter(|(c, _)| !ca.contains_key(c)) {
            r.only_b_chunks += 1;
            r.only_b_bytes += u64::from(*len);
            r.only_b_stored_bytes += stored[c];
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::GcDone;
    use crate::refs::Added;

    #[test]
    fn growth_adds_puts_and_subtracts_gc() {
        let put = |stored| Event {
            added: Some(Added {
                chunks: 1,
                raw_bytes: stored,
                stored_bytes: stored,
            }),
            ..Event::now("put", "a:1".into(), None)
        };
        let events = [
            put(100),
            Event::now("tag", "a:2".into(), None),
            put(50),
            Event::gc(GcDone {
                packs_deleted: 1,
                bytes_freed: 120,
                bytes_repacked: 10,
            }),
        ];
        let g = growth(&events);
        let points: Vec<(&str, i64, u64)> = g
            .iter()
            .map(|p| {
                (
                    p.reference.as_str(),
                    p.added_stored_bytes,
                    p.cumulative_stored_bytes,
                )
            })
            .collect();
        assert_eq!(points, [("a:1", 100, 100), ("a:1", 50, 150), ("gc", -110, 40)]);
    }
}
