//! A store in a directory, on local disk or NFS: each key is a file, each
//! put a temporary file fsynced and renamed into place (`fsutil`).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{checked, dir_prefix, Backend, Fill, ListPage, Lock, ObjectMeta, PartialWrite, ReadAt, Staged};
use crate::error::{Error, Object, Result};
use crate::fsutil::{self, Perms, StagedFile, TMP_PREFIX};

/// Objects a listing page holds at most; a directory is walked whole once
/// per page, so [`Backend::list`] is overridden to walk it once in all.
const PAGE: usize = 1000;

/// A store in a local or NFS-mounted directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    perms: Option<Perms>,
}

impl LocalBackend {
    /// A backend rooted at `root`, which must exist.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let perms = Perms::of(&root);
        LocalBackend { root, perms }
    }

    /// Makes `root` ready to hold a new store: created if missing, refused
    /// if it holds anything; group-writable and setgid when `shared`; the
    /// store's top directories made with the root's permissions.
    pub fn create(root: &Path, dirs: &[&str], shared: bool) -> Result<LocalBackend> {
        match fs::read_dir(root) {
            Ok(mut entries) => {
                if root.join(crate::config::CONFIG_KEY).exists() {
                    return Err(Error::AlreadyStore { path: root.into() });
                }
                if entries.next().is_some() {
                    return Err(Error::NotEmpty { path: root.into() });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(Error::NotEmpty { path: root.into() });
            }
            Err(e) => return Err(Error::io(root, e)),
        }
        if shared {
            let mode = fsutil::mode_of(root)?;
            if mode & 0o2070 != 0o2070 {
                fsutil::set_mode(root, mode | 0o2070)?;
            }
        }
        let perms = Perms::of(root);
        for d in dirs {
            fsutil::create_dirs(&root.join(d), perms)?;
        }
        fsutil::sync_dir(root)?;
        Ok(LocalBackend::new(root))
    }

    /// Creates the file behind lock `key` now, writable by whoever may
    /// write the store (a flock on NFS needs a writable descriptor), so
    /// that taking the lock later writes nothing (`gc --dry-run`).
    pub fn create_lock_file(&self, key: &str) -> Result<()> {
        self.put(key, b"")?;
        let mode = fsutil::mode_of(&self.root)?;
        fsutil::set_mode(&self.path(key), 0o644 | (mode & 0o020) | (mode & 0o002))
    }

    /// The path a key maps to.
    pub fn path(&self, key: &str) -> PathBuf {
        debug_assert!(super::valid_key(key), "bad store key {key:?}");
        self.root.join(key)
    }

    fn checked(&self, key: &str) -> Result<PathBuf> {
        Ok(self.root.join(checked(key)?))
    }

    /// Every regular file under `prefix` (without temporary files), sorted
    /// by key; entries that are neither files nor directories go to
    /// `foreign` when given. Never follows a symlink, and stats nothing:
    /// the directory entries' types come with the names.
    fn walk(&self, prefix: &str, mut foreign: Option<&mut Vec<(String, String)>>) -> Result<Vec<String>> {
        let start = dir_prefix(prefix);
        let mut out = Vec::new();
        let mut dirs = vec![start.trim_end_matches('/').to_string()];
        while let Some(dir) = dirs.pop() {
            let path = if dir.is_empty() {
                self.root.clone()
            } else {
                self.checked(&dir)?
            };
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                // Missing, or removed since it was listed (a concurrent gc).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::NotADirectory && dir == start.trim_end_matches('/') => {
                    continue
                }
                Err(e) => return Err(Error::io(path, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&path, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                // `DirEntry::file_type` does not follow symlinks.
                let kind = match entry.file_type() {
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(entry.path(), e)),
                };
                if kind.is_dir() {
                    dirs.push(key);
                } else if kind.is_file() {
                    if !name.starts_with(TMP_PREFIX) {
                        out.push(key);
                    }
                } else if let Some(f) = foreign.as_deref_mut() {
                    let what = if kind.is_symlink() {
                        "a symlink in the store (not followed)"
                    } else {
                        "a special file (fifo, socket or device) in the store"
                    };
                    f.push((key, what.to_string()));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A stored file open for ranged reads.
struct LocalFile {
    file: File,
    path: PathBuf,
}

impl ReadAt for LocalFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::corrupt(
                    Object::File(self.path.clone()),
                    format!("too short: {} bytes at offset {offset} are missing", buf.len()),
                )
            } else {
                Error::io(&self.path, e)
            }
        })
    }

    fn size(&self) -> Result<u64> {
        Ok(self.file.metadata().map_err(|e| Error::io(&self.path, e))?.len())
    }
}

