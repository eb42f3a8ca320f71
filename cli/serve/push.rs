//! The push side: blob uploads into a spool directory, hashed as they
//! arrive; a blob whose sha256 matches is staged until a manifest names it,
//! and the manifest's PUT turns its layer into an ordinary image (the put
//! path, SIF deffile and labels lifted) and keeps the manifest byte for byte.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use hyper::{Response, StatusCode};
use imgstore_store::{Digest, ImageRef, Input, NoProgress, PutOptions, TagRef};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::http::{empty, Code, OciError, Resp, Result};
use super::pull::{empty_config_digest, header, Query, MANIFEST_TYPE};
use super::route::{parse_digest, Reference};
use super::State;

/// How long a request body may send nothing before it is given up.
const BODY_IDLE: Duration = Duration::from_secs(60);
/// How long an upload may sit unfinished before its spool is removed.
const UPLOAD_IDLE: Duration = Duration::from_secs(3600);
/// Largest manifest accepted.
const MAX_MANIFEST: usize = 4 << 20;
/// Largest non-image blob (a config) kept in the store byte for byte.
const MAX_SMALL_BLOB: u64 = 1 << 20;

/// An upload under way: its spool file, hashed as it grows. Dropped
/// unfinished (an error, a client gone), it removes its spool file.
pub struct Upload {
    name: String,
    path: PathBuf,
    size: u64,
    hasher: Sha256,
    touched: Instant,
}

