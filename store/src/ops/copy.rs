//! Copying images between stores (a directory and a bucket, or two of
//! either): each image is read from the source and put into the
//! destination, so the destination stores only the chunks it lacks, and
//! keeps the image's id, tags, SIF metadata and its ref's provenance.
//!
//! A copy killed midway is resumed by running it again: the packs it
//! already wrote are in the destination's index, so the next run finds
//! those chunks and sends only the rest. A ref is written last, after the
//! bytes hash to the source's id, so no half-copied image is ever visible.

use std::time::Instant;

use serde::Serialize;

use crate::backend::Requests;
use crate::error::{Error, Result, Wanted};
use crate::id::ImageId;
use crate::ops::get::Output;
use crate::ops::put::{Copied, Input, PutOptions};
use crate::ops::refs::list_refs;
use crate::progress::Progress;
use crate::refs::{Added, ImageRef, RefRecord, TagRef};
use crate::Store;

/// One ref of a copy and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedRef {
    /// `name:tag`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its image.
    pub image: ImageId,
    /// Image size in bytes.
    pub size: u64,
    /// `copied`, `present` (the destination's ref names the same image
    /// already), or with `--dry-run` `would copy`.
    pub status: &'static str,
    /// Chunks the destination lacked and stored; unknown (`null`) for a
    /// dry run: each store cuts chunks with its own seed, so what is new
    /// is known only once the image is cut again.
    pub new_chunks: Option<u64>,
    /// Their raw bytes.
    pub new_bytes: Option<u64>,
    /// Bytes the copy added to the destination's packs (compressed).
    pub stored_bytes: Option<u64>,
}

/// A pin of the source and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedPin {
    /// The pinned image.
    pub image: ImageId,
    /// The pin's reason.
    pub reason: String,
    /// `pinned` (now pinned here too), `present` (was pinned here), with
    /// `--dry-run` `would pin`, or `not copied`: no ref the copy took names
    /// the image, so it is not in this store (copy it under a tag first).
    pub status: &'static str,
}

/// What a copy did, or with `--dry-run` would do.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// Every ref asked for, in order.
    pub refs: Vec<CopiedRef>,
    /// The source's pins of the images asked for (every pin when every
    /// ref was): pinned here once their image is.
    pub pins: Vec<CopiedPin>,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Requests made to the source's object storage (absent for a directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_requests: Option<Requests>,
    /// Requests made to the destination's object storage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<Requests>,
}

