//! The pull side: manifests, blobs, tag lists and the catalog. Runs on
//! blocking threads (the store's calls block, and on object storage they
//! run on the backend's own runtime).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::header::{HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use imgstore_store::oci::ImageDigest;
use imgstore_store::{Digest, ImageId, TagRef};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::http::{empty, full, ChannelBody, Code, OciError, Piece, Resp, Result};
use super::route::Reference;
use super::State;

/// The manifest media type this server writes and accepts.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// A SIF image as a layer (what Apptainer's `oras://` pulls).
pub const SIF_LAYER_TYPE: &str = "application/vnd.sylabs.sif.layer.v1.sif";
/// The SIF config media type; its blob is `{}`.
pub const SIF_CONFIG_TYPE: &str = "application/vnd.sylabs.sif.config.v1+json";
/// The config blob of every derived manifest.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Bytes a blob is read and sent in: large enough that a read spans many
/// frames (decoded in parallel), small enough that a slow client holds
/// little (two pieces queued and one being read).
const PIECE: usize = 4 << 20;
const PIECES_QUEUED: usize = 2;
/// How long a client may take to accept the next piece of a blob before the
/// transfer is given up (a stalled reader holds an image reader until then).
const SEND_IDLE: std::time::Duration = std::time::Duration::from_secs(120);

/// Sends a piece from a blocking producer; false once the client is gone
/// or has stalled past [`SEND_IDLE`] (the body then ends short, which cuts
/// the connection).
fn send(tx: &tokio::sync::mpsc::Sender<io::Result<Piece>>, piece: io::Result<Piece>) -> bool {
    let handle = tokio::runtime::Handle::current();
    matches!(
        handle.block_on(tokio::time::timeout(SEND_IDLE, tx.send(piece))),
        Ok(Ok(()))
    )
}

/// sha256 of [`EMPTY_CONFIG`].
pub fn empty_config_digest() -> Digest {
    Digest(Sha256::digest(EMPTY_CONFIG).into())
}

fn oci_digest(d: &Digest) -> String {
    format!("sha256:{d}")
}

#[derive(Serialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<&'static str, String>>,
}

#[derive(Serialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The manifest served for an image put with `imgstore put` (or a pushed
/// tag moved since by `put`/`tag`): a function of the name and the image's
/// sha256 and size only, so the same bytes (and digest) every time.
pub fn derived_manifest(name: &str, rec: &ImageDigest) -> Vec<u8> {
    let title = format!("{}.sif", name.rsplit('/').next().unwrap_or(name));
    let m = Manifest {
        schema_version: 2,
        media_type: MANIFEST_TYPE,
        config: Descriptor {
            media_type: SIF_CONFIG_TYPE,
            digest: oci_digest(&empty_config_digest()),
            size: EMPTY_CONFIG.len() as u64,
            annotations: None,
        },
        layers: vec![Descriptor {
            media_type: SIF_LAYER_TYPE,
            digest: format!("sha256:{}", rec.sha256),
            size: rec.size,
            annotations: Some(BTreeMap::from([("org.opencontainers.image.title", title)])),
        }],
    };
    serde_json::to_vec(&m).expect("manifest serializes")
}

impl State {
    /// Image `id`'s sha256 record; the first time, computed by streaming
    /// the image once (checked chunk by chunk) and kept in the store. One
    /// thread computes while others asking for the same image wait.
    pub fn image_digest(&self, id: &ImageId) -> Result<ImageDigest> {
        if let Some(rec) = self.store.oci_image_digest(id)? {
            return Ok(rec);
        }
        let lock = self
            .digesting
            .lock()
            .expect("digest locks")
            .entry(*id)
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        let _one = lock.lock().expect("digest lock");
        let rec = self.compute_digest(id);
        self.digesting.lock().expect("digest locks").remove(id);
        rec
    }

