//! Reading and moving refs: resolve, list, tag, rm, and the event log.

use std::fmt::Write as _;

use crate::backend::{key_name, Backend, Blocks, ReadAt};
use crate::error::{Error, Object, Result, Wanted};
use crate::eventlog::{self, Event};
use crate::id::{Digest, ImageId};
use crate::manifest::{self, Manifest, ManifestFile, MANIFESTS_DIR};
use crate::refs::{self, check_name, ImageRef, RefRecord, TagRef, REFS_DIR};
use crate::session;
use crate::Store;

/// An image found from a user's ref.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The image.
    pub id: ImageId,
    /// The ref it was found through, when it was named by `name:tag`.
    pub tag: Option<TagRef>,
    /// That ref's record.
    pub record: Option<RefRecord>,
}

impl Store {
    /// Reads a ref's record; `Ok(None)` if the ref does not exist.
    pub fn read_ref(&self, r: &TagRef) -> Result<Option<RefRecord>> {
        let key = r.key();
        self.backend
            .get(&key)?
            .map(|b| {
                RefRecord::parse(
                    &b,
                    &Object::Ref {
                        key: key.to_owned(),
                        tag: Some(r.to_string()),
                    },
                )
            })
            .transpose()
    }

    /// Finds the image a user's ref names.
    pub fn resolve(&self, image: &ImageRef) -> Result<Resolved> {
        match image {
            ImageRef::Tag(t) => {
                let record = self
                    .read_ref(t)?
                    .ok_or_else(|| Error::not_found(Wanted::Ref(t.to_string())))?;
                Ok(Resolved {
                    id: record.image,
                    tag: Some(t.clone()),
                    record: Some(record),
                })
            }
            ImageRef::Id(prefix) => {
                let shard = &prefix[..2];
                let mut matches: Vec<String> = self
                    .backend
                    .list(&format!("{MANIFESTS_DIR}/{shard}"))?
                    .iter()
                    .map(|k| key_name(k).trim_end_matches(manifest::DELTA_SUFFIX).to_string())
                    .filter(|n| n.starts_with(prefix.as_str()))
                    .collect();
                // An image may have a full manifest and a delta.
                matches.dedup();
                match matches.as_slice() {
                    [] => Err(Error::not_found(Wanted::Image(image.to_string()))),
                    [one] => Ok(Resolved {
                        id: ImageId(Digest::from_hex(one).map_err(|_| {
                            Error::corrupt(
                                Object::Manifest {
                                    key: format!("{MANIFESTS_DIR}/{shard}/{one}"),
                                },
                                "file name is not an image id",
                            )
                        })?),
                        tag: None,
                        record: None,
                    }),
                    many => {
                        let mut candidates = String::new();
                        for m in many.iter().take(5) {
                            let _ = write!(candidates, "blake3:{} ", &m[..16]);
                        }
                        Err(Error::Ambiguous {
                            prefix: image.to_string(),
                            candidates: format!("{}({} images)", candidates, many.len()),
                        })
                    }
                }
            }
        }
    }

    /// Reads and checks an image's manifest (and a delta's base), all its
    /// entries in memory.
    pub fn manifest(&self, id: &ImageId) -> Result<Manifest> {
        let (key, file) = self.open_manifest(id)?;
        let mut entries = Vec::new();
        let m = ManifestFile::open_each(
            file,
            Object::Manifest { key: key.to_owned() },
            &mut |base| self.full_manifest_file(base),
            &mut |e| entries.push(e),
        )?;
        let head = described(m, id, &key)?.head;
        Ok(Manifest {
            size: head.size,
            id: head.id,
            entries,
            meta: head.meta,
        })
    }

    /// Opens and checks an image's manifest (and a delta's base), to read
    /// its entries a window at a time (see [`ManifestFile`]).
    pub fn manifest_file(&self, id: &ImageId) -> Result<ManifestFile> {
        let (key, file) = self.open_manifest(id)?;
        let file = self.in_blocks(file);
        let m = ManifestFile::open(file, Object::Manifest { key: key.to_owned() }, &mut |base| {
            self.full_manifest_file(base)
        })?;
        described(m, id, &key)
    }

    /// Opens and checks an image's manifest, refusing a delta: a delta's
    /// base is always a full manifest.
    pub(crate) fn full_manifest_file(&self, id: &ImageId) -> Result<ManifestFile> {
        let (key, file) = self.open_full_manifest(id)?;
        let file = self.in_blocks(file);
        let m = ManifestFile::open_full(file, Object::Manifest { key: key.to_owned() })?;
        described(m, id, &key)
    }

    /// The image whose full manifest an image's manifest is a delta
    /// against (reads only its header; unchecked).
    pub fn manifest_base(&self, id: &ImageId) -> Result<Option<ImageId>> {
        let (key, file) = self.open_manifest(id)?;
        manifest::delta::base_of(file.as_ref(), &Object::Manifest { key: key.to_owned() })
    }