impl Store {
    /// Copies the images `names` names from `src` into this store: each
    /// is `name:tag`, or a `name` for all its tags; none means every ref.
    /// With `dry_run`, writes nothing and reports which images it would copy.
    pub fn copy_from(
        &self,
        src: &Store,
        names: &[String],
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<CopyReport> {
        let started = Instant::now();
        let (src_before, before) = (src.backend.requests(), self.backend.requests());
        let wanted = select(src, names)?;
        let mut refs = Vec::new();
        for (tag, record) in wanted {
            let present = self.read_ref(&tag)?.is_some_and(|r| r.image == record.image);
            let mut done = CopiedRef {
                reference: tag.to_string(),
                image: record.image,
                size: record.size,
                status: if present {
                    "present"
                } else if dry_run {
                    "would copy"
                } else {
                    "copied"
                },
                new_chunks: present.then_some(0),
                new_bytes: present.then_some(0),
                stored_bytes: present.then_some(0),
            };
            if !present && !dry_run {
                let added = self.copy_image(src, &tag, record, progress)?;
                done.new_chunks = Some(added.chunks);
                done.new_bytes = Some(added.raw_bytes);
                done.stored_bytes = Some(added.stored_bytes);
            }
            refs.push(done);
        }
        let pins = self.copy_pins(src, &refs, names.is_empty(), dry_run)?;
        Ok(CopyReport {
            refs,
            pins,
            dry_run,
            seconds: started.elapsed().as_secs_f64(),
            source_requests: src.requests_since(src_before),
            requests: self.requests_since(before),
        })
    }

    /// Pins here what `src` pins among the images `refs` copied (all of
    /// `src`'s pins when `all`): a pin is part of the store.
    fn copy_pins(&self, src: &Store, refs: &[CopiedRef], all: bool, dry_run: bool) -> Result<Vec<CopiedPin>> {
        let mut out = Vec::new();
        for pin in src.pins()? {
            let copied = refs.iter().any(|r| r.image == pin.image);
            if !copied && !all {
                continue;
            }
            let status = if !copied {
                "not copied"
            } else if self.pin_of(&pin.image)?.is_some() {
                "present"
            } else if dry_run {
                "would pin"
            } else {
                self.pin(&ImageRef::Id(pin.image.0.to_hex()), &pin.reason)?;
                "pinned"
            };
            out.push(CopiedPin {
                image: pin.image,
                reason: pin.reason,
                status,
            });
        }
        Ok(out)
    }

    /// Streams the image of `record` out of `src` and into this store under
    /// `tag`; returns what it added to this store.
    fn copy_image(
        &self,
        src: &Store,
        tag: &TagRef,
        record: RefRecord,
        progress: &dyn Progress,
    ) -> Result<Added> {
        let meta = src.manifest_file(&record.image)?.head.meta;
        let copied = Copied { meta, record };
        let (reader, writer) = std::io::pipe().map_err(|e| Error::Internal {
            detail: format!("cannot make a pipe for the copy: {e}"),
        })?;
        let image = ImageRef::parse(&copied.record.image.to_string())?;
        std::thread::scope(|s| {
            let reading = std::thread::Builder::new()
                .name("imgstore-copy".into())
                .spawn_scoped(s, move || {
                    src.get(&image, Output::Stream(Box::new(writer)), &crate::NoProgress)
                })
                .map_err(|e| Error::threads("the copy's reader", e))?;
            // A source that fails midway ends the stream early; the put
            // then refuses the short image (its hash is not the id).
            let put = self.put_as(
                tag,
                Input::Stream(Box::new(reader)),
                &PutOptions::default(),
                Some(&copied),
                progress,
            );
            let read = reading.join().map_err(|_| Error::Internal {
                detail: "the copy's reader panicked".into(),
            })?;
            read?;
            Ok(put?.added)
        })
    }
}

/// The refs `names` selects in `src`, in order, each once.
fn select(src: &Store, names: &[String]) -> Result<Vec<(TagRef, RefRecord)>> {
    if names.is_empty() {
        return list_refs(src.backend.as_ref(), None);
    }
    let mut out: Vec<(TagRef, RefRecord)> = Vec::new();
    for name in names {
        let found = if name.contains(':') {
            let tag = TagRef::parse(name)?;
            let record = src
                .read_ref(&tag)?
                .ok_or_else(|| Error::not_found(Wanted::Ref(format!("{tag} in the source store"))))?;
            vec![(tag, record)]
        } else {
            let all = list_refs(src.backend.as_ref(), Some(name))?;
            if all.is_empty() {
                return Err(Error::not_found(Wanted::Name(format!(
                    "{name} in the source store"
                ))));
            }
            all
        };
        for (tag, record) in found {
            if !out.iter().any(|(t, _)| *t == tag) {
                out.push((tag, record));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::{Input, NoProgress, PutOptions, Store, TagRef};

    fn put(store: &Store, tag: &str, data: &[u8]) {
        let input = Input::Stream(Box::new(std::io::Cursor::new(data.to_vec())));
        store
            .put(
                &TagRef::parse(tag).unwrap(),
                input,
                &PutOptions::default(),
                &NoProgress,
            )
            .unwrap();
    }

    /// A dry run writes nothing; a copy stores only what the destination
    /// lacks; a second copy finds the ref present.
    #[test]
    fn a_copy_sends_only_what_the_destination_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let open = |n: &str| {
            Store::init(
                &dir.path().join(n),
                Default::default(),
                Some(dir.path().join(format!("{n}-idx"))),
            )
            .unwrap()
        };
        let (src, dest) = (open("src"), open("dest"));
        let random = |n: usize, seed: u64| {
            let mut v = vec![0u8; n];
            crate::testdata::Rng::new(seed).fill(&mut v);
            v
        };
        let shared = random(4 << 20, 1);
        let mut both = random(1 << 20, 2);
        both.extend_from_slice(&shared);
        put(&src, "lab/a:v1", &both);
        put(&dest, "lab/other:v1", &shared);
        let dry = dest.copy_from(&src, &[], true, &NoProgress).unwrap();
        assert_eq!(dry.refs[0].status, "would copy");
        assert!(dest
            .read_ref(&TagRef::parse("lab/a:v1").unwrap())
            .unwrap()
            .is_none());
        let done = dest.copy_from(&src, &[], false, &NoProgress).unwrap();
        assert_eq!(done.refs[0].status, "copied");
        // The stores cut with different seeds; the copy cuts the image
        // again with the destination's, and finds the 4 MiB it holds.
        let stored = done.refs[0].stored_bytes.unwrap();
        assert!(
            stored < 2 << 20,
            "stored {stored} bytes of which 4 MiB were in the destination"
        );
        let again = dest.copy_from(&src, &[], false, &NoProgress).unwrap();
        assert_eq!(again.refs[0].status, "present");
    }
}
