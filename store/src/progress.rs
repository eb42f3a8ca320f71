//! Progress reporting without printing: long operations call a [`Progress`]
//! the caller supplies (the CLI draws an indicatif bar; tests pass nothing).

/// Receives progress of one long operation.
pub trait Progress: Send + Sync {
    /// Work starts; `total` bytes when known (a file), `None` for a stream.
    fn start(&self, _what: &str, _total: Option<u64>) {}
    /// `bytes` more were processed.
    fn advance(&self, _bytes: u64) {}
    /// Work is over (done or failed).
    fn finish(&self) {}
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
