//! What `imgstore serve` keeps in the store beside images, under `oci/`:
//! small immutable records that let an OCI registry name images by sha256.
//!
//! - `oci/images/xx/<image-hex>`: an image's sha256 and size (JSON). Written
//!   the first time a registry client asks for the image (the server streams
//!   it once), or at the push that brought it; a put never computes it.
//! - `oci/sha256/xx/<sha256-hex>`: the image whose bytes have that sha256
//!   (JSON), the way back from a blob digest.
//! - `oci/manifests/xx/<sha256-hex>`: a manifest a client pushed, byte for
//!   byte, so its digest stays the one the client computed.
//! - `oci/blobs/xx/<sha256-hex>`: a small blob a client pushed that is not
//!   an image (a config), byte for byte.
//! - `oci/tags/<name>/@<tag>`: which pushed manifest a tag was pushed with,
//!   and the image it named then (JSON); it counts only while the ref still
//!   names that image.
//!
//! Every record but the tag link is named by content (a sha256 or an image
//! id that fixes the bytes), so it is never wrong, only possibly unused:
//! gc leaves `oci/` alone and verify accepts it. Records are written whole
//! and atomically like every store object; two servers writing one race to
//! the same bytes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Object, Result};
use crate::id::{Digest, ImageId};
use crate::refs::TagRef;
use crate::Store;

/// Top-level store directory of the registry's records.
pub const OCI_DIR: &str = "oci";
const IMAGES: &str = "oci/images";
const SHA256: &str = "oci/sha256";
const MANIFESTS: &str = "oci/manifests";
const BLOBS: &str = "oci/blobs";
const TAGS: &str = "oci/tags";

/// An image's sha256 as the registry serves it (`oci/images/…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDigest {
    /// Always `"imgstore-oci-image"`.
    pub format: String,
    /// Record version, 1.
    pub version: u32,
    /// The image.
    pub image: ImageId,
    /// sha256 of its bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The manifest a tag was pushed with (`oci/tags/<name>/@<tag>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagLink {
    /// Always `"imgstore-oci-tag"`.
    pub format: String,
    /// Record version, 1.
    pub version: u32,
    /// sha256 of the pushed manifest, 64 lowercase hex digits.
    pub manifest: String,
    /// The image the tag named when it was pushed.
    pub image: ImageId,
}

fn parse<T: for<'a> Deserialize<'a>>(bytes: &[u8], key: &str, format: &str) -> Result<T> {
    let what = Object::StoreObject(key.to_string());
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(what.clone(), format!("not a registry record: {e}")))?;
    if v.get("format").and_then(|f| f.as_str()) != Some(format) {
        return Err(Error::corrupt(what, format!("not a {format} record")));
    }
    if v.get("version").and_then(|f| f.as_u64()).unwrap_or(0) > 1 {
        return Err(Error::NewerFormat {
            found: format!("{format} version {}", v["version"]),
            supported: 1,
        });
    }
    serde_json::from_value(v).map_err(|e| Error::corrupt(what, format!("not a {format} record: {e}")))
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("record serializes");
    out.push(b'\n');
    out
}

/// Parses 64 lowercase hex digits (a sha256 as OCI writes it).
pub fn sha256_hex(s: &str) -> Option<Digest> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Digest::from_hex(s).ok()
    } else {
        None
    }
}

fn tag_key(tag: &TagRef) -> String {
    // The same grammar as refs/, so the key stays under oci/tags/.
    format!("{TAGS}/{}/@{}", tag.name, tag.tag)
}

impl Store {
    /// The sha256 record of image `id`, if one was written.
    pub fn oci_image_digest(&self, id: &ImageId) -> Result<Option<ImageDigest>> {
        let key = id.0.key(IMAGES);
        let Some(bytes) = self.backend.get(&key)? else {
            return Ok(None);
        };
        let rec: ImageDigest = parse(&bytes, &key, "imgstore-oci-image")?;
        if rec.image != *id || sha256_hex(&rec.sha256).is_none() {
            return Err(Error::corrupt(
                Object::StoreObject(key),
                "the record is not about the image it is named after",
            ));
        }
        Ok(Some(rec))
    }

    /// Records that image `id` (of `size` bytes) has the sha256 `sha256`:
    /// the way back (sha256 to image) first, then the image's own record.
    pub fn oci_record_image_digest(&self, id: &ImageId, sha256: &Digest, size: u64) -> Result<ImageDigest> {
        let rec = ImageDigest {
            format: "imgstore-oci-image".into(),
            version: 1,
            image: *id,
            sha256: sha256.to_hex(),
            size,
        };
        self.backend.put(&sha256.key(SHA256), &json(&rec))?;
        self.backend.put(&id.0.key(IMAGES), &json(&rec))?;
        Ok(rec)
    }

