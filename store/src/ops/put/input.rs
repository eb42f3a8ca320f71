//! The put's first stage: the input file or stream, read into blocks by a
//! thread that only reads (holes skipped, `O_DIRECT` where uncached), and
//! checked for changes before and after.

use super::*;

/// What the check for an input that changed while it was read compares.
/// The ctime too: a tool that rewrites bytes in place can set the mtime
/// back (`rsync --inplace -t`, `touch -r`), but nothing sets the ctime.
#[derive(PartialEq, Eq)]
pub(super) struct FileStat {
    pub(super) len: u64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
    pub(super) ino: u64,
}

pub(super) fn stat(path: &Path, f: &File) -> Result<FileStat> {
    let m = f.metadata().map_err(|e| Error::io(path, e))?;
    Ok(FileStat {
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        ino: m.ino(),
    })
}

/// The clock the kernel stamps files with (`CLOCK_REALTIME_COARSE`, a
/// tick of a few ms), as (seconds, nanoseconds).
#[allow(unsafe_code)]
pub(super) fn file_clock() -> (i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    (ts.tv_sec, ts.tv_nsec)
}

/// Waits until a change to the input from now on gets a later ctime than
/// `st`'s. A write lands on the kernel's coarse clock (or a filesystem's
/// whole seconds), so one in the same tick as the last change before the
/// put left every timestamp as it was, and an in-place rewrite of the same
/// size went unseen. Waits only for an input that changed within the
/// tick (a few ms; up to a second where ctimes are whole seconds), and
/// never longer than two seconds (a ctime from a clock ahead of ours).
pub(super) fn wait_for_a_later_ctime(st: &FileStat) {
    let (sec, nsec) = st.ctime;
    let past = if nsec == 0 { (sec + 1, 0) } else { (sec, nsec + 1) };
    let started = Instant::now();
    while file_clock() < past && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Opens the input, refusing what cannot be an image.
pub(super) fn open_input(path: &Path) -> Result<(File, FileStat)> {
    let f = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::not_found(crate::error::Wanted::InputFile(path.to_path_buf())),
        _ => Error::io(path, e),
    })?;
    let st = stat(path, &f)?;
    let m = f.metadata().map_err(|e| Error::io(path, e))?;
    if m.is_dir() {
        return Err(Error::BadInput {
            reason: format!("{} is a directory, not an image file", path.display()),
        });
    }
    wait_for_a_later_ctime(&st);
    Ok((f, st))
}

pub(super) fn read_sif(path: &Path, f: &File, len: u64) -> Result<Option<sif::SifInfo>> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 64];
    let n = f.read_at(&mut head, 0).map_err(|e| Error::io(path, e))?;
    if !sif::is_sif(&head[..n]) {
        return Ok(None);
    }
    let mut read_at = |off: u64, buf: &mut [u8]| f.read_exact_at(buf, off);
    sif::parse(len, &mut read_at)
        .map(Some)
        .map_err(|source| Error::Sif {
            path: path.to_path_buf(),
            source,
        })
}

/// What the reader thread reads from.
pub(super) enum Source {
    File(FileReader, u64),
    Stream(Box<dyn Read + Send>),
}

/// A block of input, with room before the data for the previous block's tail.
pub(super) struct Block {
    pub(super) buf: Vec<u8>,
    /// Where the data starts in `buf` (page-aligned, for `O_DIRECT`).
    pub(super) at: usize,
    pub(super) len: usize,
    pub(super) eof: bool,
    /// A hole of this many bytes follows the block's data (sparse files).
    pub(super) hole_after: u64,
}

/// Holes at least this long in a sparse input file are skipped without
/// reading them. Chunks are cut through them as if they had been read (see
/// [`cut_blocks`]), because which zeros a filesystem calls a hole can change
/// from one read to the next: ext4 reports unwritten extents as holes only
/// while their pages are not cached, and a cold and a warm put of the same
/// image cut 64566 and 65497 chunks before chunks were cut through holes.
pub(super) const HOLE_MIN: u64 = 1 << 20;

/// `lseek(fd, offset, whence)`, or `None` past the end (ENXIO) or on
/// filesystems without SEEK_DATA/SEEK_HOLE.
#[allow(unsafe_code)]
pub(super) fn seek(file: &File, offset: u64, whence: libc::c_int) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: lseek only reads its integer arguments; a bad fd or offset is
    // reported through the return value, which is checked.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    u64::try_from(r).ok()
}

