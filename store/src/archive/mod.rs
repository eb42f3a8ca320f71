//! The archive tier: an old SIF image stored as what its files hold, not
//! as its gzip blocks.
//!
//! A squashfs compresses each block on its own, so a small change to a
//! library shifts every later block of it and all of them differ as bytes;
//! inflated, the same library differs only where it changed, and the
//! chunker finds the rest. Archiving an image writes its *archive stream*
//! (the image with each gzip block that zlib -9 gives back byte for byte
//! replaced by its inflated bytes) as chunks like any put, and a *recipe*
//! listing those blocks ([`recipe`]). A get deflates them again, in
//! parallel, each checked against the recipe, the whole image against its
//! id. Blocks a hot (not archived) image holds as the same bytes stay as
//! they are: they cost nothing there, and inflated they would be stored a
//! second time.
//!
//! Store objects, beside the image's manifest (which stays: it is the
//! image's metadata and may be another manifest's delta base):
//!
//! ```text
//! archives/xx/<image-hex>.stream   full manifest of the archive stream
//! archives/xx/<image-hex>          the recipe: written last, the commit point
//! ```
//!
//! Safety is the put's: the stream's chunks are written under a session,
//! the recipe is published after the session's lease is checked, and gc
//! marks an image that has a recipe by its stream's chunks instead of its
//! manifest's, so the byte tier's chunks are condemned only once the
//! archive is whole. A get that opened the image before holds its lease.

mod reader;
mod rebuild;
pub mod recipe;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::backend::ReadAt;
use crate::config;
use crate::error::{Error, Object, Result};
use crate::eventlog::{self, Event};
use crate::hold;
use crate::id::{ChunkId, ImageId};
use crate::manifest::{Entry, Manifest, ManifestFile, ManifestMeta};
use crate::ops::put::Ingested;
use crate::ops::reader::{ImageReader, StoreReader};
use crate::progress::Progress;
use crate::refs::{Added, ImageRef};
use crate::session;
use crate::sif::DATA_PARTITION;
use crate::squashfs;
use crate::Store;
pub(crate) use reader::ArchivedView;
use rebuild::{Candidate, Encoder};
pub use recipe::{ArchiveMeta, Recipe, RecipeBlock};

/// Decoded frames the archive's reader keeps (the default is for many
/// readers at random).
const ARCHIVE_CACHE_BYTES: usize = 8 << 20;

/// zstd level of an archive stream's new chunks. Archived images are cold:
/// written once, read seldom, so worth a slower level than a put's. On the
/// inflated bytes of the small corpus's first image (a tar of its files,
/// 101 MiB), zstd -2 gives 31.1 MiB, -9 23.7, -12 23.5, -15 23.3 (its
/// squashfs, gzip -9 by block: 31.4 MiB).
pub const ARCHIVE_ZSTD_LEVEL: i32 = 9;

/// Top-level store directory of archived images.
pub const ARCHIVES_DIR: &str = "archives";
/// Suffix of an archive stream's manifest.
pub const STREAM_SUFFIX: &str = ".stream";

/// The store key of an image's recipe.
pub fn recipe_key(id: &ImageId) -> String {
    id.0.key(ARCHIVES_DIR)
}

/// The store key of an image's archive stream manifest.
pub fn stream_key(id: &ImageId) -> String {
    recipe_key(id) + STREAM_SUFFIX
}

/// Which images `archive` picks by itself (from cron): per name, all but
/// the newest `keep_hot` images, and of those only the ones put more than
/// `older_than` ago.
#[derive(Debug, Clone, Default)]
pub struct ArchivePolicy {
    /// Images of each name that stay hot, newest first.
    pub keep_hot: usize,
    /// Images put within this long stay hot.
    pub older_than: Option<std::time::Duration>,
}

/// An image a policy picks.
#[derive(Debug, Clone, Serialize)]
pub struct Picked {
    /// The image.
    pub image: ImageId,
    /// Its size.
    pub size: u64,
    /// The tags that name it.
    pub refs: Vec<String>,
    /// When its newest tag was put (seconds since the epoch).
    pub created: u64,
}

