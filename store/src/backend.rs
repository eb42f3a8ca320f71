//! The one narrow door to the store's bytes.
//!
//! Everything the store keeps goes through [`Backend`]: write a whole file
//! atomically, read it or a range of it, list a directory, delete. That is all
//! object storage offers too, so a later S3 backend changes nothing above this
//! module. Files are written once under a unique name or replaced whole; no
//! safety argument rests on compare-and-swap or on file locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Prefix of temporary files; listings skip them and `gc` removes stale ones.
pub const TMP_PREFIX: &str = ".tmp-";

/// Random-access reads of one stored file.
pub trait ReadAt: Send + Sync {
    /// Fills `buf` from `offset`, or fails (a short file is an error).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// The file's length.
    fn size(&self) -> Result<u64>;
}

/// A file already read into memory (a pack checked after one whole read, a
/// manifest), read like a stored one; reading past its end is a short file.
pub struct InMemory<'a>(pub &'a [u8]);

impl ReadAt for InMemory<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| Error::corrupt("file", format!("too short at offset {offset}")))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// What a directory entry is, as found without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory (or, in object storage, a common prefix).
    Dir,
    /// A symbolic link: never followed by `verify`.
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// Storage for the store's files, addressed by `/`-separated keys.
pub trait Backend: Send + Sync {
    /// Writes `data` as `key`, atomically: readers see the old file or the
    /// whole new one, never a part. Durable when this returns.
    fn write(&self, key: &str, data: &[u8]) -> Result<()> {
        self.write_with(key, &mut |w| w.write_all(data))
    }
    /// [`Backend::write`] of what `fill` writes: for files too large to
    /// build in memory first (a manifest of a many-GB image).
    fn write_with(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> Result<()>;
    /// Reads the whole of `key`. `Ok(None)` if it does not exist.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Opens `key` for range reads.
    fn open(&self, key: &str) -> Result<Box<dyn ReadAt>>;
    /// Names (not keys) of the entries directly under `dir`, sorted,
    /// without temporary files. A missing directory lists as empty.
    fn list(&self, dir: &str) -> Result<Vec<String>>;
    /// Like [`Backend::list`], with what each entry is, found without
    /// following symlinks (so `verify` can report links planted in the store).
    /// An empty `dir` lists the store's root.
    fn entries(&self, dir: &str) -> Result<Vec<(String, EntryKind)>>;
    /// Moves `from` to `to` atomically (creating `to`'s directory), durable
    /// when this returns. Used only to quarantine proven-corrupt files.
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// Removes `key`; removing a missing key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// When `key` was last written, by the store's clock. `Ok(None)` if missing.
    fn modified(&self, key: &str) -> Result<Option<SystemTime>>;
    /// An advisory exclusive lock named `key`, held until the guard drops.
    /// `Ok(None)` when another process holds it and `wait` is false. Locks
    /// only avoid wasted work; no safety property rests on them.
    fn lock(&self, key: &str, wait: bool) -> Result<Option<LockGuard>>;
}

/// Holds a [`Backend::lock`] until dropped.
pub struct LockGuard {
    _file: File,
}

/// Takes an exclusive `flock` on `path` (created if missing). `Ok(None)`
/// when another process holds it and `wait` is false.
pub fn lock_path(path: &Path, wait: bool) -> Result<Option<LockGuard>> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // Opened for writing: NFS emulates flock with fcntl locks, which need a
    // writable descriptor for an exclusive lock.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    if wait {
        file.lock().map_err(|e| Error::io(path, e))?;
    } else {
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path, e)),
        }
    }
    Ok(Some(LockGuard { _file: file }))
}

/// A store in a local or NFS-mounted directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    perms: Option<Perms>,
}

/// Permission bits for new files and directories, taken from the store's
/// root directory so a group-shared store (`chmod 2775`, `imgstore init
/// --shared`) stays shared whatever each writer's umask: directories get the
/// root's bits (setgid included, so the group is inherited), files its read
/// bits plus owner write.
#[derive(Debug, Clone, Copy)]
pub struct Perms {
    dir: u32,
    file: u32,
}

impl Perms {
    /// The permissions the directory `root` prescribes, if it can be read.
    pub fn of(root: &Path) -> Option<Perms> {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(root).ok()?.permissions().mode() & 0o7777;
        Some(Perms {
            dir: mode,
            file: (mode & 0o444) | 0o200,
        })
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))
}

