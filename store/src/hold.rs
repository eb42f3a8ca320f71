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