/// Where the next hole of at least [`HOLE_MIN`] bytes at or after `pos`
/// starts, and how long it is; the first `lead` bytes of it are left to be
/// read (as zeros), so that the chunk that runs into the hole ends in it.
pub(super) fn next_hole(file: &File, pos: u64, file_len: u64, lead: u64) -> Option<(u64, u64)> {
    next_hole_whole(file, pos, file_len)
        .filter(|&(_, len)| len > lead)
        .map(|(start, len)| (start + lead, len - lead))
}

pub(super) fn next_hole_whole(file: &File, pos: u64, file_len: u64) -> Option<(u64, u64)> {
    let mut at = pos;
    while at < file_len {
        let start = seek(file, at, libc::SEEK_HOLE)?;
        if start >= file_len {
            return None;
        }
        let end = seek(file, start, libc::SEEK_DATA)
            .unwrap_or(file_len)
            .min(file_len);
        if end - start >= HOLE_MIN {
            return Some((start, end - start));
        }
        at = end;
    }
    None
}

/// Fills `buf` by calling `read(rest, offset_in_buf)` until it is full or
/// the input ends; returns the bytes read and whether the input ended.
pub(super) fn fill(
    buf: &mut [u8],
    mut read: impl FnMut(&mut [u8], usize) -> io::Result<usize>,
) -> io::Result<(usize, bool)> {
    let mut len = 0;
    while len < buf.len() {
        match read(&mut buf[len..], len) {
            Ok(0) => return Ok((len, true)),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((len, false))
}

/// Reads the input into blocks from a pool; stops at EOF or on the first
/// error. A regular file is read with positioned reads and its large holes
/// are skipped, each ending a block. This thread only reads: an `O_DIRECT`
/// read has nothing in flight while its caller computes, so any work here
/// (the whole-image hash was here) idles the disk.
pub(super) fn spawn_reader(
    mut source: Source,
    head: usize,
    name: PathBuf,
    full: SyncSender<Result<Block>>,
    free: Receiver<Vec<u8>>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("imgstore-read".into())
        .spawn(move || {
            let mut pos: u64 = 0;
            // Page-aligned, so that reads stay aligned for O_DIRECT.
            let lead = head.next_multiple_of(direct::ALIGN) as u64;
            let mut hole = match &source {
                Source::File(f, len) => next_hole(f.file(), 0, *len, lead),
                Source::Stream(_) => None,
            };
            // Where this thread's time went, logged at debug level.
            let (mut reading, mut for_buffers, mut handing_on) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let mut since = Instant::now();
            let mut first = true;
            while let Ok(mut buf) = free.recv() {
                for_buffers += since.elapsed();
                since = Instant::now();
                let at = direct::data_start(&buf, head);
                let room = buf.len() - head - direct::ALIGN;
                let limit = match hole {
                    Some((start, _)) if start >= pos => (start - pos).min(room as u64) as usize,
                    _ => room,
                };
                let window = &mut buf[at..at + limit];
                let filled = match &mut source {
                    Source::File(f, _) => fill(window, |b, off| f.read_at(b, pos + off as u64)),
                    Source::Stream(r) => fill(window, |b, _| r.read(b)),
                };
                reading += since.elapsed();
                since = Instant::now();
                let (len, eof) = match filled {
                    Ok(done) => done,
                    Err(e) => {
                        let _ = full.send(Err(Error::io(&name, e)));
                        break;
                    }
                };
                pos += len as u64;
                if std::mem::take(&mut first) {
                    hold::point("put-reading");
                }
                let mut hole_after = 0;
                if let Some((start, hole_len)) = hole.filter(|(s, _)| *s == pos && !eof) {
                    hole_after = hole_len;
                    pos = start + hole_len;
                    if let Source::File(f, file_len) = &source {
                        hole = next_hole(f.file(), pos, *file_len, lead);
                    }
                }
                let block = Block {
                    buf,
                    at,
                    len,
                    eof,
                    hole_after,
                };
                if full.send(Ok(block)).is_err() || eof {
                    break;
                }
                handing_on += since.elapsed();
                since = Instant::now();
            }
            let direct_bytes = match &source {
                Source::File(f, _) => f.direct_bytes(),
                Source::Stream(_) => 0,
            };
            tracing::debug!(
                ?reading,
                ?for_buffers,
                ?handing_on,
                direct_bytes,
                "put: input read"
            );
        })
        .map_err(|e| Error::threads("the put's reader", e))
}