/// What `archive` did with one image.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// The image.
    pub image: ImageId,
    /// Its size.
    pub size: u64,
    /// `"archive"` if it is archived now (or was), `"bytes"` if it stays.
    pub tier: &'static str,
    /// Why it stays in the byte tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It was archived before this run.
    pub already: bool,
    /// Compressed blocks of its squashfs.
    pub compressed_blocks: u64,
    /// Kept inflated.
    pub inflated_blocks: u64,
    /// Kept as stored: a hot image holds the same bytes.
    pub shared_blocks: u64,
    /// Kept as stored: zlib -9 does not give them back.
    pub other_blocks: u64,
    /// Stored uncompressed by squashfs.
    pub raw_blocks: u64,
    /// Bytes of the archive stream.
    pub stream_size: u64,
    /// What this run added to the store (the byte tier's chunks are freed
    /// by a later gc).
    pub added: Added,
    /// Wall time in seconds, rebuild check included.
    pub seconds: f64,
    /// Time of the rebuild check.
    pub rebuild_seconds: f64,
}

impl ArchiveReport {
    fn new(image: ImageId, size: u64) -> ArchiveReport {
        ArchiveReport {
            image,
            size,
            tier: "bytes",
            reason: None,
            already: false,
            compressed_blocks: 0,
            inflated_blocks: 0,
            shared_blocks: 0,
            other_blocks: 0,
            raw_blocks: 0,
            stream_size: 0,
            added: Added::default(),
            seconds: 0.0,
            rebuild_seconds: 0.0,
        }
    }

    fn stays(mut self, why: impl Into<String>) -> ArchiveReport {
        self.reason = Some(why.into());
        self
    }
}

fn read_exact(img: &ImageReader, offset: u64, buf: &mut [u8]) -> Result<()> {
    let n = img.read_at(offset, buf)?;
    if n < buf.len() {
        return Err(Error::corrupt(
            Object::Image(img.id()),
            "ended before its manifest's size",
        ));
    }
    Ok(())
}

impl Store {
    /// The recipe of image `id`, if it is archived.
    pub fn recipe(&self, id: &ImageId) -> Result<Option<Recipe>> {
        let key = recipe_key(id);
        let Some(bytes) = self.backend.get(&key)? else {
            return Ok(None);
        };
        let r = Recipe::decode(&bytes, &Object::StoreObject(key.clone()))?;
        if r.image != *id {
            return Err(Error::corrupt(
                Object::StoreObject(key),
                format!("the recipe is of image {}", r.image),
            ));
        }
        Ok(Some(r))
    }

    /// Every archived image (one listing of `archives/`).
    pub fn archived_images(&self) -> Result<HashSet<ImageId>> {
        Ok(self
            .backend
            .list(ARCHIVES_DIR)?
            .iter()
            .filter_map(|k| k.rsplit('/').next())
            .filter(|name| !name.ends_with(STREAM_SUFFIX))
            .filter_map(|name| crate::id::Digest::from_hex(name).ok())
            .map(ImageId)
            .collect())
    }

    /// The archive stream's manifest file of `recipe`.
    pub(crate) fn open_stream_manifest(&self, recipe: &Recipe) -> Result<(String, Box<dyn ReadAt>)> {
        let key = stream_key(&recipe.image);
        let file = self.backend.open(&key).map_err(|e| match e {
            Error::Missing { .. } => Error::corrupt(
                Object::Image(recipe.image),
                format!("it is archived but its stream manifest {key} is missing"),
            ),
            other => other,
        })?;
        Ok((key, file))
    }

    /// What the store holds of image `id`: its archive stream's chunks if
    /// it is archived, else its manifest's. What gc marks and verify checks.
    pub fn held(&self, id: &ImageId) -> Result<Manifest> {
        let Some(recipe) = self.recipe(id)? else {
            return self.manifest(id);
        };
        let (key, file) = self.open_stream_manifest(&recipe)?;
        let mut entries = Vec::new();
        let m = ManifestFile::open_each(
            file,
            Object::Manifest { key: key.clone() },
            &mut |base| self.full_manifest_file(base),
            &mut |e| entries.push(e),
        )?;
        if m.head.id.0 != recipe.stream || m.head.size != recipe.stream_size {
            return Err(Error::corrupt(
                Object::Manifest { key },
                "does not describe the stream its recipe names",
            ));
        }
        Ok(Manifest {
            size: m.head.size,
            id: m.head.id,
            entries,
            meta: m.head.meta,
        })
    }

