//! The one narrow door to the store's bytes, in object-store terms.
//!
//! Everything the store keeps goes through [`Backend`]: put a whole
//! immutable object, get it or a range of it, list a prefix (in pages),
//! delete, and an object's size and last-modified time. That is what S3,
//! GCS and Azure offer, so an object-store backend changes nothing above
//! this module. Objects are written once under a unique key or replaced
//! whole; no step of put, gc or repair rests on put-if-absent or any other
//! compare-and-swap (docs/ARCHITECTURE.md, "What the backend must do").
//!
//! [`LocalBackend`] keeps a store in a directory (local disk or NFS);
//! [`MemoryBackend`] keeps one in memory, with injectable faults, for tests.

mod aws_profile;
mod local;
mod memory;
mod object;

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{Error, Object, Result};

pub use local::LocalBackend;
pub use memory::{CutAt, Fault, Held, MemoryBackend};
pub use object::{is_url, ObjectBackend, ObjectOptions, Requests};

/// The source of an [`Error::Backend`] when the server gave no answer
/// (a connection refused, reset or timed out) even after the retries: a
/// caller about to ask the same server again at once need not. Shown as
/// the error it wraps.
#[derive(Debug)]
pub struct Unanswered(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Unanswered {
    /// The wrapped error's source: the chain reads as if it were not wrapped.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Random-access reads of one stored object (a ranged get).
pub trait ReadAt: Send + Sync {
    /// Fills `buf` from `offset`, or fails (a short object is an error).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// The object's length.
    fn size(&self) -> Result<u64>;
}

/// An object already read into memory (a pack checked after one whole read,
/// a manifest), read like a stored one; reading past its end is a short file.
pub struct InMemory<'a>(pub &'a [u8]);

impl ReadAt for InMemory<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| Error::corrupt(Object::InMemory, format!("too short at offset {offset}")))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// Bytes of a [`Blocks`] read per request.
const BLOCK: u64 = 1 << 20;
/// Blocks a [`Blocks`] keeps: the one being walked, and the one before
/// (a read may straddle them).
const KEPT_BLOCKS: usize = 2;

/// Reads of an object in aligned blocks of [`BLOCK`], the last few kept:
/// where each read is a request (object storage), many small reads that
/// walk a file cost a request a block. A delta manifest reads its base one
/// run at a time: a get of a 1 GiB image stored as a delta made 185 GETs
/// of a few hundred bytes for it, one after another, ~40 ms each on
/// s3s-fs.
pub struct Blocks {
    file: Box<dyn ReadAt>,
    kept: std::sync::Mutex<std::collections::VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl Blocks {
    /// `file`, read a block at a time.
    pub fn new(file: Box<dyn ReadAt>) -> Blocks {
        Blocks {
            file,
            kept: Default::default(),
        }
    }

    /// Block `index`, from those kept or read now; `None` past the end.
    fn block(&self, index: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, b)) = kept.iter().find(|(i, _)| *i == index) {
            return Ok(Some(b.clone()));
        }
        let start = index * BLOCK;
        let size = self.file.size()?;
        if start >= size {
            return Ok(None);
        }
        let mut data = vec![0u8; (size - start).min(BLOCK) as usize];
        self.file.read_exact_at(&mut data, start)?;
        let data = Arc::new(data);
        if kept.len() == KEPT_BLOCKS {
            kept.pop_front();
        }
        kept.push_back((index, data.clone()));
        Ok(Some(data))
    }
}

impl ReadAt for Blocks {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let from = (at % BLOCK) as usize;
            let n = match self.block(at / BLOCK)? {
                Some(b) if from < b.len() => {
                    let n = (b.len() - from).min(buf.len() - done);
                    buf[done..done + n].copy_from_slice(&b[from..from + n]);
                    n
                }
                // Past the end: the object's own read says how.
                _ => return self.file.read_exact_at(&mut buf[done..], at),
            };
            done += n;
        }
        Ok(())
    }

    fn size(&self) -> Result<u64> {
        self.file.size()
    }
}

/// One stored object's facts, as [`Backend::head`] finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key, from the store's root: `packs/ab/ab12…`.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, by the store's clock (never the host's).
    pub modified: SystemTime,
}

/// The last component of a key: `packs/ab/ab12…` -> `ab12…`.
pub fn key_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// One page of a listing: up to a backend's page size of keys, in order,
/// and whether more follow.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// The keys, sorted.
    pub keys: Vec<String>,
    /// More keys follow the last one: ask again with it as `after`.
    pub more: bool,
}

