//! Exit codes, one per class of error (listed in docs/CLI.md).

use imgstore_store::ErrorKind;

/// Success.
pub const OK: i32 = 0;
/// Anything not classified below.
pub const OTHER: i32 = 1;
/// Bad command line, bad name, bad input (clap uses 2 for usage too).
pub const USAGE: i32 = 2;
/// Ref, image, input file or store not found.
pub const NOT_FOUND: i32 = 3;
/// Stored data failed a check.
pub const CORRUPT: i32 = 4;
/// Busy: another process holds a lock, or a lease expired.
pub const BUSY: i32 = 5;
/// No space left on a filesystem.
pub const NO_SPACE: i32 = 6;
/// The store needs a newer imgstore.
pub const INCOMPATIBLE: i32 = 7;

/// The exit code for a library error class.
pub fn code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Other => OTHER,
        ErrorKind::Usage => USAGE,
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::Corrupt => CORRUPT,
        ErrorKind::Busy => BUSY,
        ErrorKind::NoSpace => NO_SPACE,
        ErrorKind::Incompatible => INCOMPATIBLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgstore_store::sif::SifError;
    use imgstore_store::{Digest, Error, ImageId, Object, Wanted};

    /// Every variant of the library's error, with the exit code it must
    /// give. The code comes from the variant alone: a corruption exits 4
    /// whatever it names and whatever its text says (even "not found").
    #[test]
    fn each_error_variant_has_its_exit_code() {
        let io = || std::io::Error::other("x");
        let s = |t: &str| t.to_string();
        let id = Digest::of(b"x");
        let objects = [
            Object::Pack {
                key: s("packs/ab/ab"),
            },
            Object::Frame { pack: id, offset: 32 },
            Object::Chunk(id),
            Object::Chunks { first: id, count: 2 },
            Object::Segment {
                key: s("index/ab/ab"),
            },
            Object::Tombstone {
                key: s("gc/tombstones/ab"),
            },
            Object::Manifest {
                key: s("manifests/ab/ab"),
            },
            Object::Image(ImageId(id)),
            Object::Ref {
                key: s("refs/a/@b"),
                tag: Some(s("a:b")),
            },
            Object::LogEntry { key: s("log/1.json") },
            Object::GcPlan { key: s("gc/plan") },
            Object::GcClock,
            Object::File("/tmp/f".into()),
            Object::StoreObject(s("packs/ab/ab")),
            Object::InMemory,
            Object::PutSpool,
        ];
        let mut cases: Vec<(Error, i32)> = objects
            .into_iter()
            .map(|object| {
                (
                    Error::corrupt(object, "ref a:b not found; busy; no space left"),
                    CORRUPT,
                )
            })
            .collect();
        cases.extend([
            (
                Error::Io {
                    path: "p".into(),
                    source: io(),
                },
                OTHER,
            ),
            (Error::NoSpace { path: "p".into() }, NO_SPACE),
            (
                Error::Missing {
                    key: s("packs/ab/ab"),
                },
                CORRUPT,
            ),
            (
                Error::Backend {
                    key: s("k"),
                    source: Box::new(io()),
                },
                OTHER,
            ),
            (
                Error::Internal {
                    detail: s("corrupt pack"),
                },
                OTHER,
            ),
            (Error::not_found(Wanted::Ref(s("a:b"))), NOT_FOUND),
            (Error::not_found(Wanted::Image(s("ab12"))), NOT_FOUND),
            (Error::not_found(Wanted::RefOrName(s("a"))), NOT_FOUND),
            (Error::not_found(Wanted::Name(s("a"))), NOT_FOUND),
            (Error::not_found(Wanted::InputFile("/x".into())), NOT_FOUND),
            (Error::not_found(Wanted::Deffile(s("a:b"))), NOT_FOUND),
            (Error::not_found(Wanted::Pin(s("blake3:ab"))), NOT_FOUND),
            (Error::NoStore { path: "p".into() }, NOT_FOUND),
            (Error::NotEmpty { path: "p".into() }, USAGE),
            (Error::AlreadyStore { path: "p".into() }, USAGE),
            (
                Error::NewerFormat {
                    found: s("2"),
                    supported: 1,
                },
                INCOMPATIBLE,
            ),
            (Error::CorruptConfig { detail: s("x") }, CORRUPT),
            (
                Error::BadName {
                    name: s("A"),
                    reason: s("x"),
                },
                USAGE,
            ),
            (Error::BadInput { reason: s("corrupt") }, USAGE),
            (Error::InputChanged { path: "p".into() }, USAGE),
            (
                Error::Ambiguous {
                    prefix: s("ab"),
                    candidates: s("x"),
                },
                USAGE,
            ),
            (
                Error::Busy {
                    what: s("gc"),
                    holder: s("x"),
                },
                BUSY,
            ),
            (Error::LeaseExpired { detail: s("x") }, BUSY),
            (
                Error::Index {
                    path: "p".into(),
                    detail: s("corrupt"),
                },
                OTHER,
            ),
            (
                Error::Threads {
                    what: s("x"),
                    source: io(),
                },
                BUSY,
            ),
            (Error::BadConfig { reason: s("x") }, USAGE),
            (
                Error::Sif {
                    path: "p".into(),
                    source: SifError::NotSif,
                },
                USAGE,
            ),
        ]);
        for (e, want) in cases {
            assert_eq!(code(e.kind()), want, "{e:?}");
        }
    }
}