    /// How many entries [`Store::held`] reads (headers only).
    pub fn held_entry_count(&self, id: &ImageId) -> Result<u64> {
        match self.recipe(id)? {
            None => self.manifest_entry_count(id),
            Some(recipe) => {
                let (key, file) = self.open_stream_manifest(&recipe)?;
                crate::manifest::entry_count(file.as_ref(), &Object::Manifest { key })
            }
        }
    }

    /// Rebuilds the archived image of `recipe` through `reader`, handing its
    /// bytes to `out` in order; fails unless every block and the whole
    /// image check out.
    pub fn rebuild_image(
        &self,
        reader: &StoreReader,
        recipe: &Recipe,
        progress: &dyn Progress,
        out: &mut dyn FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let (key, file) = self.open_stream_manifest(recipe)?;
        let stream = reader.open_manifest(&key, file, &ImageId(recipe.stream))?;
        let pool = crate::ops::own_pool("the archive's recompression", "imgstore-deflate")?;
        let mut hasher = blake3::Hasher::new();
        rebuild::rebuild(
            recipe,
            &|o, buf| read_exact(&stream, o, buf),
            &pool,
            &mut |piece| {
                hasher.update(&piece);
                progress.advance(piece.len() as u64);
                out(piece)
            },
        )?;
        let got = ImageId(hasher.finalize().into());
        if got != recipe.image {
            return Err(Error::corrupt(
                Object::Image(recipe.image),
                format!("rebuilt from its archive it hashes to {got}"),
            ));
        }
        Ok(())
    }

    /// The images `policy` archives among those of `names` (every name if
    /// empty), oldest first. An image stays hot if any name keeps it so, or
    /// a pin holds it without a tag; archived ones are not listed.
    pub fn archive_plan(&self, names: &[String], policy: &ArchivePolicy) -> Result<Vec<Picked>> {
        let refs = self.refs(None)?;
        let archived = self.archived_images()?;
        let now = session::now_unix();
        let cutoff = policy.older_than.map(|d| now.saturating_sub(d.as_secs()));
        let mut by_name: std::collections::BTreeMap<&str, Vec<&crate::refs::RefRecord>> = Default::default();
        for (t, r) in &refs {
            by_name.entry(t.name.as_str()).or_default().push(r);
        }
        let mut hot = HashSet::new();
        let mut picked: std::collections::BTreeMap<ImageId, Picked> = Default::default();
        for (name, mut records) in by_name {
            records.sort_by_key(|r| std::cmp::Reverse(r.created));
            let mut seen = HashSet::new();
            for r in records {
                let fresh = seen.len() < policy.keep_hot && seen.insert(r.image);
                let recent = cutoff.is_some_and(|c| r.created >= c);
                if fresh
                    || recent
                    || seen.contains(&r.image)
                    || !(names.is_empty() || names.iter().any(|n| n == name))
                {
                    hot.insert(r.image);
                } else {
                    let p = picked.entry(r.image).or_insert_with(|| Picked {
                        image: r.image,
                        size: r.size,
                        refs: Vec::new(),
                        created: r.created,
                    });
                    p.created = p.created.max(r.created);
                }
            }
        }
        for (t, r) in &refs {
            if let Some(p) = picked.get_mut(&r.image) {
                p.refs.push(t.to_string());
            }
        }
        let mut out: Vec<Picked> = picked
            .into_values()
            .filter(|p| !hot.contains(&p.image) && !archived.contains(&p.image))
            .collect();
        out.sort_by_key(|p| (p.created, p.image));
        Ok(out)
    }

    /// Chunks of the images refs and pins name, other than `except` and
    /// archived ones: a block they hold as it is stays as it is.
    fn hot_chunks(&self, except: &HashSet<ImageId>) -> Result<HashSet<ChunkId>> {
        let images: BTreeSet<ImageId> = self
            .refs(None)?
            .into_iter()
            .map(|(_, r)| r.image)
            .chain(self.pins()?.into_iter().map(|p| p.image))
            .filter(|id| !except.contains(id))
            .collect();
        let archived = self.archived_images()?;
        let mut hot = HashSet::new();
        for id in images.difference(&archived.into_iter().collect()) {
            for e in self.manifest(id)?.entries {
                if let Entry::Chunk { id, .. } = e {
                    hot.insert(id);
                }
            }
        }
        Ok(hot)
    }

