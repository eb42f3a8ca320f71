//! The file a `get` writes: bytes gathered into page-aligned blocks and
//! written with direct I/O (`O_DIRECT`) where the filesystem allows it,
//! zero runs left as holes. Writing a new file through the page cache cost
//! a get more system time than reading and checking the image did
//! (benches/results/HISTORY.md, "Direct I/O"); a block written directly skips
//! that copy.
//! Where direct I/O is refused, the same blocks go through the page cache,
//! with write-back started as they go. A thread of its own writes each
//! block while the next is gathered.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::fsutil::{pad_to_page, start_writeback, DIRECT_ALIGN};

/// Direct I/O's unit: see [`DIRECT_ALIGN`].
const PAGE: usize = DIRECT_ALIGN;
/// Bytes gathered before a write: large enough that each write is cheap
/// for the disk, a multiple of [`PAGE`].
const BLOCK: usize = 8 << 20;
/// Blocks in all: one being gathered while the others are written. A
/// direct write waits for the disk; with one block, gathering the next
/// waited for it too.
const BLOCKS: usize = 2;

/// A gathered block on its way to the disk.
struct Block {
    /// `pad` bytes to reach a page boundary, then the data.
    buf: Vec<u8>,
    pad: usize,
    /// File offset of the data: a page boundary.
    at: u64,
}

/// An output file being written front to back.
pub struct OutFile {
    /// Through the page cache: the last partial page, `set_len`, fsync.
    file: File,
    /// The block being gathered.
    block: Block,
    /// Full blocks to the writing thread, and their buffers back.
    full: Option<SyncSender<Block>>,
    free: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<Result<()>>>,
    path: PathBuf,
}

