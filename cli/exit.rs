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