    /// Archives the image `image` names: stores its archive stream, checks
    /// that it rebuilds the image, then publishes the recipe. An image that
    /// is not a gzip squashfs (or a SIF of one), or gains nothing, stays in
    /// the byte tier and the report says why; that is not an error.
    ///
    /// Blocks a hot image holds stay as they are; `going` are images being
    /// archived in the same run, which do not count as hot.
    pub fn archive(
        self: &Arc<Self>,
        image: &ImageRef,
        going: &HashSet<ImageId>,
        progress: &dyn Progress,
    ) -> Result<ArchiveReport> {
        let started = Instant::now();
        let id = self.resolve(image)?.id;
        let manifest = self.manifest(&id)?;
        let mut report = ArchiveReport::new(id, manifest.size);
        if let Some(r) = self.recipe(&id)? {
            report.tier = "archive";
            report.already = true;
            report.stream_size = r.stream_size;
            report.inflated_blocks = r.blocks.len() as u64;
            report.compressed_blocks = r.meta.compressed_blocks;
            report.shared_blocks = r.meta.shared_blocks;
            report.other_blocks = r.meta.other_blocks;
            report.raw_blocks = r.meta.raw_blocks;
            return Ok(report);
        }
        // A SIF's squashfs is its data partition; else the image itself.
        let (sq_offset, sq_len) = manifest
            .meta
            .sif
            .as_ref()
            .and_then(|s| s.descriptors.iter().find(|d| d.data_type == DATA_PARTITION))
            .map_or((0, manifest.size), |d| (d.offset, d.size));
        // Read once, front to back: a small frame cache is enough, and
        // keeps the archive inside a put's memory.
        let reader = self.reader_with(ARCHIVE_CACHE_BYTES)?;
        let img = Arc::new(reader.open_id(&id)?);
        let read =
            |o: u64, buf: &mut [u8]| read_exact(&img, sq_offset + o, buf).map_err(std::io::Error::other);
        let layout = match squashfs::layout(sq_len, &read) {
            Ok(l) => l,
            Err(e) => return Ok(report.stays(format!("no squashfs this can read: {e}"))),
        };

        let mut not_hot = going.clone();
        not_hot.insert(id);
        let hot = self.hot_chunks(&not_hot)?;
        let candidates = candidates(&manifest, &layout, (sq_offset, sq_len), &hot, &mut report);
        drop(hot);
        if candidates.is_empty() {
            let why = if report.compressed_blocks == 0 {
                "its squashfs has no compressed blocks"
            } else {
                "a hot image holds every compressed block of it as it is"
            };
            return Ok(report.stays(why));
        }

        let pool = crate::ops::own_pool("the archive's recompression", "imgstore-inflate")?;
        let done = Arc::new(AtomicU64::new(0));
        let counter = done.clone();
        let (encoder, found) = Encoder::new(
            img.clone(),
            candidates,
            layout.superblock.block_size,
            pool,
            Arc::new(move |n| {
                counter.fetch_add(n, Ordering::Relaxed);
            }),
        );
        progress.start("archive", Some(manifest.size));
        let ingested = self.ingest_stream(
            Box::new(encoder),
            &format!("the archive stream of image {id}"),
            ARCHIVE_ZSTD_LEVEL.max(self.config.compression.zstd_level),
            &Relay {
                done: &done,
                to: progress,
            },
        );
        progress.finish();
        let Ingested {
            session,
            id: stream_id,
            size: stream_size,
            entries,
            added,
            ..
        } = ingested?;
        let found = std::mem::take(&mut *found.lock().expect("encoder results"));
        report.other_blocks += found.other;
        report.inflated_blocks = found.blocks.len() as u64;
        report.stream_size = stream_size;
        report.added = added;
        if found.stream_size != stream_size {
            return Err(Error::Internal {
                detail: format!(
                    "archive of {id}: the encoder made {} bytes, the put read {stream_size}",
                    found.stream_size
                ),
            });
        }
        if found.blocks.is_empty() {
            let _ = session.end();
            return Ok(report.stays("no block of it comes back byte for byte from zlib -9"));
        }
        let (user, host) = (session::username(), session::hostname());
        let recipe = Recipe {
            image_size: manifest.size,
            image: id,
            stream_size,
            stream: stream_id.0,
            blocks: found.blocks,
            meta: ArchiveMeta {
                squashfs_offset: sq_offset,
                compressed_blocks: report.compressed_blocks,
                shared_blocks: report.shared_blocks,
                other_blocks: report.other_blocks,
                raw_blocks: report.raw_blocks,
                created: session::now_unix(),
                user,
                host,
                ..ArchiveMeta::zlib9()
            },
        };
        hold::point("archive-after-stream");
        self.backend.put_with(&stream_key(&id), &mut |w| {
            entries.write_manifest(stream_size, &stream_id, &ManifestMeta::default(), w)
        })?;
        hold::point("archive-after-stream-manifest");

        // Rebuilt once, from the store, before anything depends on it.
        let rebuilt = Instant::now();
        reader.refresh()?;
        progress.start("rebuild check", Some(manifest.size));
        let checked = self.rebuild_image(&reader, &recipe, progress, &mut |_| Ok(()));
        progress.finish();
        if let Err(e) = checked {
            let _ = session.end();
            return Err(Error::corrupt(
                Object::Image(id),
                format!("its archived form does not rebuild it, so it stays in the byte tier: {e}"),
            ));
        }
        report.rebuild_seconds = rebuilt.elapsed().as_secs_f64();

        config::add_feature(self.backend.as_ref(), config::ARCHIVE)?;
        hold::point("archive-before-recipe");
        session.check()?;
        self.backend.put(&recipe_key(&id), &recipe.encode())?;
        hold::point("archive-after-recipe");
        let mut event = Event::now("archive", image.to_string(), Some(id));
        event.added = Some(added);
        if let Err(e) = eventlog::append(self.backend.as_ref(), &event) {
            tracing::warn!("archive is committed but its log entry was not written: {e}");
        }
        if let Err(e) = session.end() {
            tracing::warn!("archive is committed but its session was not ended: {e}");
        }
        report.tier = "archive";
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// The compressed blocks of `layout` (a squashfs at `at` = (offset, length)
/// in the image `manifest` describes) to keep inflated: those whose chunks
/// no hot image holds. Counts every block in `report`.
fn candidates(
    manifest: &Manifest,
    layout: &squashfs::Layout,
    (sq_offset, sq_len): (u64, u64),
    hot: &HashSet<ChunkId>,
    report: &mut ArchiveReport,
) -> Vec<Candidate> {
    let mut starts = Vec::with_capacity(manifest.entries.len());
    let mut at = 0;
    for e in &manifest.entries {
        starts.push(at);
        at += e.len();
    }
    let held_hot = |from: u64, to: u64| {
        let first = starts.partition_point(|&s| s <= from).saturating_sub(1);
        (first..manifest.entries.len())
            .take_while(|&i| starts[i] < to)
            .all(|i| match &manifest.entries[i] {
                Entry::Chunk { id, .. } => hot.contains(id),
                Entry::Zero { .. } => true,
            })
    };
    let mut candidates = Vec::new();
    let mut end = 0;
    for b in &layout.blocks {
        let offset = sq_offset + b.offset;
        if !b.compressed {
            report.raw_blocks += 1;
            continue;
        }
        report.compressed_blocks += 1;
        // A block the layout places oddly is left as it is.
        if offset < end || offset + u64::from(b.stored) > sq_offset + sq_len {
            report.other_blocks += 1;
            continue;
        }
        end = offset + u64::from(b.stored);
        if !hot.is_empty() && held_hot(offset, end) {
            report.shared_blocks += 1;
        } else {
            candidates.push(Candidate {
                offset,
                stored: b.stored,
            });
        }
    }
    candidates
}

/// Progress of an archive: image bytes the encoder has read, not the
/// stream bytes the put's first stage counts.
struct Relay<'a> {
    done: &'a AtomicU64,
    to: &'a dyn Progress,
}

impl Progress for Relay<'_> {
    fn start(&self, _what: &str, _total: Option<u64>) {}

    fn advance(&self, _n: u64) {
        let n = self.done.swap(0, Ordering::Relaxed);
        if n > 0 {
            self.to.advance(n);
        }
    }

    fn finish(&self) {
        self.advance(0);
    }
}