impl Staged for StagedFile {
    fn commit(self: Box<Self>) -> Result<()> {
        StagedFile::commit(*self)
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put_with(&self, key: &str, fill: &mut Fill) -> Result<()> {
        fsutil::atomic_write_from(&self.checked(key)?, fill, self.perms)
    }

    fn stage(&self, key: &str, data: &[u8]) -> Result<Box<dyn Staged>> {
        let path = self.checked(key)?;
        if let Some(staged) = fsutil::stage_direct(&path, data, self.perms)? {
            return Ok(Box::new(staged));
        }
        let staged = fsutil::stage_file(&path, &mut |w| w.write_all(data), self.perms)?;
        // Write-back starts now, and runs while the caller goes on; the
        // commit's fsync then mostly waits for what is still in flight.
        fsutil::start_writeback(&staged.file, 0, 0);
        Ok(Box::new(staged))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.checked(key)?;
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn open(&self, key: &str) -> Result<Box<dyn ReadAt>> {
        let path = self.checked(key)?;
        match File::open(&path) {
            Ok(file) => Ok(Box::new(LocalFile { file, path })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::Missing { key: key.into() }),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.checked(key)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.into(),
                size: m.len(),
                modified: m.modified().map_err(|e| Error::io(&path, e))?,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage> {
        let all = self.walk(prefix, None)?;
        let from = after.map_or(0, |a| all.partition_point(|k| k.as_str() <= a));
        let keys: Vec<String> = all[from..].iter().take(PAGE).cloned().collect();
        Ok(ListPage {
            more: from + keys.len() < all.len(),
            keys,
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.walk(prefix, None)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.checked(key)?;
        match fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(path.parent().expect("keys have a parent")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn lock(&self, key: &str, wait: bool) -> Result<Option<Lock>> {
        Ok(fsutil::lock_path(&self.checked(key)?, wait)?.map(Lock::held))
    }

    fn partial_writes(&self) -> Result<Vec<PartialWrite>> {
        let mut found = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(path) = dirs.pop() {
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                // Removed since it was listed: a concurrent gc or repair.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(path, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&path, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(entry.path(), e)),
                };
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else if meta.is_file() && name.starts_with(TMP_PREFIX) {
                    let key = entry
                        .path()
                        .strip_prefix(&self.root)
                        .expect("walked from the root")
                        .to_string_lossy()
                        .into_owned();
                    // Temporary names are `.tmp-<pid>-<random>` (`id::unique_suffix`).
                    let pid = name[TMP_PREFIX.len()..]
                        .split('-')
                        .next()
                        .and_then(|p| p.parse::<u32>().ok());
                    found.push(PartialWrite {
                        key,
                        bytes: meta.len(),
                        modified: meta.modified().map_err(|e| Error::io(entry.path(), e))?,
                        pid,
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn foreign_entries(&self) -> Result<Vec<(String, String)>> {
        let mut foreign = Vec::new();
        self.walk("", Some(&mut foreign))?;
        foreign.sort();
        Ok(foreign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::DIRECT_ALIGN;

    #[test]
    fn listings_skip_temporaries_and_name_foreign_entries() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("a/b/c", b"one").unwrap();
        std::fs::write(dir.path().join("a/b/.tmp-42-junk"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("a/link")).unwrap();
        assert_eq!(b.list("a").unwrap(), ["a/b/c"]);
        let partial = b.partial_writes().unwrap();
        assert_eq!(partial.len(), 1);
        assert_eq!(partial[0].key, "a/b/.tmp-42-junk");
        assert_eq!(partial[0].pid, Some(42));
        let foreign = b.foreign_entries().unwrap();
        assert_eq!(foreign.len(), 1, "{foreign:?}");
        assert_eq!(foreign[0].0, "a/link");
    }

    #[test]
    fn staged_files_appear_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let kept = b.stage("p/kept", b"kept").unwrap();
        let dropped = b.stage("p/dropped", b"dropped").unwrap();
        assert!(b.list("p").unwrap().is_empty(), "visible before commit");
        kept.commit().unwrap();
        drop(dropped);
        assert_eq!(b.get("p/kept").unwrap().unwrap(), b"kept");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("p")).unwrap().collect();
        assert_eq!(left.len(), 1, "a dropped stage left its temporary file");
    }

    #[test]
    fn direct_writes_keep_every_byte_of_an_aligned_pack() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let mut pack = crate::pack::PackBuilder::with_capacity(64 << 10);
        for i in 0..7u8 {
            let c = vec![i; 5_000 + usize::from(i)];
            pack.add(
                crate::id::Digest::of(&c),
                c.len() as u32,
                crate::codec::Codec::Raw,
                &c,
            );
        }
        let (_, bytes, _) = pack.finish();
        assert!(
            (bytes.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN),
            "pack bytes not page-aligned"
        );
        assert!(fsutil::stage_direct(&b.path("x/unaligned"), &bytes[1..], None)
            .unwrap()
            .is_none());
        match fsutil::stage_direct(&b.path("x/pack"), &bytes, None).unwrap() {
            Some(s) => s.commit().unwrap(),
            None => {
                eprintln!("this filesystem refuses O_DIRECT; the buffered path is tested elsewhere");
                return;
            }
        }
        assert!(
            b.get("x/pack").unwrap().unwrap() == *bytes,
            "bytes differ after a direct write"
        );
        assert_eq!(b.list("x").unwrap(), ["x/pack"]);
    }
}