/// A write that an interrupted writer left unfinished: a temporary file in a
/// directory, an unfinished multipart upload in object storage.
#[derive(Debug, Clone)]
pub struct PartialWrite {
    /// Its key; [`Backend::delete`] takes it.
    pub key: String,
    /// Bytes it holds.
    pub bytes: u64,
    /// When it was last written, by the store's clock.
    pub modified: SystemTime,
    /// The writing process's id, where its name records one: gc keeps the
    /// partial writes of processes with a live session.
    pub pid: Option<u32>,
}

/// An object from [`Backend::stage`], written but not yet in place.
pub trait Staged: Send {
    /// Makes the object durable and visible under its key.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// What [`Backend::stage_owned`] gives: the staged object, and the buffer
/// back where the backend is done with it.
pub type StagedBuffer = (Box<dyn Staged>, Option<Vec<u8>>);

/// A staged object that was written whole already.
struct Written;

impl Staged for Written {
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A read from [`Backend::read_ahead`], perhaps still in flight. Dropped
/// unwaited, it is stopped where it is.
pub trait Pending: Send {
    /// The bytes, once they are all there; a short object is an error.
    fn wait(self: Box<Self>) -> Result<Vec<u8>>;
}

/// A read done already.
struct Read(Result<Vec<u8>>);

impl Pending for Read {
    fn wait(self: Box<Self>) -> Result<Vec<u8>> {
        self.0
    }
}

/// Holds a [`Backend::lock`] until dropped (or nothing, where the backend
/// has no locks).
pub struct Lock {
    _held: Option<Box<dyn Send + Sync>>,
}

impl Lock {
    /// A lock that holds nothing: what a backend without locks gives.
    pub fn none() -> Lock {
        Lock { _held: None }
    }

