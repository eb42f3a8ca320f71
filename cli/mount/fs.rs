//! The FUSE filesystem: lookups and listings from a [`Tree`] refreshed
//! after [`REFRESH`], reads through the store's [`StoreReader`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};
use imgstore_store::{ImageId, ImageReader, RefRecord, Store, StoreReader, TagRef};

use super::tree::{Inodes, Node, Tree, ROOT};

/// How long a listing of the refs is used before it is taken again, and how
/// long the kernel may cache names and attributes: a new put or a removed
/// tag shows within about this long.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Largest read the kernel is asked to send (it splits larger ones).
const MAX_READ: usize = 1 << 20;

struct Listing {
    tree: Arc<Tree>,
    taken: Instant,
    inodes: Inodes,
    /// Whether each image seen is a SIF file (images never change).
    sif: HashMap<ImageId, bool>,
}

/// One open file: the image it was when opened, whatever its tag does later.
struct Handle {
    reader: Arc<ImageReader>,
    ino: u64,
    mtime: u64,
}

/// The read-only view of a store.
pub struct ImageFs {
    store: Arc<Store>,
    /// Its lease renewed every [`StoreReader::renew_every`] by a thread of
    /// its own: gc deletes nothing it condemned while a lease it saw is
    /// live, so a mount that kept one lease would hold gc back for as long
    /// as it runs.
    reader: Arc<StoreReader>,
    /// Names shown (and the names below them); all if empty.
    names: Vec<String>,
    listing: Mutex<Listing>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Images open, shared by the handles on them.
    images: Mutex<HashMap<ImageId, Weak<ImageReader>>>,
    next_handle: AtomicU64,
    uid: u32,
    gid: u32,
}

impl ImageFs {
    /// A view of `store` showing `names` (every name if empty). Takes the
    /// first listing, so a store that cannot be listed fails here.
    pub fn new(store: Arc<Store>, names: Vec<String>) -> anyhow::Result<ImageFs> {
        let reader = Arc::new(store.reader()?);
        // Weak: once the filesystem is gone its lease goes too, not when
        // this thread next wakes.
        let shared = Arc::downgrade(&reader);
        std::thread::Builder::new()
            .name("imgstore-lease".into())
            .spawn(move || loop {
                std::thread::sleep(StoreReader::renew_every());
                let Some(reader) = shared.upgrade() else {
                    return;
                };
                if let Err(e) = reader.renew_lease() {
                    tracing::warn!("renewing the mount's lease failed, keeping the old: {e}");
                }
            })?;
        let fs = ImageFs {
            store,
            reader,
            names,
            listing: Mutex::new(Listing {
                tree: Arc::new(Tree::default()),
                taken: Instant::now(),
                inodes: Inodes::default(),
                sif: HashMap::new(),
            }),
            handles: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            // SAFETY: plain getters with no preconditions.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
        };
        let mut l = fs.listing.lock().expect("listing");
        fs.relist(&mut l)?;
        drop(l);
        Ok(fs)
    }

    fn refs(&self) -> imgstore_store::Result<Vec<(TagRef, RefRecord)>> {
        if self.names.is_empty() {
            return self.store.refs_for_display(None);
        }
        let mut out = Vec::new();
        for n in &self.names {
            let below = format!("{n}/");
            out.extend(
                self.store
                    .refs_for_display(Some(n))?
                    .into_iter()
                    .filter(|(t, _)| t.name == *n || t.name.starts_with(&below)),
            );
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn relist(&self, l: &mut Listing) -> imgstore_store::Result<()> {
        let refs = self.refs()?;
        for (_, r) in &refs {
            l.sif
                .entry(r.image)
                .or_insert_with(|| match self.store.manifest_file(&r.image) {
                    Ok(m) => m.head.meta.sif.is_some(),
                    Err(e) => {
                        tracing::warn!("image {}: {e}; shown as .img", r.image);
                        false
                    }
                });
        }
        let sif = l.sif.clone();
        l.tree = Arc::new(Tree::build(
            &refs,
            &|id| sif.get(id).copied().unwrap_or(false),
            &mut l.inodes,
        ));
        l.taken = Instant::now();
        Ok(())
    }

    /// The current tree, listed again if older than [`REFRESH`]. A failed
    /// listing (store unreachable) keeps the last one.
    fn tree(&self) -> Arc<Tree> {
        let mut l = self.listing.lock().expect("listing");
        if l.taken.elapsed() >= REFRESH {
            if let Err(e) = self.relist(&mut l) {
                tracing::warn!("listing the store's refs failed, showing the last listing: {e}");
                l.taken = Instant::now();
            }
        }
        l.tree.clone()
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, size, mtime, nlink) = match node {
            Node::Dir { children, mtime } => {
                (FileType::Directory, 0o555, 0, *mtime, 2 + children.len() as u32)
            }
            Node::File { size, mtime, .. } => (FileType::RegularFile, 0o444, *size, *mtime, 1),
        };
        let time = UNIX_EPOCH + Duration::from_secs(mtime);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 16,
            flags: 0,
        }
    }