    /// How many entries an image's manifest has (reads only its header).
    pub fn manifest_entry_count(&self, id: &ImageId) -> Result<u64> {
        let (key, file) = self.open_manifest(id)?;
        manifest::entry_count(file.as_ref(), &Object::Manifest { key: key.to_owned() })
    }

    /// The image's full manifest, or else its delta (a full one wins:
    /// it may have replaced a damaged delta).
    pub(crate) fn open_manifest(&self, id: &ImageId) -> Result<(String, Box<dyn ReadAt>)> {
        let key = manifest::key(id);
        match self.backend.open(&key) {
            Ok(file) => return Ok((key, file)),
            Err(Error::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
        let delta = manifest::delta_key(id);
        match self.backend.open(&delta) {
            Ok(file) => Ok((delta, file)),
            Err(Error::Missing { .. }) => Err(Error::corrupt(
                Object::Image(*id),
                format!("manifest {key} is missing"),
            )),
            Err(e) => Err(e),
        }
    }

    /// The image's full manifest only: what a delta needs as its base.
    fn open_full_manifest(&self, id: &ImageId) -> Result<(String, Box<dyn ReadAt>)> {
        let key = manifest::key(id);
        let file = self.backend.open(&key).map_err(|e| match e {
            Error::Missing { .. } => Error::corrupt(Object::Image(*id), format!("manifest {key} is missing")),
            other => other,
        })?;
        Ok((key, file))
    }

    /// A manifest read whole, in blocks where each read is a request
    /// (object storage): a delta reads its base a run at a time. Not for
    /// a look at a header (`manifest_base`, `manifest_entry_count`).
    fn in_blocks(&self, file: Box<dyn ReadAt>) -> Box<dyn ReadAt> {
        match self.backend.requests() {
            Some(_) => Box::new(Blocks::new(file)),
            None => file,
        }
    }

    /// Every ref, sorted, optionally only those of one name (and the names below it).
    pub fn refs(&self, name: Option<&str>) -> Result<Vec<(TagRef, RefRecord)>> {
        list_refs(self.backend.as_ref(), name)
    }

    /// Points `new` at the image `image` names. The image's manifest must exist.
    pub fn tag(&self, image: &ImageRef, new: &TagRef) -> Result<RefRecord> {
        let resolved = self.resolve(image)?;
        let manifest = self.manifest(&resolved.id)?;
        if resolved.record.is_none() {
            self.check_restorable(&manifest)?;
        }
        let previous = self.read_ref(new)?.map(|r| r.image).filter(|p| *p != resolved.id);
        let mut record = resolved.record.unwrap_or_else(|| RefRecord {
            format: "imgstore-ref".into(),
            version: 1,
            image: resolved.id,
            size: manifest.size,
            created: 0,
            user: String::new(),
            host: String::new(),
            message: None,
            labels: Default::default(),
            deffile: None,
            added: Default::default(),
        });
        record.created = session::now_unix();
        record.user = session::username();
        record.host = session::hostname();
        record.added = Default::default();
        self.backend.put(&new.key(), &record.to_bytes())?;
        let mut event = Event::now("tag", new.to_string(), Some(resolved.id));
        event.previous = previous;
        eventlog::append(self.backend.as_ref(), &event)?;
        Ok(record)
    }

    /// An image named only by id may have lost its ref, and GC may have
    /// condemned or deleted its chunks: tag it only if every chunk is in a
    /// pack that is not condemned.
    pub(crate) fn check_restorable(&self, m: &Manifest) -> Result<()> {
        crate::index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())?;
        let lookup = crate::index::Reader::open(&self.index_dir)?;
        let condemned = self.condemned_packs()?;
        let ids: Vec<_> = m
            .entries
            .iter()
            .filter_map(|e| match e {
                crate::manifest::Entry::Chunk { id, .. } => Some(*id),
                crate::manifest::Entry::Zero { .. } => None,
            })
            .collect();
        for (id, loc) in ids.iter().zip(lookup.lookup(&ids)?) {
            if loc.is_none_or(|l| condemned.contains(&l.pack)) {
                return Err(Error::BadInput {
                    reason: format!(
                        "image {} has no ref and its chunk {id} is condemned or deleted by gc; put the image again",
                        m.id
                    ),
                });
            }
        }
        Ok(())
    }

    /// Removes a ref. The image's data stays until garbage collection.
    pub fn rm(&self, r: &TagRef) -> Result<RefRecord> {
        self.rm_as(r, "rm")
    }

    /// Removes a ref, logging it as `action` (`rm` or `prune`).
    pub(crate) fn rm_as(&self, r: &TagRef, action: &str) -> Result<RefRecord> {
        let record = self
            .read_ref(r)?
            .ok_or_else(|| Error::not_found(Wanted::Ref(r.to_string())))?;
        self.backend.delete(&r.key())?;
        eventlog::append(
            self.backend.as_ref(),
            &Event::now(action, r.to_string(), Some(record.image)),
        )?;
        Ok(record)
    }

    /// The event log, oldest first, optionally only events about one name.
    pub fn events(&self, name: Option<&str>) -> Result<Vec<Event>> {
        if let Some(n) = name {
            check_name(n)?;
        }
        let mut events = eventlog::read_all(self.backend.as_ref())?;
        if let Some(n) = name {
            events.retain(|e| e.reference.split_once(':').is_some_and(|(rn, _)| rn == n));
        }
        Ok(events)
    }
}

/// Every ref in the store behind `backend`, sorted, optionally only those of
/// one name (and the names below it). Needs no config, so `verify` can still
/// name the images of a store whose config is damaged. A tag file whose
/// path is not a valid `name:tag` fails the listing (`Error::Corrupt`).
pub fn list_refs(backend: &dyn Backend, name: Option<&str>) -> Result<Vec<(TagRef, RefRecord)>> {
    if let Some(n) = name {
        check_name(n)?;
    }
    let start = match name {
        Some(n) => format!("{REFS_DIR}/{n}"),
        None => REFS_DIR.to_string(),
    };
    let mut named = Vec::new();
    for key in backend.list(&start)? {
        let t = tag_of_key(&key)?;
        named.push((key, t));
    }
    let read = |(key, t): &(String, TagRef)| read_ref_at(backend, key, t);
    let mut out: Vec<(TagRef, RefRecord)> = parallel_map(&named, read)?.into_iter().flatten().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The ref a key under `refs/` names. A ref that cannot be named cannot be
/// marked: refuse, so gc never deletes the chunks of an image it failed to see.
pub(crate) fn tag_of_key(key: &str) -> Result<TagRef> {
    let comps: Vec<String> = key.split('/').skip(1).map(str::to_string).collect();
    refs::ref_from_path(&comps)
        .filter(|t| TagRef::parse(&t.to_string()).is_ok())
        .ok_or_else(|| {
            Error::corrupt(
                Object::Ref {
                    key: key.to_owned(),
                    tag: None,
                },
                "file name is not a valid name:tag; rename it to one (or move it out of refs/) \
                 before gc and prune can run",
            )
        })
}

/// Reads and parses the ref file `key` (of ref `t`); `None` if it is gone.
pub(crate) fn read_ref_at(
    backend: &dyn Backend,
    key: &str,
    t: &TagRef,
) -> Result<Option<(TagRef, RefRecord)>> {
    let Some(bytes) = backend.get(key)? else {
        return Ok(None);
    };
    let what = Object::Ref {
        key: key.to_owned(),
        tag: Some(t.to_string()),
    };
    Ok(Some((t.clone(), RefRecord::parse(&bytes, &what)?)))
}

/// Threads [`parallel_map`] reads with: object storage answers many small
/// GETs at once, one after another they cost a round trip each.
const READERS: usize = 16;

/// `f` over `items` on up to [`READERS`] threads (on this one for a few
/// items, or when no thread can start), results in order; the first error wins.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    if items.len() < 2 * READERS {
        return items.iter().map(&f).collect();
    }
    let part = items.len().div_ceil(READERS);
    let f = &f;
    let parts: Vec<Result<Vec<R>>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(part)
            .map(|c| {
                let run = move || c.iter().map(f).collect::<Result<Vec<R>>>();
                std::thread::Builder::new()
                    .name("imgstore-read".into())
                    .spawn_scoped(s, run)
                    .map_err(|_| c)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                // No thread: read this part here.
                Err(c) => c.iter().map(f).collect(),
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// `m`, if it is the manifest of `id` (its name says so; its header must too).
fn described(m: ManifestFile, id: &ImageId, key: &str) -> Result<ManifestFile> {
    if m.head.id != *id {
        return Err(Error::corrupt(
            Object::Manifest { key: key.to_owned() },
            format!("describes image {}", m.head.id),
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_order_and_the_first_error() {
        let items: Vec<u32> = (0..1000).collect();
        let out = parallel_map(&items, |i| Ok(i * 2)).unwrap();
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let err = parallel_map(&items, |&i| {
            if i % 300 == 299 {
                Err(Error::BadInput {
                    reason: format!("{i}"),
                })
            } else {
                Ok(i)
            }
        });
        assert!(matches!(err, Err(Error::BadInput { reason }) if reason == "299"));
        assert_eq!(parallel_map(&items[..3], |i| Ok(*i)).unwrap(), [0, 1, 2]);
    }
}