    /// The record of image `id`, computed unless another thread just did.
    fn compute_digest(&self, id: &ImageId) -> Result<ImageDigest> {
        let started = std::time::Instant::now();
        let rec = self.store.image_sha256(id, &imgstore_store::NoProgress)?;
        tracing::info!(
            "sha256 of image {id} ({} bytes) known in {:.2} s",
            rec.size,
            started.elapsed().as_secs_f64()
        );
        Ok(rec)
    }

    /// The tags of exactly `name` and the images they name.
    fn tags_of(&self, name: &str) -> Result<Vec<(TagRef, ImageId)>> {
        Ok(self
            .store
            .refs(Some(name))?
            .into_iter()
            .filter(|(r, _)| r.name == name)
            .map(|(r, rec)| (r, rec.image))
            .collect())
    }

    /// The manifest `tag` is served with: the pushed one while the tag still
    /// names the image it was pushed with, else the derived one.
    fn manifest_of_tag(
        &self,
        tag: &TagRef,
        image: &ImageId,
        compute: bool,
    ) -> Result<Option<(Digest, Vec<u8>)>> {
        if let Some(link) = self.store.oci_tag_link(tag)? {
            if link.image == *image {
                let d = Digest::from_hex(&link.manifest)?;
                if let Some(bytes) = self.store.oci_manifest(&d)? {
                    return Ok(Some((d, bytes)));
                }
            }
        }
        let rec = if compute {
            self.image_digest(image)?
        } else {
            match self.store.oci_image_digest(image)? {
                Some(r) => r,
                None => return Ok(None),
            }
        };
        let bytes = derived_manifest(&tag.name, &rec);
        Ok(Some((Digest(Sha256::digest(&bytes).into()), bytes)))
    }