    /// The reader of `image`, shared with other handles on it.
    fn image(&self, image: &ImageId) -> imgstore_store::Result<Arc<ImageReader>> {
        let mut images = self.images.lock().expect("images");
        if let Some(r) = images.get(image).and_then(Weak::upgrade) {
            return Ok(r);
        }
        images.retain(|_, w| w.strong_count() > 0);
        let reader = StoreReader::clone(&self.reader);
        let r = Arc::new(reader.open_id(image)?);
        images.insert(*image, Arc::downgrade(&r));
        Ok(r)
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READ as u32);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = self.tree();
        let found = match (tree.nodes.get(&parent.0), name.to_str()) {
            (Some(Node::Dir { children, .. }), Some(name)) => children.get(name).copied(),
            _ => None,
        };
        match found.and_then(|ino| tree.nodes.get(&ino).map(|n| (ino, n))) {
            Some((ino, node)) => reply.entry(&REFRESH, &self.attr(ino, node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // An open file keeps its attributes after its tag is removed.
        if let Some(fh) = fh {
            if let Some(h) = self.handles.lock().expect("handles").get(&fh.0) {
                let node = Node::File {
                    image: h.reader.id(),
                    size: h.reader.size(),
                    mtime: h.mtime,
                };
                return reply.attr(&REFRESH, &self.attr(h.ino, &node));
            }
        }
        let tree = self.tree();
        match tree.nodes.get(&ino.0) {
            Some(node) => reply.attr(&REFRESH, &self.attr(ino.0, node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let tree = self.tree();
        let (image, mtime) = match tree.nodes.get(&ino.0) {
            Some(Node::File { image, mtime, .. }) => (*image, *mtime),
            Some(Node::Dir { .. }) => return reply.error(Errno::EISDIR),
            None => return reply.error(Errno::ENOENT),
        };
        let reader = match self.image(&image) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("opening image {image}: {e}");
                return reply.error(Errno::EIO);
            }
        };
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("handles").insert(
            fh,
            Handle {
                reader,
                ino: ino.0,
                mtime,
            },
        );
        // An inode is one image (a moved tag is a new inode), so the kernel
        // may keep its pages across opens.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let reader = match self.handles.lock().expect("handles").get(&fh.0) {
            Some(h) => h.reader.clone(),
            None => return reply.error(Errno::EBADF),
        };
        let mut buf = vec![0u8; (size as usize).min(MAX_READ)];
        match reader.read_at(offset, &mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => {
                // Never wrong bytes: a chunk that fails its check fails the read.
                tracing::error!(
                    "read of {size} bytes at offset {offset} of image {}: {e}",
                    reader.id()
                );
                reply.error(Errno::EIO)
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().expect("handles").remove(&fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    // Permissions are the kernel's (`default_permissions`); images carry no
    // extended attributes.
    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    // ENOSYS, once: the kernel then fails every later getxattr itself
    // (EOPNOTSUPP, "not supported") without a round trip here. `ls -l` asks
    // two per file (its ACL and its SELinux label): answered "none" here
    // each time, they were two thirds of the requests of an `ls -lR`
    // (strace -c: 2,046 statx, 2,046 getxattr, 2,023 lgetxattr).
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    // An empty list, as before: `ls -l` does not ask, and copying tools
    // that do (`cp -a`, `tar --xattrs`) see no attributes rather than an error.
    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let tree = self.tree();
        let Some(Node::Dir { children, .. }) = tree.nodes.get(&ino.0) else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [
            (ino.0, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
        ];
        let entries = dots.into_iter().chain(children.iter().map(|(name, child)| {
            let kind = match tree.nodes.get(child) {
                Some(Node::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            (*child, kind, name.as_str())
        }));
        for (i, (child, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
