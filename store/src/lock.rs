//! Lock files: what ties an experiment folder to the exact image it ran in.
//!
//! `imgstore export` writes `imgstore.lock` (JSON, documented in
//! docs/LOCKFILE.md); `imgstore get --lock` fetches exactly the image it
//! names, by id, whatever its tags are now, from this store or any store
//! the image was copied to (a copy keeps image ids).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result, Wanted};
use crate::id::{Digest, ImageId};
use crate::oci::ImageDigest;
use crate::ops::get::Output;
use crate::progress::Progress;
use crate::refs::ImageRef;
use crate::Store;

/// The `format` field of every lock file.
pub const LOCK_FORMAT: &str = "imgstore-lock";
/// The newest lock version this imgstore reads and the one it writes.
pub const LOCK_VERSION: u32 = 1;

/// Where the image was when the lock was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedStore {
    /// The store's id (its config's `store_id`).
    pub id: String,
    /// The store's location: a directory or an object-storage URL.
    pub location: String,
}

/// Who put the image, when, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedPut {
    /// Seconds since the epoch (the putting host's clock).
    pub time: u64,
    /// The same, RFC 3339, for people.
    pub date: String,
    /// User.
    pub user: String,
    /// Host.
    pub host: String,
}

/// The contents of an `imgstore.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    /// Always [`LOCK_FORMAT`].
    pub format: String,
    /// [`LOCK_VERSION`] when written by this imgstore.
    pub version: u32,
    /// The store the lock was written from.
    pub store: LockedStore,
    /// The `name:tag` exported (it may name another image later).
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// The image: `blake3:<64 hex>`, the BLAKE3 of its bytes.
    pub image: ImageId,
    /// `sha256:<64 hex>` of the image's bytes (what `sha256sum` and OCI
    /// registries compute).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// `sif`, `ext2`, `ext3`, `ext4` or `raw`.
    pub image_format: String,
    /// When and by whom it was put (`null` when exported by id only).
    pub put: Option<LockedPut>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The definition file written beside the lock, if the image has one.
    pub deffile: Option<String>,
    /// A registry URL (`oras://…`) run.sh falls back to.
    pub registry: Option<String>,
    /// Files export wrote into the folder, with their BLAKE3 (`blake3:<hex>`):
    /// a later `export --force` overwrites only these, unchanged.
    pub files: BTreeMap<String, String>,
}

impl LockFile {
    /// Serialized form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("lock serializes");
        v.push(b'\n');
        v
    }

    /// Parses a lock file's bytes; `what` names the file in errors. Checks
    /// the format and version first, so a newer lock says so rather than
    /// failing on a field it does not know.
    pub fn parse(bytes: &[u8], what: &str) -> Result<LockFile> {
        let bad = |why: String| Error::BadInput {
            reason: format!("{what} is not a valid imgstore lock file: {why}"),
        };
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(LOCK_FORMAT) {
            return Err(bad(format!("no \"format\": \"{LOCK_FORMAT}\" field")));
        }
        match v.get("version").and_then(|f| f.as_u64()) {
            Some(n) if n > u64::from(LOCK_VERSION) => {
                return Err(Error::NewerFormat {
                    found: format!("lock file version {n} ({what})"),
                    supported: LOCK_VERSION,
                })
            }
            Some(n) if n >= 1 => {}
            _ => return Err(bad("no valid \"version\" field".into())),
        }
        let lock: LockFile = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        if crate::oci::sha256_hex(lock.sha256.strip_prefix("sha256:").unwrap_or_default()).is_none() {
            return Err(bad("\"sha256\" is not sha256:<64 lowercase hex digits>".into()));
        }
        Ok(lock)
    }

    /// The image's sha256 digest.
    pub fn sha256_digest(&self) -> Digest {
        crate::oci::sha256_hex(self.sha256.trim_start_matches("sha256:")).expect("checked at parse")
    }
}

/// A writer that hashes what passes through it with sha256.
#[derive(Clone, Default)]
struct Sha256Sink(Arc<Mutex<Sha256>>);

impl std::io::Write for Sha256Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("hasher").update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Store {
    /// Image `id`'s sha256: the kept record (`oci/images/…`), or computed
    /// now by a get of the image (every chunk checked) into a hasher and
    /// kept, so it is computed once per store.
    pub fn image_sha256(&self, id: &ImageId, progress: &dyn Progress) -> Result<ImageDigest> {
        if let Some(rec) = self.oci_image_digest(id)? {
            return Ok(rec);
        }
        let sink = Sha256Sink::default();
        let report = self.get(
            &ImageRef::Id(id.0.to_hex()),
            Output::Stream(Box::new(sink.clone())),
            progress,
        )?;
        let sha = Digest(sink.0.lock().expect("hasher").clone().finalize().into());
        self.oci_record_image_digest(id, &sha, report.size)
    }

