//! The file a `get` writes: bytes gathered into page-aligned blocks and
//! written with direct I/O (`O_DIRECT`) where the filesystem allows it,
//! zero runs left as holes. Writing a new file through the page cache cost
//! a get more system time than reading and checking the image did
//! (PERFORMANCE.md, "Direct I/O"); a block written directly skips that copy.
//! Where direct I/O is refused, the same blocks go through the page cache,
//! with write-back started as they go.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::backend::{pad_to_page, start_writeback, DIRECT_ALIGN};
use crate::error::{Error, Result};

/// Direct I/O's unit: see [`DIRECT_ALIGN`].
const PAGE: usize = DIRECT_ALIGN;
/// Bytes gathered before a write: large enough that each write is cheap
/// for the disk, a multiple of [`PAGE`].
const BLOCK: usize = 8 << 20;

/// An output file being written front to back.
pub struct OutFile {
    /// Through the page cache: the last partial page, `set_len`, fsync.
    file: File,
    /// The same file opened with `O_DIRECT`, unless the filesystem refused.
    direct: Option<File>,
    /// `pad` bytes to reach a page boundary, then the block being gathered.
    buf: Vec<u8>,
    pad: usize,
    /// File offset of the block's first byte: a page boundary.
    at: u64,
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
        let mut buf: Vec<u8> = Vec::with_capacity(BLOCK + PAGE);
        let pad = pad_to_page(&mut buf);
        Ok(OutFile {
            file,
            direct,
            buf,
            pad,
            at: 0,
            path: path.to_path_buf(),
        })
    }

    /// File offset of the next byte.
    fn pos(&self) -> u64 {
        self.at + (self.buf.len() - self.pad) as u64
    }

    /// Appends `data`.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = BLOCK - (self.buf.len() - self.pad);
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            data = rest;
            if self.buf.len() - self.pad == BLOCK {
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
            self.at += hole;
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

    /// Writes the gathered block, whose length is whole pages except at
    /// the very end of the image, where `finish` writes it.
    fn flush(&mut self) -> Result<()> {
        let len = self.buf.len() - self.pad;
        if len == 0 {
            return Ok(());
        }
        let block = &self.buf[self.pad..];
        let aligned = len.is_multiple_of(PAGE) && (block.as_ptr() as usize).is_multiple_of(PAGE);
        let direct = match self.direct.as_ref().filter(|_| aligned) {
            Some(d) => d.write_all_at(block, self.at),
            None => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        };
        match direct {
            Ok(()) => {}
            // Refused (no direct I/O, or not at this alignment): from now on
            // through the page cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = None;
                self.file
                    .write_all_at(block, self.at)
                    .map_err(|e| Error::io(&self.path, e))?;
                // Started now, the write-back overlaps the rest of the get
                // instead of all waiting for the final fsync.
                start_writeback(&self.file, self.at, len as u64);
            }
            Err(e) => return Err(Error::io(&self.path, e)),
        }
        self.at += len as u64;
        self.buf.truncate(self.pad);
        Ok(())
    }

    /// Writes what is left, sets the length to `size` (a trailing zero run
    /// becomes a hole) and makes the file durable.
    pub fn finish(mut self, size: u64) -> Result<()> {
        let tail = self.buf.split_off(self.pad);
        self.file
            .write_all_at(&tail, self.at)
            .and_then(|()| self.file.set_len(size))
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io(&self.path, e))
    }
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
