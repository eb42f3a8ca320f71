//! The library's one error type: every variant carries what it is about,
//! every I/O error names its path, and [`Error::hint`] says what to do next.

use std::io;
use std::path::PathBuf;

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
        /// What was looked for, e.g. `ref lab/app:v1`.
        what: String,
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
    /// Stored bytes fail their checks. Names the file and what in it is damaged.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// The damaged object, e.g. `pack packs/ab/ab12…`.
        what: String,
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

    /// A corruption error for `what`.
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
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

    /// A not-found error for `what`.
    pub fn not_found(what: impl Into<String>) -> Error {
        Error::NotFound { what: what.into() }
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
            Error::Backend { .. } => "check the store's URL, the credentials and the network; requests that failed were retried before this error",
            Error::Internal { .. } => "this is a bug in imgstore: please report it with the command that failed",
            Error::BadName { .. } => "names look like `lab/app:3f2c1e`: lowercase path components of [a-z0-9._-], a tag of [A-Za-z0-9._-] up to 128 characters",
            Error::InputChanged { .. } => "wait until the image is completely written, then put it again",
            Error::Ambiguous { .. } => "give more hex digits of the image id",
            Error::Busy { .. } => "wait for the other process to finish, or retry later",
            Error::LeaseExpired { .. } => "the process was paused or cut off for longer than its lease; run it again",
            Error::Threads { .. } => "the per-user process limit is reached (`ulimit -u`; every thread of your processes counts): end other processes or ask for a higher limit, then run the command again",
            Error::Index { .. } => "the local index is derived data: run `imgstore index rebuild` to recreate it from the store",
            Error::Sif { .. } => "the SIF file looks damaged; check it with `apptainer sif list`, or rebuild it",
            Error::NotFound { what } if what.starts_with("ref") || what.starts_with("image") => {
                "list what the store holds with `imgstore ls`"
            }
            _ => return None,
        };
        Some(hint.to_string())
    }
}