    /// Checks that this store holds the image `lock` names, as the lock
    /// describes it (size; sha256 where the store has it kept), and
    /// returns its id. An image the store lacks is a not-found error that
    /// says where the lock was written.
    pub fn check_lock(&self, lock: &LockFile) -> Result<ImageId> {
        let id = lock.image;
        match self.resolve(&ImageRef::Id(id.0.to_hex())) {
            Err(Error::NotFound { .. }) => {
                return Err(Error::not_found(Wanted::Image(format!(
                    "{id} (locked from store {} at {})",
                    lock.store.id, lock.store.location
                ))))
            }
            other => other?,
        };
        let head = self.manifest_file(&id)?.head;
        if head.size != lock.size {
            return Err(Error::BadInput {
                reason: format!(
                    "the lock says image {id} is {} bytes, the store's is {}: the lock file was edited or damaged",
                    lock.size, head.size
                ),
            });
        }
        if let Some(rec) = self.oci_image_digest(&id)? {
            if rec.sha256 != lock.sha256_digest().to_hex() {
                return Err(Error::BadInput {
                    reason: format!(
                        "the lock's sha256 of image {id} is not the image's (sha256:{}): the lock file was edited or damaged",
                        rec.sha256
                    ),
                });
            }
        }
        Ok(id)
    }
}

/// The file system inside an image, from its first 2 KiB: `sif` (the SIF
/// magic), `ext2`/`ext3`/`ext4` (the ext superblock's magic and features),
/// else `raw`.
pub fn image_format(head: &[u8], is_sif: bool) -> &'static str {
    if is_sif {
        return "sif";
    }
    let Some(sb) = head.get(1024..1024 + 100) else {
        return "raw";
    };
    let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes"));
    if u16_at(0x38) != 0xEF53 {
        return "raw";
    }
    const HAS_JOURNAL: u32 = 0x4;
    const INCOMPAT_EXT4: u32 = 0x40 | 0x80 | 0x200; // extents, 64bit, flex_bg
    if u32_at(0x60) & INCOMPAT_EXT4 != 0 {
        "ext4"
    } else if u32_at(0x5C) & HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> LockFile {
        LockFile {
            format: LOCK_FORMAT.into(),
            version: 1,
            store: LockedStore {
                id: "s".into(),
                location: "/x".into(),
            },
            reference: Some("lab/app:v1".into()),
            image: ImageId(Digest([1; 32])),
            sha256: format!("sha256:{}", "ab".repeat(32)),
            size: 5,
            image_format: "raw".into(),
            put: None,
            labels: BTreeMap::new(),
            deffile: None,
            registry: None,
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn a_lock_reads_back() {
        let l = lock();
        assert_eq!(LockFile::parse(&l.to_bytes(), "f").unwrap(), l);
    }

    #[test]
    fn bad_locks_are_one_line_errors() {
        let good = String::from_utf8(lock().to_bytes()).unwrap();
        let cases = [
            good[..good.len() / 2].to_string(),
            good.replace("imgstore-lock", "other"),
            good.replace("\"version\": 1", "\"version\": 0"),
            good.replace(&"ab".repeat(32), &"AB".repeat(32)),
            good.replace(&"01".repeat(32), &"0g".repeat(32)),
            String::new(),
        ];
        for c in cases {
            match LockFile::parse(c.as_bytes(), "f") {
                Err(Error::BadInput { reason }) => assert!(!reason.contains('\n'), "{reason}"),
                other => panic!("{c:?}: {other:?}"),
            }
        }
        let newer = good.replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            LockFile::parse(newer.as_bytes(), "f"),
            Err(Error::NewerFormat { .. })
        ));
    }

    #[test]
    fn ext_superblocks_are_told_apart() {
        let mut head = vec![0u8; 2048];
        assert_eq!(image_format(&head, false), "raw");
        head[1024 + 0x38..1024 + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        assert_eq!(image_format(&head, false), "ext2");
        head[1024 + 0x5C] = 0x4;
        assert_eq!(image_format(&head, false), "ext3");
        head[1024 + 0x60] = 0x40;
        assert_eq!(image_format(&head, false), "ext4");
        assert_eq!(image_format(&head, true), "sif");
        assert_eq!(image_format(&head[..100], false), "raw");
    }
}
