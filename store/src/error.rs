//! The library's one error type: every variant carries what it is about,
//! every I/O error names its path, and [`Error::hint`] says what to do next.

use std::io;
use std::path::PathBuf;

use crate::id::{ChunkId, ImageId, PackId};
use crate::sif::SifError;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with the operand a user needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The filesystem holding `path` is full.
    #[error("no space left on device while writing {path}")]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// A store object that should be there is not (a pack a manifest
    /// names, a manifest a ref names): damage, or a gc that moved it.
    #[error("store object {key} is missing")]
    Missing {
        /// Its key in the store.
        key: String,
    },
    /// The storage backend failed on an object (not a local file: those
    /// are [`Error::Io`] with their path).
    #[error("store object {key}: {source}")]
    Backend {
        /// The object's key.
        key: String,
        /// What the backend said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A failure inside imgstore itself (a worker thread that stopped, a
    /// panic caught at a thread's edge): a bug to report, not the user's input.
    #[error("internal error: {detail}")]
    Internal {
        /// What failed.
        detail: String,
    },
    /// A ref, image, input file or other named thing does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: Wanted,
    },
    /// The directory is not an imgstore store.
    #[error("{path} is not an imgstore store (no config file)")]
    NoStore {
        /// The directory given as the store.
        path: PathBuf,
    },
    /// A store location that cannot be reached as given: a URL with an
    /// unknown scheme or no bucket, plain HTTP not asked for.
    #[error("store location {location}: {detail}")]
    BadLocation {
        /// The location as given.
        location: String,
        /// What is wrong with it.
        detail: String,
    },
    /// `init` on a directory that holds other files.
    #[error("{path} is not empty and is not an imgstore store")]
    NotEmpty {
        /// The directory given to `init`.
        path: PathBuf,
    },
    /// `init` on a directory that is a store already.
    #[error("{path} is already an imgstore store")]
    AlreadyStore {
        /// The directory given to `init`.
        path: PathBuf,
    },
    /// The store was written by a newer imgstore.
    #[error("store format version {found} is newer than this imgstore supports (up to {supported})")]
    NewerFormat {
        /// Version or feature found in the store.
        found: String,
        /// The newest version this build reads.
        supported: u32,
    },
    /// Stored bytes fail their checks. Names the object and what in it is damaged.
    #[error("corrupt {object}: {detail}")]
    Corrupt {
        /// The damaged object.
        object: Object,
        /// Where and how, e.g. `chunk 3f… at offset 4096: hash mismatch`.
        detail: String,
    },
    /// The store's config object fails its checks: nothing in the store can
    /// be read without its chunker settings.
    #[error("corrupt config: {detail}")]
    CorruptConfig {
        /// How it is damaged.
        detail: String,
    },
    /// A name or tag that the grammar rejects.
    #[error("invalid name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// Input that cannot be stored as given.
    #[error("{reason}")]
    BadInput {
        /// What is wrong with it.
        reason: String,
    },
    /// The input file changed while it was being read.
    #[error("input {path} changed while it was being read")]
    InputChanged {
        /// The input file.
        path: PathBuf,
    },
    /// An image-id prefix that matches more than one image.
    #[error("image id prefix {prefix} is ambiguous: it matches {candidates}")]
    Ambiguous {
        /// The prefix as given.
        prefix: String,
        /// Some of the matching ids.
        candidates: String,
    },
    /// Another process holds what this operation needs.
    #[error("{what} is busy: {holder}")]
    Busy {
        /// The lock or resource.
        what: String,
        /// Who holds it, as far as is known.
        holder: String,
    },
    /// This process's session lease lapsed (it was paused or lost the store),
    /// so it stopped before publishing anything.
    #[error("session lease expired: {detail}")]
    LeaseExpired {
        /// What was noticed.
        detail: String,
    },
    /// The local RocksDB index failed.
    #[error("index at {path}: {detail}")]
    Index {
        /// The index directory.
        path: PathBuf,
        /// RocksDB's message.
        detail: String,
    },
    /// A thread could not be started: the user's process limit (`ulimit -u`,
    /// which counts every thread of the user's processes) is reached.
    #[error("cannot start a thread for {what}: {source}")]
    Threads {
        /// What the thread was for, e.g. `the put's reader`.
        what: String,
        /// The operating system's error (EAGAIN at the limit).
        source: io::Error,
    },
    /// Store settings that are out of range.
    #[error("bad store config: {reason}")]
    BadConfig {
        /// What is out of range.
        reason: String,
    },
    /// A SIF input whose header or descriptors are damaged.
    #[error("SIF header of {path}: {source}")]
    Sif {
        /// The input file.
        path: PathBuf,
        /// What the parser found.
        source: SifError,
    },
}