impl OutFile {
    /// Creates `path`, which must not exist.
    pub fn create(path: &Path) -> Result<OutFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        // Refused (EINVAL on filesystems without it): the page cache it is.
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        let plain = file.try_clone().map_err(|e| Error::io(path, e))?;
        let (full_tx, full_rx) = sync_channel(BLOCKS);
        let (free_tx, free_rx) = sync_channel(BLOCKS);
        for _ in 1..BLOCKS {
            free_tx
                .send(Vec::with_capacity(BLOCK + PAGE))
                .expect("channel has room");
        }
        let writer = match spawn_writer(plain, direct, path.to_path_buf(), full_rx, free_tx) {
            Ok(w) => w,
            Err(e) => {
                // Created above and of no use now.
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(OutFile {
            file,
            block: Block::new(Vec::with_capacity(BLOCK + PAGE), 0),
            full: Some(full_tx),
            free: free_rx,
            writer: Some(writer),
            path: path.to_path_buf(),
        })
    }

    /// File offset of the next byte.
    fn pos(&self) -> u64 {
        self.block.at + self.block.len() as u64
    }

    /// Appends `data`.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = BLOCK - self.block.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.block.buf.extend_from_slice(now);
            data = rest;
            if self.block.len() == BLOCK {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Appends `n` zero bytes: the whole pages among them as a hole, the
    /// rest as bytes (a direct write moves whole pages).
    pub fn zeros(&mut self, mut n: u64) -> Result<()> {
        let to_page = (PAGE as u64 - self.pos() % PAGE as u64) % PAGE as u64;
        let head = n.min(to_page);
        self.write_zeros(head)?;
        n -= head;
        if n >= PAGE as u64 {
            self.flush()?;
            let hole = n / PAGE as u64 * PAGE as u64;
            self.block.at += hole;
            n -= hole;
        }
        self.write_zeros(n)
    }

    fn write_zeros(&mut self, mut n: u64) -> Result<()> {
        const ZEROS: [u8; PAGE] = [0; PAGE];
        while n > 0 {
            let k = n.min(PAGE as u64) as usize;
            self.write(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Hands the gathered block, whose length is whole pages except at the
    /// very end of the image (where `finish` writes it), to the writing
    /// thread, and starts the next block in a buffer it gave back.
    fn flush(&mut self) -> Result<()> {
        let len = self.block.len();
        if len == 0 {
            return Ok(());
        }
        let next_at = self.block.at + len as u64;
        // A closed channel means the writing thread failed: its error
        // comes from join.
        let buf = match self.free.recv() {
            Ok(buf) => buf,
            Err(_) => return Err(self.stopped()),
        };
        let full = std::mem::replace(&mut self.block, Block::new(buf, next_at));
        let sent = self.full.as_ref().map(|tx| tx.send(full).is_ok());
        if sent != Some(true) {
            return Err(self.stopped());
        }
        Ok(())
    }

    /// The writing thread's error, once it has stopped.
    fn stopped(&mut self) -> Error {
        self.full = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(p)) => writer_panicked(p),
            _ => Error::io(&self.path, std::io::Error::other("the writing thread stopped")),
        }
    }

    /// Writes what is left, sets the length to `size` (a trailing zero run
    /// becomes a hole) and makes the file durable.
    pub fn finish(mut self, size: u64) -> Result<()> {
        self.full = None;
        if let Some(writer) = self.writer.take() {
            writer.join().map_err(writer_panicked)??;
        }
        let tail = &self.block.buf[self.block.pad..];
        self.file
            .write_all_at(tail, self.block.at)
            .and_then(|()| self.file.set_len(size))
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for OutFile {
    /// A get that fails stops the writing thread before its file goes.
    fn drop(&mut self) {
        self.full = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Block {
    /// An empty block at file offset `at` in `buf`.
    fn new(mut buf: Vec<u8>, at: u64) -> Block {
        buf.clear();
        let pad = pad_to_page(&mut buf);
        Block { buf, pad, at }
    }

    fn len(&self) -> usize {
        self.buf.len() - self.pad
    }
}

/// A panic of the writing thread, as an error of the get (exit 1).
fn writer_panicked(payload: Box<dyn std::any::Any + Send>) -> Error {
    Error::Internal {
        detail: format!(
            "in the get: the file writer panicked: {}",
            super::panic_message(payload.as_ref())
        ),
    }
}

/// Writes blocks where they belong, with direct I/O while the filesystem
/// takes it, and hands each buffer back; stops at the first error. A
/// thread that cannot be started (the process limit) is an error.
fn spawn_writer(
    file: File,
    mut direct: Option<File>,
    path: PathBuf,
    blocks: Receiver<Block>,
    free: SyncSender<Vec<u8>>,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name("imgstore-out".into())
        .spawn(move || {
            for block in blocks {
                let data = &block.buf[block.pad..];
                let aligned =
                    data.len().is_multiple_of(PAGE) && (data.as_ptr() as usize).is_multiple_of(PAGE);
                let written = match direct.as_ref().filter(|_| aligned) {
                    Some(d) => d.write_all_at(data, block.at),
                    None => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
                };
                match written {
                    Ok(()) => {}
                    // Refused (no direct I/O, or not at this alignment): from
                    // now on through the page cache.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        direct = None;
                        file.write_all_at(data, block.at)
                            .map_err(|e| Error::io(&path, e))?;
                        // Started now, the write-back overlaps the rest of the
                        // get instead of all waiting for the final fsync.
                        start_writeback(&file, block.at, data.len() as u64);
                    }
                    Err(e) => return Err(Error::io(&path, e)),
                }
                // The file may be gone (a failed get): then so is the need.
                let _ = free.send(block.buf);
            }
            Ok(())
        })
        .map_err(|e| Error::threads("the get's file writer", e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// Writes data and zero runs of every alignment and reads them back.
    #[test]
    fn any_mix_of_data_and_zero_runs_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut out = OutFile::create(&path).unwrap();
        let mut want = Vec::new();
        let mut seed = 7u32;
        for i in 0..200u64 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = u64::from(seed >> 8) % (3 * PAGE as u64) + i;
            if i % 3 == 0 {
                out.zeros(len).unwrap();
                want.resize(want.len() + len as usize, 0);
            } else {
                let data: Vec<u8> = (0..len).map(|k| (k % 251) as u8 + 1).collect();
                out.write(&data).unwrap();
                want.extend_from_slice(&data);
            }
        }
        // A block's worth of data, then a long zero run to end on.
        let big: Vec<u8> = (0..BLOCK + 5).map(|k| (k % 253) as u8 + 1).collect();
        out.write(&big).unwrap();
        want.extend_from_slice(&big);
        out.zeros(3 << 20).unwrap();
        want.resize(want.len() + (3 << 20), 0);
        out.finish(want.len() as u64).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
        let m = std::fs::metadata(&path).unwrap();
        assert!(
            m.blocks() * 512 < m.len() - (2 << 20),
            "the final zero run is not a hole: {} blocks for {} bytes",
            m.blocks(),
            m.len()
        );
    }
}