/// Creates `dir` and any missing parents, each with `perms` when given.
/// Another process creating the same directory at once is fine.
pub fn create_dirs(dir: &Path, perms: Option<Perms>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent, perms)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            if let Some(p) = perms {
                set_mode(dir, p.dir)?;
            }
            if let Some(up) = dir.parent() {
                sync_dir(up)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

impl LocalBackend {
    /// A backend rooted at `root`, which must exist.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let perms = Perms::of(&root);
        LocalBackend { root, perms }
    }

    /// The path a key maps to. Keys come from this crate, never from users,
    /// but a key that could climb out of the root is refused all the same.
    pub fn path(&self, key: &str) -> PathBuf {
        debug_assert!(valid_key(key), "bad store key {key:?}");
        self.root.join(key)
    }

    fn checked(&self, key: &str) -> Result<PathBuf> {
        if valid_key(key) {
            Ok(self.root.join(key))
        } else {
            Err(Error::BadInput {
                reason: format!("store key {key:?} is not a plain relative path"),
            })
        }
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

/// A name unique to this process and moment, for temporary files.
pub fn unique_suffix() -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("the OS random source is available");
    format!("{}-{}", std::process::id(), hex::encode(r))
}

/// Fsyncs a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io(dir, e))?;
    match d.sync_all() {
        Ok(()) => Ok(()),
        // Some network filesystems refuse fsync on directories; their
        // rename is already synchronous on the server.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Writes `data` to `path` atomically: temp file beside it, fsync, rename,
/// fsync the directory. Creates missing parent directories.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    atomic_write_with(path, data, None)
}

/// [`atomic_write`] with the file and new directories given `perms`.
pub fn atomic_write_with(path: &Path, data: &[u8], perms: Option<Perms>) -> Result<()> {
    atomic_write_from(path, &mut |w| w.write_all(data), perms)
}

/// [`atomic_write_with`] of what `fill` writes (through a buffer).
fn atomic_write_from(
    path: &Path,
    fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    perms: Option<Perms>,
) -> Result<()> {
    let dir = path.parent().expect("store paths have a parent");
    create_dirs(dir, perms)?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", unique_suffix()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        if let Some(p) = perms {
            set_mode(&tmp, p.file)?;
        }
        let mut w = io::BufWriter::with_capacity(64 << 10, &mut f);
        fill(&mut w)
            .and_then(|()| w.flush())
            .map_err(|e| Error::io(path, e))?;
        drop(w);
        f.sync_all().map_err(|e| Error::io(path, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// Names in `path`, sorted, without temporary files; missing lists as empty.
fn list_dir(path: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(TMP_PREFIX) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

struct LocalFile {
    file: File,
    path: PathBuf,
}

impl ReadAt for LocalFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::corrupt(
                    format!("file {}", self.path.display()),
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

impl Backend for LocalBackend {
    fn write_with(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> Result<()> {
        atomic_write_from(&self.checked(key)?, fill, self.perms)
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::corrupt(format!("store file {key}"), "missing"))
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        list_dir(&self.checked(dir)?)
    }

    fn entries(&self, dir: &str) -> Result<Vec<(String, EntryKind)>> {
        let path = if dir.is_empty() {
            self.root.clone()
        } else {
            self.checked(dir)?
        };
        let mut out = Vec::new();
        for name in list_dir(&path)? {
            let p = path.join(&name);
            let kind = match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => EntryKind::Symlink,
                Ok(m) if m.is_dir() => EntryKind::Dir,
                Ok(m) if m.is_file() => EntryKind::File,
                Ok(_) => EntryKind::Other,
                // Gone between the listing and the stat: a concurrent delete.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(p, e)),
            };
            out.push((name, kind));
        }
        Ok(out)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let src = self.checked(from)?;
        let dst = self.checked(to)?;
        let dir = dst.parent().expect("keys have a parent");
        if !dir.exists() {
            create_dirs(dir, self.perms)?;
            if let Some(up) = dir.parent() {
                sync_dir(up)?;
            }
        }
        fs::rename(&src, &dst).map_err(|e| Error::io(&src, e))?;
        sync_dir(dir)?;
        sync_dir(src.parent().expect("keys have a parent"))
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.checked(key)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("keys have a parent")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn lock(&self, key: &str, wait: bool) -> Result<Option<LockGuard>> {
        lock_path(&self.checked(key)?, wait)
    }

    fn modified(&self, key: &str) -> Result<Option<SystemTime>> {
        let path = self.checked(key)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.modified().map_err(|e| Error::io(&path, e))?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a//b", "a/./b"] {
            assert!(!valid_key(bad), "{bad:?} accepted");
        }
        assert!(valid_key("refs/lab/app/@v1"));
    }

    #[test]
    fn write_replaces_whole_and_lists_without_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.write("a/b/c", b"one").unwrap();
        b.write("a/b/c", b"two").unwrap();
        std::fs::write(dir.path().join("a/b/.tmp-junk"), b"x").unwrap();
        assert_eq!(b.read("a/b/c").unwrap().unwrap(), b"two");
        assert_eq!(b.list("a/b").unwrap(), vec!["c".to_string()]);
        assert_eq!(b.read("a/b/missing").unwrap(), None);
        b.delete("a/b/c").unwrap();
        b.delete("a/b/c").unwrap();
        assert!(b.list("nope").unwrap().is_empty());
    }
}