    /// A lock held by `guard` until dropped.
    pub fn held(guard: impl Send + Sync + 'static) -> Lock {
        Lock {
            _held: Some(Box::new(guard)),
        }
    }
}

/// Filler of a streamed [`Backend::put_with`].
pub type Fill<'a> = dyn FnMut(&mut dyn Write) -> io::Result<()> + 'a;

/// Storage for the store's objects, addressed by `/`-separated keys.
pub trait Backend: Send + Sync {
    /// Where the store is, for people: a path or a URL.
    fn location(&self) -> String;
    /// Writes `data` as the whole object `key`, atomically: readers see the
    /// old object or the whole new one, never a part. Durable when this
    /// returns.
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put_with(key, &mut |w| w.write_all(data))
    }
    /// [`Backend::put`] of what `fill` writes: for objects too large to
    /// build in memory first (a manifest of a many-GB image).
    fn put_with(&self, key: &str, fill: &mut Fill) -> Result<()>;
    /// [`Backend::put`] in two steps, so a writer can reuse `data`'s buffer
    /// before the object is durable: the bytes are handed over now, and the
    /// object appears under `key`, durable, only at [`Staged::commit`].
    /// Dropped uncommitted, it never appears. Backends without a cheaper way
    /// write it whole here and commit nothing.
    fn stage(&self, key: &str, data: &[u8]) -> Result<Box<dyn Staged>> {
        self.put(key, data)?;
        Ok(Box::new(Written))
    }
    /// [`Backend::stage`] of `buf[start..]`, the buffer handed over. A
    /// backend that uploads while the caller goes on (object storage)
    /// keeps it for the upload instead of copying it, and gives back
    /// `None`; one done with the bytes once staged gives the buffer back
    /// to be reused.
    fn stage_owned(&self, key: &str, buf: Vec<u8>, start: usize) -> Result<StagedBuffer> {
        let staged = self.stage(key, &buf[start..])?;
        Ok((staged, Some(buf)))
    }
    /// Reads the whole of `key`. `Ok(None)` if it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Opens `key` for ranged gets; a missing key is [`Error::Missing`].
    fn open(&self, key: &str) -> Result<Box<dyn ReadAt>>;
    /// [`Backend::open`] where a missing key may be found only at the
    /// first read (also as [`Error::Missing`]): what pack reads use, where
    /// asking first costs a request (object storage).
    fn open_unchecked(&self, key: &str) -> Result<Box<dyn ReadAt>> {
        self.open(key)
    }
    /// Size and last-modified time of `key`. `Ok(None)` if it does not exist.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;
    /// One page of the keys under `prefix` (a key's directory part:
    /// `packs` lists `packs/…`; empty lists everything), in order, starting
    /// after the key `after`. Keys only: a local listing would otherwise
    /// stat every file (each command lists every index segment), and what
    /// needs an object's size or time asks [`Backend::head`].
    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage>;
    /// Every key under `prefix`, in order: all pages of
    /// [`Backend::list_page`].
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let page = self.list_page(prefix, out.last().map(String::as_str))?;
            let more = page.more && !page.keys.is_empty();
            out.extend(page.keys);
            if !more {
                return Ok(out);
            }
        }
    }
    /// Every key under `prefix` with its last-modified time, in order,
    /// where a listing carries times (object storage); `None` elsewhere,
    /// where a listing is keys only and times cost a call each.
    fn list_modified(&self, prefix: &str) -> Result<Option<Vec<(String, SystemTime)>>> {
        let _ = prefix;
        Ok(None)
    }
    /// Every key under `prefix` with its ETag (a different ETag for
    /// different contents), in order, where a listing carries them (object
    /// storage); `None` elsewhere, where reading a small object costs about
    /// what asking for its ETag would.
    fn list_etags(&self, prefix: &str) -> Result<Option<Vec<(String, String)>>> {
        let _ = prefix;
        Ok(None)
    }
    /// Every key under `prefix` with its size, in order. A listing of
    /// object storage carries sizes; elsewhere each object is asked.
    fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for key in self.list(prefix)? {
            // Gone since the listing (a gc deleted it): not counted.
            if let Some(meta) = self.head(&key)? {
                out.push((key, meta.size));
            }
        }
        Ok(out)
    }
    /// Removes `key`; removing a missing key is not an error. Durable when
    /// this returns, as a put is: a removed ref must not come back after a
    /// crash once gc may have deleted what only it needed.
    fn delete(&self, key: &str) -> Result<()>;
    /// An advisory exclusive lock named `key`, held until the guard drops.
    /// `Ok(None)` when another process holds it and `wait` is false. Locks
    /// only avoid wasted work (two gcs condemning at once); no safety
    /// property rests on them, so a backend without locks gives
    /// [`Lock::none`].
    fn lock(&self, key: &str, wait: bool) -> Result<Option<Lock>> {
        let _ = (key, wait);
        Ok(Some(Lock::none()))
    }
    /// Writes that interrupted writers left unfinished, sorted by key;
    /// [`Backend::delete`] of a key removes one.
    fn partial_writes(&self) -> Result<Vec<PartialWrite>> {
        Ok(Vec::new())
    }
    /// Entries in the store that are not objects and that verify should
    /// name (a symlink or a device planted in a store directory), with what
    /// each is. Object storage has none.
    fn foreign_entries(&self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }
    /// Starts reading `len` bytes of `key` at `offset`, for
    /// [`Pending::wait`] to take later: what a get reads of its next
    /// batches' packs while it decodes this one. Object storage sends the
    /// request now and keeps several in flight; a backend without a
    /// cheaper way reads here.
    fn read_ahead(&self, key: &str, offset: u64, len: u64) -> Box<dyn Pending> {
        let read = usize::try_from(len)
            .map_err(|_| Error::Internal {
                detail: format!("a read of {len} bytes of {key}"),
            })
            .and_then(|n| {
                let mut buf = vec![0u8; n];
                self.open(key)?.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            });
        Box::new(Read(read))
    }
    /// Requests made so far, where each call is a billed request (object
    /// storage); `None` for a directory.
    fn requests(&self) -> Option<Requests> {
        None
    }
}

/// The backend for a store at `location`: a URL of an object store
/// (`s3://`, `gs://`, `az://`), else a directory (local or NFS).
pub fn at(location: &str, opts: &ObjectOptions) -> Result<Arc<dyn Backend>> {
    if is_url(location) {
        return Ok(Arc::new(ObjectBackend::connect(location, opts)?));
    }
    local_at(Path::new(location))
}

/// The backend for a store in the directory `location`.
pub fn local_at(location: &Path) -> Result<Arc<dyn Backend>> {
    if !location.is_dir() {
        return Err(Error::NoStore {
            path: location.into(),
        });
    }
    Ok(Arc::new(LocalBackend::new(location)))
}