impl Drop for Upload {
    fn drop(&mut self) {
        // After a successful finish the file was renamed away: nothing to remove.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn new_id() -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let s = std::collections::hash_map::RandomState::new();
    format!(
        "{:016x}{:016x}",
        s.hash_one(n),
        s.hash_one((n, std::process::id()))
    )
}

/// Reads a request body frame by frame, giving up after [`BODY_IDLE`]
/// without one; `each` gets every data frame.
async fn read_body(mut body: Incoming, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    loop {
        let frame = tokio::time::timeout(BODY_IDLE, body.frame())
            .await
            .map_err(|_| OciError::new(Code::BlobUploadInvalid, "the client sent nothing for 60 s"))?;
        let Some(frame) = frame else {
            return Ok(());
        };
        let frame = frame
            .map_err(|e| OciError::new(Code::BlobUploadInvalid, format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            each(&data)?;
        }
    }
}

fn internal(what: &str, e: std::io::Error) -> OciError {
    tracing::error!("{what}: {e}");
    OciError::new(Code::Internal, format!("{what}: {e}"))
}

fn accepted(name: &str, id: &str, size: u64) -> Resp {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    let h = r.headers_mut();
    h.insert(LOCATION, header(&format!("/v2/{name}/blobs/uploads/{id}")));
    h.insert(RANGE, header(&format!("0-{}", size.saturating_sub(1))));
    h.insert("docker-upload-uuid", header(id));
    h.insert(CONTENT_LENGTH, 0.into());
    r
}

/// The tag a manifest pushed by digest is kept under: `sha256-<hex>`.
pub fn digest_tag(d: &Digest) -> String {
    format!("sha256-{d}")
}

fn created(location: String, digest: &Digest) -> Resp {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    h.insert(LOCATION, header(&location));
    h.insert("docker-content-digest", header(&format!("sha256:{digest}")));
    h.insert(CONTENT_LENGTH, 0.into());
    r
}

fn query_digest(query: &Query) -> Option<Result<Digest>> {
    query.iter().find(|(k, _)| k == "digest").map(|(_, v)| {
        parse_digest(v)
            .map_err(|_| OciError::new(Code::DigestInvalid, format!("{v:?} is not a sha256 digest")))
    })
}

impl State {
    /// Where a verified blob pushed to `name` waits for its manifest. Per
    /// name, so a blob staged under one name is not readable (or even seen)
    /// under another, whose readers the rules may differ for.
    pub fn staged(&self, name: &str, digest: &Digest) -> PathBuf {
        let name = format!("{:x}", Sha256::digest(name.as_bytes()));
        self.spool
            .join("blobs")
            .join(format!("{}-{}", &name[..32], digest.to_hex()))
    }

    fn take_upload(&self, name: &str, id: &str) -> Result<Upload> {
        let mut uploads = self.uploads.lock().expect("uploads");
        match uploads.remove(id) {
            Some(u) if u.name == name => Ok(u),
            Some(u) => {
                uploads.insert(id.to_string(), u);
                Err(OciError::new(
                    Code::BlobUploadUnknown,
                    format!("upload {id} is not under {name}"),
                ))
            }
            None => Err(OciError::new(
                Code::BlobUploadUnknown,
                format!("no upload {id} (finished, expired, or in use by another request)"),
            )),
        }
    }

    fn put_back(&self, id: &str, mut up: Upload) {
        up.touched = Instant::now();
        self.uploads.lock().expect("uploads").insert(id.to_string(), up);
    }

    /// `POST /v2/<name>/blobs/uploads/` (with `?digest=`: the whole blob in one request).
    pub async fn start_upload(&self, name: &str, query: &Query, body: Incoming) -> Result<Resp> {
        self.uploads
            .lock()
            .expect("uploads")
            .retain(|_, u| u.touched.elapsed() < UPLOAD_IDLE);
        let id = new_id();
        let path = self.spool.join("uploads").join(&id);
        File::create(&path).map_err(|e| internal("creating an upload spool file", e))?;
        let mut up = Upload {
            name: name.to_string(),
            path,
            size: 0,
            hasher: Sha256::new(),
            touched: Instant::now(),
        };
        self.append(&mut up, body).await?;
        if query_digest(query).is_some() {
            return self.finish(name, &id, up, query).await;
        }
        let size = up.size;
        self.put_back(&id, up);
        Ok(accepted(name, &id, size))
    }

    async fn append(&self, up: &mut Upload, body: Incoming) -> Result<()> {
        let mut file = OpenOptions::new()
            .append(true)
            .open(&up.path)
            .map_err(|e| internal("opening an upload spool file", e))?;
        let hasher = &mut up.hasher;
        let size = &mut up.size;
        read_body(body, |data| {
            hasher.update(data);
            *size += data.len() as u64;
            // Writes to the local spool are short; they block one worker briefly.
            tokio::task::block_in_place(|| file.write_all(data))
                .map_err(|e| internal("writing the upload spool", e))
        })
        .await
    }

    /// `PATCH` of an upload: the body appended (a chunk, or the whole blob).
    pub async fn patch_upload(
        &self,
        name: &str,
        id: &str,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Resp> {
        let mut up = self.take_upload(name, id)?;
        if let Some(range) = headers.get("content-range").and_then(|v| v.to_str().ok()) {
            let start = range.split('-').next().and_then(|s| s.trim().parse::<u64>().ok());
            if start != Some(up.size) {
                let size = up.size;
                self.put_back(id, up);
                return Err(OciError::new(
                    Code::RangeInvalid,
                    format!("chunk starts at {range:?}, the upload has {size} bytes"),
                ));
            }
        }
        // An error drops `up`, which removes its spool file.
        self.append(&mut up, body).await?;
        let size = up.size;
        self.put_back(id, up);
        Ok(accepted(name, id, size))
    }

    /// `PUT` of an upload with `?digest=`: the last bytes appended, the
    /// sha256 checked, and only then the blob staged.
    pub async fn put_upload(&self, name: &str, id: &str, query: &Query, body: Incoming) -> Result<Resp> {
        let mut up = self.take_upload(name, id)?;
        self.append(&mut up, body).await?;
        self.finish(name, id, up, query).await
    }

    async fn finish(&self, name: &str, id: &str, up: Upload, query: &Query) -> Result<Resp> {
        let want = match query_digest(query) {
            Some(d) => d?,
            None => {
                return Err(OciError::new(
                    Code::DigestInvalid,
                    "the PUT that ends an upload needs ?digest=sha256:…",
                ))
            }
        };
        let got = Digest(up.hasher.clone().finalize().into());
        if got != want {
            tracing::warn!("upload {id} to {name}: sha256 {got}, the client said {want}; dropped");
            return Err(OciError::new(
                Code::DigestInvalid,
                format!("the uploaded bytes have sha256:{got}, not sha256:{want}; nothing was stored"),
            ));
        }
        std::fs::rename(&up.path, self.staged(name, &want)).map_err(|e| internal("staging an upload", e))?;
        Ok(created(format!("/v2/{name}/blobs/sha256:{want}"), &want))
    }

    /// `GET` of an upload: how much has arrived.
    pub fn upload_status(&self, name: &str, id: &str) -> Result<Resp> {
        let up = self.take_upload(name, id)?;
        let mut r = accepted(name, id, up.size);
        *r.status_mut() = StatusCode::NO_CONTENT;
        self.put_back(id, up);
        Ok(r)
    }

    /// `DELETE` of an upload: its spool removed.
    pub fn cancel_upload(&self, name: &str, id: &str) -> Result<Resp> {
        drop(self.take_upload(name, id)?);
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        Ok(r)
    }

    /// `PUT /v2/<name>/manifests/<tag|digest>`: reads the manifest (at
    /// most [`MAX_MANIFEST`]), then commits it on a blocking thread. A
    /// manifest pushed by digest must hash to it (checked before anything
    /// is stored) and is kept under the tag [`digest_tag`] names, as
    /// cosign and oras name untagged artifacts: an image lives only while
    /// a tag names it.
    pub async fn put_manifest(
        self: std::sync::Arc<Self>,
        name: String,
        reference: Reference,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Resp> {
        let (tag, want) = match reference {
            Reference::Tag(tag) => (tag, None),
            Reference::Digest(d) => (digest_tag(&d), Some(d)),
        };
        if let Some(ct) = headers.get(CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default();
            if ct.split(';').next().unwrap_or_default().trim() != MANIFEST_TYPE {
                return Err(OciError::new(
                    Code::ManifestInvalid,
                    format!(
                        "manifest type {ct:?}: this registry keeps OCI image manifests ({MANIFEST_TYPE})"
                    ),
                ));
            }
        }
        let mut bytes = Vec::new();
        read_body(body, |data| {
            if bytes.len() + data.len() > MAX_MANIFEST {
                return Err(OciError::new(
                    Code::TooLarge,
                    format!("a manifest is at most {MAX_MANIFEST} bytes"),
                ));
            }
            bytes.extend_from_slice(data);
            Ok(())
        })
        .await?;
        if let Some(want) = want {
            let got = Digest(Sha256::digest(&bytes).into());
            if got != want {
                return Err(OciError::new(
                    Code::DigestInvalid,
                    format!("the manifest's sha256 is {got}, not the digest {want} it was pushed by"),
                ));
            }
        }
        let tag = TagRef { name, tag };
        tokio::task::spawn_blocking(move || self.commit_manifest(&tag, &bytes))
            .await
            .map_err(|e| OciError::new(Code::Internal, format!("manifest commit failed: {e}")))?
    }

    fn commit_manifest(&self, tag: &TagRef, bytes: &[u8]) -> Result<Resp> {
        let invalid = |m: String| OciError::new(Code::ManifestInvalid, m);
        let m: PushedManifest = serde_json::from_slice(bytes).map_err(|e| {
            invalid(format!(
                "the manifest is not valid JSON of an OCI image manifest: {e}"
            ))
        })?;
        if m.schema_version != 2 {
            return Err(invalid(format!("schemaVersion {}, expected 2", m.schema_version)));
        }
        if m.media_type.as_deref().is_some_and(|t| t != MANIFEST_TYPE) {
            return Err(invalid(format!(
                "mediaType {:?}, expected {MANIFEST_TYPE}",
                m.media_type
            )));
        }
        let [layer] = m.layers.as_slice() else {
            return Err(invalid(format!(
                "{} layers: this registry keeps one-layer artifacts (a SIF image)",
                m.layers.len()
            )));
        };
        let digest_of = |d: &Descriptor| {
            parse_digest(&d.digest).map_err(|_| {
                OciError::new(
                    Code::DigestInvalid,
                    format!("{:?} is not a sha256 digest", d.digest),
                )
            })
        };
        let config = digest_of(&m.config)?;
        let layer_digest = digest_of(layer)?;
        let unknown = |d: &Digest| {
            OciError::new(
                Code::ManifestBlobUnknown,
                format!("blob sha256:{d} was not pushed"),
            )
        };

        // The config: the empty one, one kept before, or a staged upload
        // (small, kept byte for byte).
        if config != empty_config_digest() && self.store.oci_has_blob(&config)?.is_none() {
            let staged = self.staged(&tag.name, &config);
            let size = std::fs::metadata(&staged).map_err(|_| unknown(&config))?.len();
            if size > MAX_SMALL_BLOB || size != m.config.size {
                return Err(invalid(format!(
                    "config blob of {size} bytes (descriptor says {}; at most {MAX_SMALL_BLOB})",
                    m.config.size
                )));
            }
            let data = std::fs::read(&staged).map_err(|e| internal("reading a staged config", e))?;
            self.store.oci_put_blob(&config, &data)?;
            let _ = std::fs::remove_file(&staged);
        }

        // The layer: a staged upload becomes an image through the put
        // path; a blob the store already has as an image is tagged.
        let staged = self.staged(&tag.name, &layer_digest);
        let image = if let Ok(meta) = std::fs::metadata(&staged) {
            if meta.len() != layer.size {
                return Err(invalid(format!(
                    "layer is {} bytes, its descriptor says {}",
                    meta.len(),
                    layer.size
                )));
            }
            let opts = PutOptions {
                message: Some("pushed to imgstore serve".into()),
                ..PutOptions::default()
            };
            let report = self
                .store
                .put(tag, Input::File(staged.clone()), &opts, &NoProgress)?;
            self.store
                .oci_record_image_digest(&report.image, &layer_digest, report.size)?;
            let _ = std::fs::remove_file(&staged);
            tracing::info!(
                "{tag}: pushed image {} ({} bytes, {} new)",
                report.image,
                report.size,
                report.added.stored_bytes
            );
            report.image
        } else if let Some(rec) = self.store.oci_image_by_sha256(&layer_digest)? {
            if rec.size != layer.size {
                return Err(invalid(format!(
                    "layer is {} bytes, its descriptor says {}",
                    rec.size, layer.size
                )));
            }
            self.store.tag(&ImageRef::Id(rec.image.0.to_hex()), tag)?;
            rec.image
        } else {
            return Err(unknown(&layer_digest));
        };
        let digest = Digest(Sha256::digest(bytes).into());
        self.store.oci_put_manifest(&digest, bytes)?;
        self.store.oci_link_tag(tag, &digest, &image)?;
        Ok(created(
            format!("/v2/{}/manifests/sha256:{digest}", tag.name),
            &digest,
        ))
    }
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct PushedManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}
