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
    /// [`Backend::write_with`] that never replaces: if `key` exists (or
    /// appears while this writes), nothing is written and this returns
    /// `Ok(false)`. For files other files depend on staying as they are (a
    /// manifest that deltas name as their base).
    fn write_new_with(
        &self,
        key: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<bool>;
    /// [`Backend::write`] in two steps, so a writer can reuse `data`'s
    /// buffer before the file is durable: the bytes are handed over now,
    /// and the file appears under `key`, durable, only at
    /// [`Staged::commit`]. Dropped uncommitted, it never appears. Backends
    /// without a cheaper way write it whole here and commit nothing.
    fn stage(&self, key: &str, data: &[u8]) -> Result<Box<dyn Staged>> {
        self.write(key, data)?;
        Ok(Box::new(Written))
    }
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
    /// Every temporary file in the store (names starting [`TMP_PREFIX`]),
    /// found without following symlinks, sorted by key: what writers have
    /// in progress and what interrupted ones left behind.
    fn temporaries(&self) -> Result<Vec<Temporary>>;
}

/// A temporary file found by [`Backend::temporaries`].
#[derive(Debug, Clone)]
pub struct Temporary {
    /// Its key; [`Backend::delete`] takes it.
    pub key: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was last written, by the store's clock.
    pub modified: SystemTime,
}

