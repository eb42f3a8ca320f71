//! Helpers for local files: atomic writes (temporary file, fsync, rename,
//! directory fsync), permissions of a group-shared directory, `flock`, and
//! direct I/O. Only local code uses them: the local backend, the local
//! index, a get's output file. Nothing here is part of the storage door.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::id::unique_suffix;

/// Prefix of temporary files; listings skip them and `gc` removes stale ones.
pub const TMP_PREFIX: &str = ".tmp-";

/// An exclusive `flock`, held until dropped.
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

/// The permission bits of `path`.
pub fn mode_of(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .permissions()
        .mode()
        & 0o7777)
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
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

/// Fsyncs a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io(dir, e))?;
    match crate::hold::io_fault("fsync").and_then(|()| d.sync_all()) {
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
pub fn atomic_write_from(
    path: &Path,
    fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    perms: Option<Perms>,
) -> Result<()> {
    stage_file(path, fill, perms)?.commit()
}

/// What `fill` writes, in a temporary file beside `path`; see [`create_tmp`].
pub fn stage_file(
    path: &Path,
    fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    perms: Option<Perms>,
) -> Result<StagedFile> {
    let mut staged = create_tmp(path, perms, 0)?.map_err(|e| Error::io(path, e))?;
    let mut w = io::BufWriter::with_capacity(64 << 10, &mut staged.file);
    crate::hold::io_fault("write")
        .and_then(|()| fill(&mut w))
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
pub fn stage_direct(path: &Path, data: &[u8], perms: Option<Perms>) -> Result<Option<StagedFile>> {
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
    let written = crate::hold::io_fault("write").and_then(|()| staged.file.write_all_at(&data[..whole], 0));
    match written {
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
/// created), opened for writing with `flags` added; [`StagedFile::commit`]
/// fsyncs it, renames it to `path` and fsyncs the directory, and dropped
/// uncommitted it is removed. The inner error is the open's, so a caller
/// can tell a refused flag.
fn create_tmp(path: &Path, perms: Option<Perms>, flags: i32) -> Result<io::Result<StagedFile>> {
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
    let staged = StagedFile {
        file,
        tmp: Some(tmp),
        path: path.to_path_buf(),
    };
    if let (Some(p), Some(tmp)) = (perms, &staged.tmp) {
        set_mode(tmp, p.file)?;
    }
    Ok(Ok(staged))
}

/// A local file written under a temporary name, in place only once
/// [`StagedFile::commit`]ted; dropped before that, it is removed.
pub struct StagedFile {
    pub(crate) file: File,
    /// The temporary name, until the file is renamed into place.
    tmp: Option<PathBuf>,
    path: PathBuf,
}

impl StagedFile {
    /// Makes the file durable under its name: fsync, rename into place,
    /// fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        crate::hold::io_fault("fsync")
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io(&self.path, e))?;
        let tmp = self.tmp.as_ref().expect("committed once");
        fs::rename(tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.tmp = None;
        sync_dir(self.path.parent().expect("store paths have a parent"))
    }
}

impl Drop for StagedFile {
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