    /// GET or HEAD of a manifest by tag or digest.
    pub fn manifest(&self, name: &str, reference: &Reference, head: bool) -> Result<Resp> {
        let found = match reference {
            Reference::Tag(tag) => {
                let tag = TagRef {
                    name: name.to_string(),
                    tag: tag.clone(),
                };
                match self.store.read_ref(&tag)? {
                    Some(rec) => self.manifest_of_tag(&tag, &rec.image, true)?,
                    None => None,
                }
            }
            // By digest: one of the name's tags must be served with it (a
            // digest is never looked up store-wide, so names stay apart).
            // Images never asked for by tag have no sha256 yet and are skipped.
            Reference::Digest(want) => {
                let mut found = None;
                for (tag, image) in self.tags_of(name)? {
                    if let Some((d, bytes)) = self.manifest_of_tag(&tag, &image, false)? {
                        if d == *want {
                            found = Some((d, bytes));
                            break;
                        }
                    }
                }
                found
            }
        };
        let Some((digest, bytes)) = found else {
            return Err(OciError::new(
                Code::ManifestUnknown,
                format!("{name} has no manifest {}", show(reference)),
            ));
        };
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| MANIFEST_TYPE.to_string());
        let len = bytes.len();
        let mut r = Response::new(if head { empty() } else { full(bytes) });
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&media_type).unwrap_or(HeaderValue::from_static(MANIFEST_TYPE)),
        );
        h.insert(CONTENT_LENGTH, len.into());
        h.insert("docker-content-digest", header(&oci_digest(&digest)));
        Ok(r)
    }

    /// Where a blob's bytes come from, if `name` may read it.
    pub fn blob_source(&self, name: &str, digest: &Digest) -> Result<Option<Blob>> {
        if *digest == empty_config_digest() {
            return Ok(Some(Blob::Bytes(Bytes::from_static(EMPTY_CONFIG))));
        }
        if let Some(rec) = self.store.oci_image_by_sha256(digest)? {
            // Only an image one of the name's tags names: a digest does
            // not reach across names.
            if self.tags_of(name)?.iter().any(|(_, i)| *i == rec.image) {
                return Ok(Some(Blob::Image(rec)));
            }
        }
        if let Some(bytes) = self.store.oci_blob(digest)? {
            return Ok(Some(Blob::Bytes(bytes.into())));
        }
        let staged = self.staged(name, digest);
        if let Ok(m) = std::fs::metadata(&staged) {
            return Ok(Some(Blob::Staged(m.len())));
        }
        Ok(None)
    }

    /// GET or HEAD of a blob; `range` is the request's Range header.
    pub fn blob(&self, name: &str, digest: &Digest, range: Option<&str>, head: bool) -> Result<Resp> {
        let Some(source) = self.blob_source(name, digest)? else {
            return Err(OciError::new(
                Code::BlobUnknown,
                format!("{name} has no blob {}", oci_digest(digest)),
            ));
        };
        let size = match &source {
            Blob::Bytes(b) => b.len() as u64,
            Blob::Image(rec) => rec.size,
            Blob::Staged(n) => *n,
        };
        let (start, end) = match range {
            None => (0, size),
            Some(r) => parse_range(r, size).ok_or_else(|| {
                OciError::new(Code::RangeInvalid, format!("range {r:?} is not within 0-{size}"))
            })?,
        };
        let len = end - start;
        let body = if head || len == 0 {
            empty()
        } else {
            match source {
                Blob::Bytes(b) => full(b.slice(start as usize..end as usize)),
                Blob::Staged(_) => stream_file(self.staged(name, digest), start, end),
                Blob::Image(rec) => self.stream_image(&rec.image, start, end)?,
            }
        };
        let mut r = Response::new(body);
        if range.is_some() {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut().insert(
                CONTENT_RANGE,
                header(&format!("bytes {start}-{}/{size}", end.max(1) - 1)),
            );
        }
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        h.insert(CONTENT_LENGTH, len.into());
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert("docker-content-digest", header(&oci_digest(digest)));
        Ok(r)
    }

    /// A body with bytes `start..end` of image `id`, read by a blocking
    /// task a piece ahead of the client. A piece's chunks are decoded and
    /// checked in parallel on the reader's pool, and sent as ranges of the
    /// decoded frames (no copy). A chunk that fails its check ends the body
    /// with an error (the connection is cut); a client that goes away ends
    /// the task, which drops the image's reader.
    fn stream_image(&self, id: &ImageId, start: u64, end: u64) -> Result<super::http::Body> {
        let img = self.reader.open_id(id)?;
        let (tx, body) = ChannelBody::channel(PIECES_QUEUED);
        let id = *id;
        tokio::task::spawn_blocking(move || {
            let mut off = start;
            while off < end {
                let n = PIECE.min((end - off) as usize);
                let piece = match img.read_parts(off, n) {
                    Ok(parts) => {
                        let piece = to_bytes(parts);
                        let got: usize = piece.iter().map(Bytes::len).sum();
                        if got == n {
                            Ok(piece)
                        } else {
                            Err(io::Error::other(format!(
                                "image {id} ended at {} bytes",
                                off + got as u64
                            )))
                        }
                    }
                    Err(e) => {
                        tracing::error!("serving image {id} at offset {off}: {e}");
                        Err(io::Error::other(e.to_string()))
                    }
                };
                let failed = piece.is_err();
                if !send(&tx, piece) {
                    tracing::debug!("client went away or stalled at offset {off} of image {id}");
                    return;
                }
                if failed {
                    return;
                }
                off += n as u64;
            }
        });
        Ok(body)
    }

    /// `GET /v2/<name>/tags/list`.
    pub fn tags(&self, name: &str, query: &Query) -> Result<Resp> {
        let mut tags: Vec<String> = self.tags_of(name)?.into_iter().map(|(t, _)| t.tag).collect();
        if tags.is_empty() {
            return Err(OciError::new(Code::NameUnknown, format!("no tags under {name}")));
        }
        tags.sort();
        let tags = page(tags, query);
        json_response(&serde_json::json!({"name": name, "tags": tags}))
    }

    /// `GET /v2/_catalog`.
    /// Lists only the names `user` may read.
    pub fn catalog(&self, query: &Query, user: Option<&str>) -> Result<Resp> {
        let mut names: Vec<String> = self
            .store
            .refs(None)?
            .into_iter()
            .map(|(t, _)| t.name)
            .filter(|n| self.may_read(user, n))
            .collect();
        names.sort();
        names.dedup();
        json_response(&serde_json::json!({"repositories": page(names, query)}))
    }
}