/// A file from [`Backend::stage`], written but not yet in place.
pub trait Staged: Send {
    /// Makes the file durable and visible under its key.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A staged file that was written whole already.
struct Written;

impl Staged for Written {
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
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
    Box::new(stage_file(path, fill, perms)?).commit()
}

/// What `fill` writes, in a temporary file beside `path`; see [`create_tmp`].
fn stage_file(
    path: &Path,
    fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    perms: Option<Perms>,
) -> Result<LocalStaged> {
    let mut staged = create_tmp(path, perms, 0)?.map_err(|e| Error::io(path, e))?;
    let mut w = io::BufWriter::with_capacity(64 << 10, &mut staged.file);
    fill(&mut w)
        .and_then(|()| w.flush())
        .map_err(|e| Error::io(path, e))?;
    drop(w);
    Ok(staged)
}

/// Direct I/O moves whole pages only, from page-aligned memory, at
/// page-aligned file offsets.
pub const DIRECT_ALIGN: usize = 4096;

/// Pads the empty `buf` with zeros up to its first page boundary, so that
/// what is appended next can be written with direct I/O; returns the
/// padding. `buf` needs [`DIRECT_ALIGN`] bytes of capacity beyond what it
/// will hold, or a later growth moves it off the boundary.
pub fn pad_to_page(buf: &mut Vec<u8>) -> usize {
    debug_assert!(buf.is_empty());
    let pad = buf.as_ptr().align_offset(DIRECT_ALIGN).min(buf.capacity());
    buf.resize(pad, 0);
    pad
}

/// [`stage_file`] of `data` with direct I/O (`O_DIRECT`): its whole pages
/// go from `data` to the disk without a copy into the page cache, the
/// rest through the page cache. Writing a new pack into the page cache cost
/// more system time than anything else a put did (benches/results/HISTORY.md,
/// "Direct I/O"), and nothing reads a new pack soon.
/// `Ok(None)` when `data` is not page-aligned or the filesystem refuses
/// direct I/O: the caller writes it through the page cache instead.
fn stage_direct(path: &Path, data: &[u8], perms: Option<Perms>) -> Result<Option<LocalStaged>> {
    let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    if whole == 0 || !(data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
        return Ok(None);
    }
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let mut staged = match create_tmp(path, perms, libc::O_DIRECT)? {
        Ok(s) => s,
        Err(e) if refused(&e) => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    match staged.file.write_all_at(&data[..whole], 0) {
        Ok(()) => {}
        // Dropped, the temporary file goes.
        Err(e) if refused(&e) => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    }
    let tmp = staged.tmp.as_ref().expect("not committed");
    // The unaligned tail through a second descriptor without O_DIRECT;
    // commit's fsync on it makes the whole file durable.
    staged.file = OpenOptions::new()
        .write(true)
        .open(tmp)
        .map_err(|e| Error::io(tmp, e))?;
    staged
        .file
        .write_all_at(&data[whole..], whole as u64)
        .map_err(|e| Error::io(path, e))?;
    Ok(Some(staged))
}

/// A new temporary file beside `path` (its missing parent directories
/// created), opened for writing with `flags` added; [`Staged::commit`]
/// fsyncs it, renames it to `path` and fsyncs the directory, and dropped
/// uncommitted it is removed. The inner error is the open's, so a caller
/// can tell a refused flag.
fn create_tmp(path: &Path, perms: Option<Perms>, flags: i32) -> Result<io::Result<LocalStaged>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().expect("store paths have a parent");
    create_dirs(dir, perms)?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", unique_suffix()));
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(flags)
        .open(&tmp)
    {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let staged = LocalStaged {
        file,
        tmp: Some(tmp),
        path: path.to_path_buf(),
    };
    if let (Some(p), Some(tmp)) = (perms, &staged.tmp) {
        set_mode(tmp, p.file)?;
    }
    Ok(Ok(staged))
}

/// A local file written under a temporary name.
struct LocalStaged {
    file: File,
    /// The temporary name, until the file is renamed into place.
    tmp: Option<PathBuf>,
    path: PathBuf,
}

impl Staged for LocalStaged {
    fn commit(mut self: Box<Self>) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        let tmp = self.tmp.as_ref().expect("committed once");
        fs::rename(tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.tmp = None;
        sync_dir(self.path.parent().expect("store paths have a parent"))
    }
}

impl LocalStaged {
    /// [`Staged::commit`] under a name that must not exist yet: the file is
    /// linked to it (atomic, and refused if the name exists, on local
    /// filesystems and NFS alike). `Ok(false)` when the name was taken.
    fn commit_new(mut self) -> Result<bool> {
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        let tmp = self.tmp.clone().expect("committed once");
        match fs::hard_link(&tmp, &self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            // A filesystem without hard links: check, then rename (a
            // writer racing in between is the only way to lose that check).
            Err(_) if self.path.exists() => return Ok(false),
            Err(_) => {
                fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
                self.tmp = None;
            }
        }
        // Dropping removes the temporary name (if the link left it).
        drop(self);
        sync_dir(tmp.parent().expect("store paths have a parent"))?;
        Ok(true)
    }
}

impl Drop for LocalStaged {
    fn drop(&mut self) {
        if let Some(tmp) = &self.tmp {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to
/// disk now, without waiting (`len` 0: to the end), so that a later fsync
/// finds them written or on their way instead of starting it all then. A
/// hint: where it is not supported, the fsync does all the work as before.
#[allow(unsafe_code)]
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; errors come
    // back as the return value, ignored for a hint.
    let _ = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
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

    fn write_new_with(
        &self,
        key: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<bool> {
        let path = self.checked(key)?;
        if path.exists() {
            return Ok(false);
        }
        stage_file(&path, fill, self.perms)?.commit_new()
    }

    fn stage(&self, key: &str, data: &[u8]) -> Result<Box<dyn Staged>> {
        let path = self.checked(key)?;
        if let Some(staged) = stage_direct(&path, data, self.perms)? {
            return Ok(Box::new(staged));
        }
        let staged = stage_file(&path, &mut |w| w.write_all(data), self.perms)?;
        // Write-back starts now, and runs while the caller goes on; the
        // commit's fsync then mostly waits for what is still in flight.
        start_writeback(&staged.file, 0, 0);
        Ok(Box::new(staged))
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

    fn temporaries(&self) -> Result<Vec<Temporary>> {
        let mut found = Vec::new();
        let mut dirs = vec![String::new()];
        while let Some(dir) = dirs.pop() {
            let path = if dir.is_empty() {
                self.root.clone()
            } else {
                self.root.join(&dir)
            };
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                // Removed since it was listed: a concurrent gc or repair.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
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
                // `DirEntry::metadata` does not follow symlinks.
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(entry.path(), e)),
                };
                if meta.is_dir() {
                    dirs.push(key);
                } else if meta.is_file() && name.starts_with(TMP_PREFIX) {
                    let modified = meta.modified().map_err(|e| Error::io(entry.path(), e))?;
                    found.push(Temporary {
                        key,
                        bytes: meta.len(),
                        modified,
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
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

    #[test]
    fn staged_files_appear_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let kept = b.stage("p/kept", b"kept").unwrap();
        let dropped = b.stage("p/dropped", b"dropped").unwrap();
        assert!(b.list("p").unwrap().is_empty(), "visible before commit");
        kept.commit().unwrap();
        drop(dropped);
        assert_eq!(b.read("p/kept").unwrap().unwrap(), b"kept");
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
        assert!(stage_direct(&b.path("x/unaligned"), &bytes[1..], None)
            .unwrap()
            .is_none());
        match stage_direct(&b.path("x/pack"), &bytes, None).unwrap() {
            Some(s) => Box::new(s).commit().unwrap(),
            None => {
                eprintln!("this filesystem refuses O_DIRECT; the buffered path is tested elsewhere");
                return;
            }
        }
        assert!(
            b.read("x/pack").unwrap().unwrap() == *bytes,
            "bytes differ after a direct write"
        );
        assert_eq!(b.list("x").unwrap(), vec!["pack".to_string()]);
    }
}