/// A stored object that can be found damaged: what [`Error::Corrupt`]
/// names. Code that must tell damage apart (verify, get) matches on this,
/// never on an error's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A pack file, by store key.
    Pack {
        /// Its key, `packs/ab/ab12…`.
        key: String,
    },
    /// One frame of a pack: a chunk's, or a group's.
    Frame {
        /// The pack.
        pack: PackId,
        /// Offset of the frame header in the pack.
        offset: u64,
    },
    /// One chunk's bytes, as a put encoded them.
    Chunk(ChunkId),
    /// A run of consecutive chunks a put encoded as one group.
    Chunks {
        /// The first chunk of the run.
        first: ChunkId,
        /// How many chunks the run holds.
        count: usize,
    },
    /// An index segment, by store key.
    Segment {
        /// Its key, `index/ab/ab12…`.
        key: String,
    },
    /// A gc tombstone, by store key.
    Tombstone {
        /// Its key.
        key: String,
    },
    /// An image's manifest, by store key.
    Manifest {
        /// Its key, `manifests/ab/ab12…` (maybe with the delta suffix).
        key: String,
    },
    /// An image whose parts do not add up (a chunk no pack holds, bytes
    /// that do not hash to its id, its manifest missing).
    Image(ImageId),
    /// A ref file.
    Ref {
        /// Its store key, `refs/…`.
        key: String,
        /// The `name:tag` it stands for, when its path gives one.
        tag: Option<String>,
    },
    /// One record of the store's history (`log/`).
    LogEntry {
        /// Its key.
        key: String,
    },
    /// The pending gc plan.
    GcPlan {
        /// Its key.
        key: String,
    },
    /// The gc clock file, which dates condemnations.
    GcClock,
    /// A local file read through the backend (a short read).
    File(PathBuf),
    /// A store object read through a backend other than local files.
    StoreObject(String),
    /// Bytes already in memory.
    InMemory,
    /// The list of manifest entries a put keeps in a temporary file.
    PutSpool,
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Pack { key } => write!(f, "pack {key}"),
            Object::Frame { pack, offset } => write!(f, "pack {} at offset {offset}", crate::pack::key(pack)),
            Object::Chunk(id) => write!(f, "chunk {id}"),
            Object::Chunks { first, count } => write!(f, "the {count} chunks from {first}"),
            Object::Segment { key } => write!(f, "index segment {key}"),
            Object::Tombstone { key } => write!(f, "tombstone {key}"),
            Object::Manifest { key } => write!(f, "manifest {key}"),
            Object::Image(id) => write!(f, "image {id}"),
            Object::Ref { key, tag: Some(tag) } => write!(f, "ref {tag} ({key})"),
            Object::Ref { key, tag: None } => write!(f, "ref {key}"),
            Object::LogEntry { key } => write!(f, "log entry {key}"),
            Object::GcPlan { key } => write!(f, "gc plan {key}"),
            Object::GcClock => write!(f, "gc clock"),
            Object::File(path) => write!(f, "file {}", path.display()),
            Object::StoreObject(key) => write!(f, "store object {key}"),
            Object::InMemory => write!(f, "bytes in memory"),
            Object::PutSpool => write!(f, "the put's temporary entry list"),
        }
    }
}

impl From<&Object> for Object {
    fn from(o: &Object) -> Object {
        o.clone()
    }
}

/// What a [`Error::NotFound`] looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A ref, `name:tag`.
    Ref(String),
    /// An image, by id or id prefix.
    Image(String),
    /// A ref or a name (a report's argument).
    RefOrName(String),
    /// A name (every tag of it).
    Name(String),
    /// An input file.
    InputFile(PathBuf),
    /// An image's definition file.
    Deffile(String),
    /// A pin, by image id.
    Pin(String),
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wanted::Ref(r) => write!(f, "ref {r}"),
            Wanted::Image(i) => write!(f, "image {i}"),
            Wanted::RefOrName(s) => write!(f, "ref or name {s}"),
            Wanted::Name(n) => write!(f, "name {n}"),
            Wanted::InputFile(p) => write!(f, "input file {}", p.display()),
            Wanted::Deffile(image) => write!(f, "definition file of {image}"),
            Wanted::Pin(image) => write!(f, "pin of image {image}"),
        }
    }
}