/// Zeros that zero runs are sent from.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// A piece's parts as bytes for hyper, sharing the decoded frames.
fn to_bytes(parts: Vec<imgstore_store::Part>) -> Piece {
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            imgstore_store::Part::Bytes(b) => out.push(Bytes::from_owner(b)),
            imgstore_store::Part::Zeros(mut n) => {
                while n > 0 {
                    let k = n.min(ZEROS.len() as u64);
                    out.push(Bytes::from_static(&ZEROS[..k as usize]));
                    n -= k;
                }
            }
        }
    }
    out
}

/// A body with bytes `start..end` of a local file (a staged upload).
fn stream_file(path: std::path::PathBuf, start: u64, end: u64) -> super::http::Body {
    use std::os::unix::fs::FileExt;
    let (tx, body) = ChannelBody::channel(PIECES_QUEUED);
    tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                send(&tx, Err(e));
                return;
            }
        };
        let mut off = start;
        while off < end {
            let mut buf = vec![0u8; PIECE.min((end - off) as usize)];
            let piece = file.read_exact_at(&mut buf, off).map(|()| vec![Bytes::from(buf)]);
            let failed = piece.is_err();
            if !send(&tx, piece) || failed {
                return;
            }
            off += PIECE as u64;
        }
    });
    body
}

/// A blob's source.
pub enum Blob {
    /// Small bytes: the empty config, or a pushed config.
    Bytes(Bytes),
    /// An image in the store.
    Image(ImageDigest),
    /// A verified upload waiting for its manifest (its size).
    Staged(u64),
}

/// A request's query parameters.
pub type Query = Vec<(String, String)>;

fn page(items: Vec<String>, query: &Query) -> Vec<String> {
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let n = get("n")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    items
        .into_iter()
        .filter(|t| get("last").is_none_or(|last| t.as_str() > last))
        .take(n)
        .collect()
}

fn json_response(v: &serde_json::Value) -> Result<Resp> {
    let bytes = serde_json::to_vec(v).expect("json");
    let len = bytes.len();
    let mut r = Response::new(full(bytes));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(CONTENT_LENGTH, len.into());
    Ok(r)
}

/// A header value from text this server made (digests, ranges: ASCII).
pub fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("ASCII header value")
}

fn show(r: &Reference) -> String {
    match r {
        Reference::Tag(t) => t.clone(),
        Reference::Digest(d) => oci_digest(d),
    }
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` within `size`, as a half-open
/// range; `None` for anything else (several ranges included).
fn parse_range(r: &str, size: u64) -> Option<(u64, u64)> {
    let spec = r.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().ok()?, size),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.saturating_add(1).min(size),
        ),
    };
    (start < end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 100)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=-10", 1000), Some((990, 1000)));
        assert_eq!(parse_range("bytes=990-5000", 1000), Some((990, 1000)));
        for bad in [
            "bytes=1000-",
            "bytes=5-4",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-",
        ] {
            assert_eq!(parse_range(bad, 1000), None, "{bad}");
        }
    }

    #[test]
    fn the_derived_manifest_is_the_same_bytes_each_time() {
        let rec = ImageDigest {
            format: "imgstore-oci-image".into(),
            version: 1,
            image: ImageId(Digest([1; 32])),
            sha256: "ab".repeat(32),
            size: 12345,
        };
        let a = derived_manifest("lab/app", &rec);
        assert_eq!(a, derived_manifest("lab/app", &rec));
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["layers"][0]["mediaType"], SIF_LAYER_TYPE);
        assert_eq!(v["config"]["mediaType"], SIF_CONFIG_TYPE);
        assert_eq!(v["mediaType"], MANIFEST_TYPE);
        assert_eq!(
            empty_config_digest().to_hex(),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
