//! Reading an input file around the page cache.
//!
//! A put reads each byte of an image once. Read through the page cache, a
//! cold image costs the kernel a page-cache fill and a copy of every byte
//! into the reader's buffer: `dd bs=8M` of a cold 3 GiB file used 1.4-2.6
//! CPU-s of system time here, against 0.2 with `iflag=direct`; the put's A/B
//! is in benches/results/HISTORY.md ("Chunk groups on the full ext3 set",
//! "The input read with `O_DIRECT` again"). So the parts of the file that are not in the page
//! cache are read with `O_DIRECT`, straight into the aligned block; parts
//! that are (an image just built) are copied from it, which is faster than
//! the disk. Where the filesystem refuses `O_DIRECT` (tmpfs), or a read is
//! not aligned, the plain descriptor serves.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Alignment of an `O_DIRECT` read's buffer, offset and length: a page, the
/// most any Linux filesystem asks.
pub const ALIGN: usize = 4096;

/// A regular file read at positions, uncached parts with `O_DIRECT`.
pub struct FileReader {
    file: File,
    /// A second open file description of the same file, with `O_DIRECT`.
    direct: Option<File>,
    /// The file mapped (never touched) so `mincore` can tell which pages
    /// are cached; `None` for an empty file or where mapping failed.
    map: Option<memmap2::Mmap>,
    /// Bytes read with `O_DIRECT` so far.
    direct_bytes: u64,
}

impl FileReader {
    /// Wraps `file`, opening its direct twin through `/proc/self/fd` (the
    /// same file even if its path was replaced since).
    pub fn new(file: File) -> Self {
        let direct = open_direct(&file);
        let map = direct.as_ref().and_then(|_| map(&file));
        FileReader {
            file,
            direct,
            map,
            direct_bytes: 0,
        }
    }

    /// The plain file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes read with `O_DIRECT` so far.
    pub fn direct_bytes(&self) -> u64 {
        self.direct_bytes
    }

    /// Reads into `buf` at `offset`, like [`FileExt::read_at`].
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if let Some(direct) = &self.direct {
            let aligned = (buf.as_ptr() as usize).is_multiple_of(ALIGN)
                && buf.len().is_multiple_of(ALIGN)
                && offset.is_multiple_of(ALIGN as u64);
            if aligned && !self.cached(offset, buf.len()) {
                match direct.read_at(buf, offset) {
                    Ok(n) => {
                        self.direct_bytes += n as u64;
                        return Ok(n);
                    }
                    // The filesystem took the flag but not the read: stop trying.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                    Err(e) => return Err(e),
                }
            }
        }
        self.file.read_at(buf, offset)
    }

    /// Whether at least half of the pages of `offset..offset + len` are in
    /// the page cache. Past the mapped length (the file grew) nothing is.
    fn cached(&self, offset: u64, len: usize) -> bool {
        let Some(map) = &self.map else { return false };
        let Ok(start) = usize::try_from(offset) else {
            return false;
        };
        if start >= map.len() || len == 0 {
            return false;
        }
        let end = map.len().min(start + len);
        let pages = resident_pages(map, start, end);
        pages.resident * 2 >= pages.total
    }
}

struct Pages {
    resident: usize,
    total: usize,
}

