//! Test-only hold and crash points at named steps of a put or get, built
//! only with the `test-hooks` feature (what `cargo test` builds).
//!
//! `IMGSTORE_TEST_HOLD=<step>` makes the process create `<step>.held` in
//! `IMGSTORE_TEST_HOLD_DIR` and wait until that file is removed;
//! `IMGSTORE_TEST_CRASH=<step>` aborts the process at that step (as a kill
//! would); `IMGSTORE_TEST_PANIC=<step>` panics there (a bug, which must end
//! as an error, not an abort). All are read once per step and cost nothing
//! when unset. They let
//! tests place a SIGKILL or a concurrent GC at an exact point instead of
//! hoping a timer lands there.
//!
//! Faults at real boundaries: `IMGSTORE_TEST_EIO=fsync:<n>` or `write:<n>`
//! fails the n-th fsync or file write of the store's files with EIO
//! ([`io_fault`], called where `fsutil` syncs and writes);
//! `IMGSTORE_TEST_CODEC=encode` makes every frame a put compresses decode
//! to other bytes, `decode:<n>` flips a byte of the n-th decoded frame
//! ([`codec_fault`], in `codec`).

#[cfg(feature = "test-hooks")]
use std::path::PathBuf;
#[cfg(feature = "test-hooks")]
use std::time::Duration;

/// Steps of a put, in order.
pub const PUT_STEPS: &[&str] = &[
    "put-after-stage",
    "put-after-lookup",
    "put-after-pack",
    "put-after-segment",
    "put-after-manifest",
    "put-before-ref",
    "put-after-ref",
];

/// Called at each named step; does nothing in a build without the
/// `test-hooks` feature (every release binary).
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn point(_step: &str) {}

/// Called at each named step.
#[cfg(feature = "test-hooks")]
pub fn point(step: &str) {
    if std::env::var("IMGSTORE_TEST_CRASH").is_ok_and(|s| s == step) {
        tracing::warn!(step, "test crash point");
        std::process::abort();
    }
    if std::env::var("IMGSTORE_TEST_PANIC").is_ok_and(|s| s == step) {
        panic!("test panic point {step}");
    }
    if std::env::var("IMGSTORE_TEST_HOLD").is_ok_and(|s| s == step) {
        let dir = std::env::var_os("IMGSTORE_TEST_HOLD_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let flag = dir.join(format!("{step}.held"));
        if std::fs::write(&flag, std::process::id().to_string()).is_ok() {
            while flag.exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `IMGSTORE_TEST_EIO=<kind>:<n>`: the `n`-th `kind` of this process
/// (`fsync`: of a store file or directory; `write`: of a store file's
/// bytes, one per file) fails with EIO, as a failing disk would fail it.
/// Nothing in a build without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn io_fault(_kind: &'static str) -> std::io::Result<()> {
    Ok(())
}

/// `IMGSTORE_TEST_EIO=<kind>:<n>`: the `n`-th `kind` of this process fails.
#[cfg(feature = "test-hooks")]
pub fn io_fault(kind: &'static str) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FSYNCS: AtomicU64 = AtomicU64::new(0);
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let Some(n) = armed("IMGSTORE_TEST_EIO", kind) else {
        return Ok(());
    };
    let counter = if kind == "fsync" { &FSYNCS } else { &WRITES };
    let count = counter.fetch_add(1, Ordering::SeqCst) + 1;
    if n == Some(count) {
        tracing::warn!(kind, count, "test hook: EIO");
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// `IMGSTORE_TEST_CODEC=encode`: every frame a put compresses decodes to
/// other bytes (the compressor is handed its input with a byte flipped).
/// `IMGSTORE_TEST_CODEC=decode:<n>`: the `n`-th frame this process
/// decompresses comes out with a byte flipped. Returns whether `bytes`
/// were changed. Nothing in a build without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn codec_fault(_stage: &'static str, _bytes: &mut [u8]) -> bool {
    false
}

/// See the build without `test-hooks`.
#[cfg(feature = "test-hooks")]
pub fn codec_fault(stage: &'static str, bytes: &mut [u8]) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DECODED: AtomicU64 = AtomicU64::new(0);
    let Some(n) = armed("IMGSTORE_TEST_CODEC", stage) else {
        return false;
    };
    let strike = match n {
        None => true,
        Some(n) => DECODED.fetch_add(1, Ordering::SeqCst) + 1 == n,
    };
    if strike && !bytes.is_empty() {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        tracing::warn!(stage, "test hook: a byte flipped");
        return true;
    }
    false
}

/// Whether `IMGSTORE_TEST_CODEC` names `stage`.
#[cfg(feature = "test-hooks")]
pub fn codec_armed(stage: &str) -> bool {
    armed("IMGSTORE_TEST_CODEC", stage).is_some()
}

/// Never, in a build without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn codec_armed(_stage: &str) -> bool {
    false
}

/// `Some(count)` when `var` is `<what>` (`None`: every time) or
/// `<what>:<count>`.
#[cfg(feature = "test-hooks")]
fn armed(var: &str, what: &str) -> Option<Option<u64>> {
    let spec = std::env::var(var).ok()?;
    let (name, n) = match spec.split_once(':') {
        Some((name, n)) => (name.to_string(), Some(n.parse().ok()?)),
        None => (spec, None),
    };
    (name == what).then_some(n)
}