/// Broad classes of [`Error`], one exit code each in the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Something unexpected: I/O errors, index failures.
    Other,
    /// The request itself is wrong: bad name, bad input, bad option.
    Usage,
    /// The thing asked for does not exist.
    NotFound,
    /// Stored data failed a check.
    Corrupt,
    /// Another process holds a lock, or a lease ran out.
    Busy,
    /// The filesystem is full.
    NoSpace,
    /// The store needs a newer imgstore.
    Incompatible,
}

impl Error {
    /// Wraps an I/O error with its path, turning ENOSPC/EDQUOT into [`Error::NoSpace`].
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace { path },
            _ if source.kind() == io::ErrorKind::StorageFull => Error::NoSpace { path },
            _ => Error::Io { path, source },
        }
    }

    /// `object` is damaged, as `detail` says.
    pub fn corrupt(object: impl Into<Object>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            object: object.into(),
            detail: detail.into(),
        }
    }

    /// A thread for `what` could not be started.
    pub fn threads(what: impl Into<String>, source: io::Error) -> Error {
        Error::Threads {
            what: what.into(),
            source,
        }
    }

    /// `what` does not exist.
    pub fn not_found(what: Wanted) -> Error {
        Error::NotFound { what }
    }

    /// Whether the storage server gave no answer, even after the retries
    /// (see [`crate::backend::Unanswered`]).
    pub fn is_unanswered(&self) -> bool {
        matches!(self, Error::Backend { source, .. } if source.is::<crate::backend::Unanswered>())
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Index { .. } | Error::Backend { .. } | Error::Internal { .. } => {
                ErrorKind::Other
            }
            Error::Missing { .. } | Error::CorruptConfig { .. } => ErrorKind::Corrupt,
            Error::NoSpace { .. } => ErrorKind::NoSpace,
            Error::NotFound { .. } | Error::NoStore { .. } => ErrorKind::NotFound,
            Error::NewerFormat { .. } => ErrorKind::Incompatible,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Busy { .. } | Error::LeaseExpired { .. } | Error::Threads { .. } => ErrorKind::Busy,
            Error::NotEmpty { .. }
            | Error::AlreadyStore { .. }
            | Error::BadName { .. }
            | Error::BadLocation { .. }
            | Error::BadInput { .. }
            | Error::InputChanged { .. }
            | Error::Ambiguous { .. }
            | Error::BadConfig { .. }
            | Error::Sif { .. } => ErrorKind::Usage,
        }
    }

    /// The next step for the user, where there is one.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Error::NoSpace { .. } => "free space on that filesystem and run the command again; nothing was published",
            Error::NoStore { .. } => "create one with `imgstore init`, or point --store / IMGSTORE_STORE at an existing store",
            Error::NotEmpty { .. } => "choose an empty or new directory for the store",
            Error::NewerFormat { .. } => "upgrade imgstore to a version that supports this store format",
            Error::CorruptConfig { .. } => {
                "restore STORE/config from a backup or another copy of the store; `imgstore verify` lists the images it affects"
            }
            Error::Corrupt { .. } | Error::Missing { .. } => {
                "run `imgstore verify` to list the damaged images; other images are unaffected"
            }
            Error::BadLocation { .. } => "a store is a directory, or a URL: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX",
            Error::Backend { .. } => "check the store's URL, the credentials and the network; failed requests were retried, with backoff, for IMGSTORE_RETRY_SECS (default 180) before this error",
            Error::Internal { .. } => "this is a bug in imgstore: please report it with the command that failed",
            Error::BadName { .. } => "names look like `lab/app:3f2c1e`: lowercase path components of [a-z0-9._-], a tag of [A-Za-z0-9._-] up to 128 characters",
            Error::InputChanged { .. } => "wait until the image is completely written, then put it again",
            Error::Ambiguous { .. } => "give more hex digits of the image id",
            Error::Busy { .. } => "wait for the other process to finish, or retry later",
            Error::LeaseExpired { .. } => "the process was paused or cut off for longer than its lease; run it again",
            Error::Threads { .. } => "the per-user process limit is reached (`ulimit -u`; every thread of your processes counts): end other processes or ask for a higher limit, then run the command again",
            Error::Index { .. } => "the local index is derived data: run `imgstore index rebuild` to recreate it from the store",
            Error::Sif { .. } => "the SIF file looks damaged; check it with `apptainer sif list`, or rebuild it",
            Error::NotFound {
                what: Wanted::Ref(_) | Wanted::Image(_) | Wanted::RefOrName(_) | Wanted::Name(_),
            } => {
                "list what the store holds with `imgstore ls`"
            }
            Error::NotFound { what: Wanted::Pin(_) } => "list the pins with `imgstore ls --pins`",
            _ => return None,
        };
        Some(hint.to_string())
    }
}