/// A key made only of plain relative components: none empty, `.` or `..`,
/// none with a NUL. Keys come from this crate, never from users, but one
/// that could climb out of a store is refused all the same.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

/// `key` if it is a [`valid_key`], else an error naming it: keys are made
/// by this crate from checked names, so a bad one is a bug.
pub(crate) fn checked(key: &str) -> Result<&str> {
    if valid_key(key) {
        Ok(key)
    } else {
        Err(Error::Internal {
            detail: format!("store key {key:?} is not a plain relative path"),
        })
    }
}

/// The part of `prefix` that keys under it start with (`packs` -> `packs/`).
pub(crate) fn dir_prefix(prefix: &str) -> String {
    match prefix.trim_end_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
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

    /// Both backends keep the same contract: whole replacement, listing
    /// in key order across directories and pages, missing keys.
    #[test]
    fn both_backends_keep_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let backends: Vec<Box<dyn Backend>> = vec![
            Box::new(LocalBackend::new(dir.path())),
            Box::new(MemoryBackend::with_page_size(2)),
        ];
        for b in backends {
            let b = b.as_ref();
            b.put("a/b/c", b"one").unwrap();
            b.put("a/b/c", b"two").unwrap();
            b.put("a/x", b"x").unwrap();
            b.put("a/b/d", b"dd").unwrap();
            b.put("ab", b"not under a").unwrap();
            assert_eq!(b.get("a/b/c").unwrap().unwrap(), b"two");
            assert_eq!(b.get("a/b/missing").unwrap(), None);
            assert_eq!(
                b.list("a").unwrap(),
                ["a/b/c", "a/b/d", "a/x"],
                "{}",
                b.location()
            );
            let all = b.list("").unwrap();
            assert_eq!(all.len(), 4);
            assert_eq!(b.head("a/b/d").unwrap().unwrap().size, 2);
            assert!(b.head("a/b/nope").unwrap().is_none());
            let mut buf = [0u8; 1];
            b.open("a/b/d").unwrap().read_exact_at(&mut buf, 1).unwrap();
            assert_eq!(&buf, b"d");
            assert!(matches!(b.open("a/b/nope").err(), Some(Error::Missing { .. })));
            assert!(b.open("a/b/d").unwrap().read_exact_at(&mut [0; 3], 0).is_err());
            b.delete("a/b/c").unwrap();
            b.delete("a/b/c").unwrap();
            assert!(b.list("nope").unwrap().is_empty());
            assert!(b.put("../x", b"").is_err());
            let staged = b.stage("s/kept", b"kept").unwrap();
            staged.commit().unwrap();
            assert_eq!(b.get("s/kept").unwrap().unwrap(), b"kept");
        }
    }

    /// An object that counts its reads.
    struct Counted(Vec<u8>, std::sync::atomic::AtomicUsize);

    impl ReadAt for Counted {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            InMemory(&self.0).read_exact_at(buf, offset)
        }

        fn size(&self) -> Result<u64> {
            Ok(self.0.len() as u64)
        }
    }

    #[test]
    fn blocks_read_a_block_once_and_the_same_bytes() {
        let data: Vec<u8> = (0..(2 * BLOCK + 1000)).map(|i| (i * 7 % 251) as u8).collect();
        let file = std::sync::Arc::new(Counted(data.clone(), Default::default()));
        struct Shared(std::sync::Arc<Counted>);
        impl ReadAt for Shared {
            fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
                self.0.read_exact_at(buf, offset)
            }
            fn size(&self) -> Result<u64> {
                self.0.size()
            }
        }
        let blocks = Blocks::new(Box::new(Shared(file.clone())));
        // Small reads walking the whole object, some straddling blocks.
        let mut at = 0u64;
        while at < data.len() as u64 {
            let n = 333.min(data.len() as u64 - at) as usize;
            let mut buf = vec![0u8; n];
            blocks.read_exact_at(&mut buf, at).unwrap();
            assert_eq!(buf, data[at as usize..at as usize + n]);
            at += n as u64;
        }
        assert_eq!(
            file.1.load(std::sync::atomic::Ordering::Relaxed),
            3,
            "one read a block"
        );
        let mut past = [0u8; 10];
        assert!(matches!(
            blocks.read_exact_at(&mut past, data.len() as u64 - 5),
            Err(Error::Corrupt { .. })
        ));
    }
}