/// Counts the pages of `map[start..end]` in the page cache (`mincore`).
/// `start` is page-aligned. Linux reports a file's cached pages only to a
/// caller that owns the file or may write it; to others it says none are,
/// and the file is read with `O_DIRECT`: correct, if slower when cached.
#[allow(unsafe_code)]
fn resident_pages(map: &memmap2::Mmap, start: usize, end: usize) -> Pages {
    let total = (end - start).div_ceil(ALIGN);
    let mut vec = vec![0u8; total];
    // SAFETY: the range lies inside a live mapping (start < end <= len) and
    // starts on a page boundary; `vec` has one byte per page of it. mincore
    // only writes `vec`; it touches no page of the mapping.
    let r = unsafe {
        libc::mincore(
            map.as_ptr().add(start) as *mut libc::c_void,
            end - start,
            vec.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Pages { resident: 0, total };
    }
    Pages {
        resident: vec.iter().filter(|&&b| b & 1 == 1).count(),
        total,
    }
}

fn open_direct(file: &File) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

#[allow(unsafe_code)]
fn map(file: &File) -> Option<memmap2::Mmap> {
    if file.metadata().ok()?.len() == 0 {
        return None;
    }
    // SAFETY: the mapping is never read or written, only given to mincore,
    // so a file truncated or changed under it cannot fault or alias memory.
    unsafe { memmap2::Mmap::map(file) }.ok()
}

/// A buffer with `head` bytes of headroom before `room` bytes of data
/// that can start on an [`ALIGN`] boundary; [`data_start`] says where.
pub fn aligned_buffer(head: usize, room: usize) -> Vec<u8> {
    vec![0u8; head + room + ALIGN]
}

/// Where the data part of an [`aligned_buffer`] made with `head` starts: the
/// first [`ALIGN`] boundary at least `head` bytes in. The data part holds
/// `buf.len() - head - ALIGN` bytes.
pub fn data_start(buf: &[u8], head: usize) -> usize {
    head + (ALIGN - (buf.as_ptr() as usize + head) % ALIGN) % ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Drops a file's clean pages from the page cache (no root needed).
    #[allow(unsafe_code)]
    fn evict(f: &File) {
        use std::os::unix::io::AsRawFd;
        f.sync_all().unwrap();
        // SAFETY: plain syscall on a live descriptor; the result is checked.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
    }

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    #[test]
    fn reads_the_same_bytes_cached_or_not() {
        let len = 3 * ALIGN * 100 + 123; // ends mid-page
        let (f, data) = file_of(len);
        let mut r = FileReader::new(File::open(f.path()).unwrap());
        if r.direct.is_none() {
            eprintln!("no O_DIRECT on this filesystem; the direct path is not tested here");
        }
        let mut buf = aligned_buffer(1000, 64 * ALIGN);
        let at = data_start(&buf, 1000);
        for evicted in [true, false] {
            if evicted {
                evict(r.file());
            }
            let mut got = Vec::new();
            let mut pos = 0u64;
            loop {
                let n = r.read_at(&mut buf[at..at + 64 * ALIGN], pos).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[at..at + n]);
                pos += n as u64;
            }
            assert!(got == data, "evicted: {evicted}");
            // Unaligned offsets and lengths take the plain path.
            let n = r.read_at(&mut buf[at + 1..at + 5000], 4097).unwrap();
            assert_eq!(&buf[at + 1..at + 1 + n], &data[4097..4097 + n]);
        }
    }

    #[test]
    fn uncached_parts_are_read_direct_and_cached_ones_not() {
        let (f, _) = file_of(64 * ALIGN);
        let mut r = FileReader::new(File::open(f.path()).unwrap());
        if r.direct.is_none() {
            eprintln!("no O_DIRECT on this filesystem: skipped");
            return;
        }
        let mut buf = aligned_buffer(0, 64 * ALIGN);
        let at = data_start(&buf, 0);
        evict(r.file());
        assert!(!r.cached(0, 64 * ALIGN));
        r.read_at(&mut buf[at..at + 64 * ALIGN], 0).unwrap();
        assert_eq!(r.direct_bytes(), 64 * ALIGN as u64, "cold file read direct");
        // Bring it into the cache with a plain read: now it is copied from there.
        r.file().read_at(&mut vec![0; 64 * ALIGN], 0).unwrap();
        assert!(r.cached(0, 64 * ALIGN));
        r.read_at(&mut buf[at..at + 64 * ALIGN], 0).unwrap();
        assert_eq!(
            r.direct_bytes(),
            64 * ALIGN as u64,
            "cached file read through the cache"
        );
    }

    #[test]
    fn aligned_buffer_is_aligned_after_its_headroom() {
        for head in [0, 1, 4095, 4096, 262_144 + 17] {
            let buf = aligned_buffer(head, 8192);
            let at = data_start(&buf, head);
            assert!(at >= head && buf.len() >= at + 8192);
            assert_eq!((buf.as_ptr() as usize + at) % ALIGN, 0);
        }
    }
}