    /// The image whose bytes have sha256 `sha256`, if the registry has
    /// recorded one.
    pub fn oci_image_by_sha256(&self, sha256: &Digest) -> Result<Option<ImageDigest>> {
        let key = sha256.key(SHA256);
        let Some(bytes) = self.backend.get(&key)? else {
            return Ok(None);
        };
        let rec: ImageDigest = parse(&bytes, &key, "imgstore-oci-image")?;
        if rec.sha256 != sha256.to_hex() {
            return Err(Error::corrupt(
                Object::StoreObject(key),
                "the record is not about the digest it is named after",
            ));
        }
        Ok(Some(rec))
    }

    /// Keeps a pushed manifest; `sha256` must be its digest (the caller
    /// computed it while receiving it).
    pub fn oci_put_manifest(&self, sha256: &Digest, bytes: &[u8]) -> Result<()> {
        self.backend.put(&sha256.key(MANIFESTS), bytes)
    }

    /// A pushed manifest by digest.
    pub fn oci_manifest(&self, sha256: &Digest) -> Result<Option<Vec<u8>>> {
        self.backend.get(&sha256.key(MANIFESTS))
    }

    /// Keeps a small pushed blob that is not an image (a config).
    pub fn oci_put_blob(&self, sha256: &Digest, bytes: &[u8]) -> Result<()> {
        self.backend.put(&sha256.key(BLOBS), bytes)
    }

    /// A small pushed blob by digest.
    pub fn oci_blob(&self, sha256: &Digest) -> Result<Option<Vec<u8>>> {
        self.backend.get(&sha256.key(BLOBS))
    }

    /// Whether a small pushed blob exists, without reading it.
    pub fn oci_has_blob(&self, sha256: &Digest) -> Result<Option<u64>> {
        Ok(self.backend.head(&sha256.key(BLOBS))?.map(|m| m.size))
    }

    /// Notes that `tag` was pushed with manifest `manifest`, naming `image`.
    pub fn oci_link_tag(&self, tag: &TagRef, manifest: &Digest, image: &ImageId) -> Result<()> {
        let link = TagLink {
            format: "imgstore-oci-tag".into(),
            version: 1,
            manifest: manifest.to_hex(),
            image: *image,
        };
        self.backend.put(&tag_key(tag), &json(&link))
    }

    /// The manifest `tag` was last pushed with, if any.
    pub fn oci_tag_link(&self, tag: &TagRef) -> Result<Option<TagLink>> {
        let key = tag_key(tag);
        let Some(bytes) = self.backend.get(&key)? else {
            return Ok(None);
        };
        let link: TagLink = parse(&bytes, &key, "imgstore-oci-tag")?;
        if sha256_hex(&link.manifest).is_none() {
            return Err(Error::corrupt(
                Object::StoreObject(key),
                "the manifest digest is not a sha256",
            ));
        }
        Ok(Some(link))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitOptions, MemoryBackend};
    use std::sync::Arc;

    #[test]
    fn records_read_back_and_stay_under_oci() {
        let dir = tempfile::tempdir().unwrap();
        let mem = MemoryBackend::default();
        let store = Store::init_with(
            Arc::new(mem.clone()),
            InitOptions::default(),
            Some(dir.path().join("i")),
        )
        .unwrap();
        let id = ImageId(Digest([7; 32]));
        let sha = Digest([9; 32]);
        assert!(store.oci_image_digest(&id).unwrap().is_none());
        store.oci_record_image_digest(&id, &sha, 42).unwrap();
        assert_eq!(store.oci_image_digest(&id).unwrap().unwrap().size, 42);
        assert_eq!(store.oci_image_by_sha256(&sha).unwrap().unwrap().image, id);
        let tag = TagRef::parse("lab/app:v1").unwrap();
        store.oci_link_tag(&tag, &sha, &id).unwrap();
        assert_eq!(store.oci_tag_link(&tag).unwrap().unwrap().image, id);
        store.oci_put_manifest(&sha, b"{}").unwrap();
        assert_eq!(store.oci_manifest(&sha).unwrap().unwrap(), b"{}");
        use crate::Backend;
        let keys = mem.list(OCI_DIR).unwrap();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert!(keys.iter().all(|k| k.starts_with("oci/")));
    }

    #[test]
    fn only_lowercase_sha256_hex_is_a_digest() {
        assert!(sha256_hex(&"a".repeat(64)).is_some());
        for bad in [
            "A".repeat(64),
            "a".repeat(63),
            "../".repeat(21) + "a",
            "g".repeat(64),
        ] {
            assert!(sha256_hex(&bad).is_none(), "{bad}");
        }
    }
}
