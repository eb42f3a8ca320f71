//! Manifests: one image as a list of chunks and zero runs, plus metadata
//! lifted from the image itself (SIF deffile, labels, descriptors).
//!
//! A manifest is a pure function of the image's bytes and the store's chunker,
//! so it is written once under the image id and never changes; what differs
//! between puts of the same bytes (who, when, message, user labels) lives in
//! the ref. Layout, little-endian:
//!
//! ```text
//! header  64 B   magic "IMGSMANI", version u32, reserved u32, image size u64,
//!                image BLAKE3 [32], entry count u64
//! entry   41 B   kind u8 (0 chunk, 1 zero run), length u64, chunk id [32] (zeros for a run)
//! meta           u32 length, then JSON (ManifestMeta): tolerant of added fields
//! trailer 32 B   BLAKE3 of everything before it
//! ```
//!
//! That is a full manifest (version 1). In a store with the
//! `manifest-deltas` feature a put may instead write a delta (version 2,
//! [`delta`]) against an earlier image's full manifest; [`ManifestFile`]
//! reads both the same way.

pub mod delta;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use crate::backend::{InMemory, ReadAt};
use crate::error::{Error, Object, Result};
use crate::id::{ChunkId, Digest, ImageId};
use crate::sif::SifInfo;

const MAGIC: &[u8; 8] = b"IMGSMANI";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 41;
/// Store directory of manifests.
pub const MANIFESTS_DIR: &str = "manifests";

/// One piece of an image, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A stored chunk of `len` bytes.
    Chunk {
        /// The chunk.
        id: ChunkId,
        /// Its length.
        len: u32,
    },
    /// `len` zero bytes, stored as nothing (a hole on get).
    Zero {
        /// Run length.
        len: u64,
    },
}

impl Entry {
    /// Bytes of the image this entry covers.
    pub fn len(&self) -> u64 {
        match self {
            Entry::Chunk { len, .. } => u64::from(*len),
            Entry::Zero { len } => *len,
        }
    }

    /// True for a zero-length entry (never written).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `i` of a manifest from its [`ENTRY_LEN`] bytes.
    pub(crate) fn decode(r: &[u8], i: u64, what: &Object) -> Result<Entry> {
        let len = u64::from_le_bytes(r[1..9].try_into().expect("8 bytes"));
        match r[0] {
            0 => Ok(Entry::Chunk {
                id: Digest(r[9..41].try_into().expect("32 bytes")),
                len: u32::try_from(len)
                    .map_err(|_| Error::corrupt(what, format!("entry {i}: chunk length {len}")))?,
            }),
            1 => Ok(Entry::Zero { len }),
            k => Err(Error::corrupt(what, format!("entry {i}: unknown kind {k}"))),
        }
    }

    /// The entry as it is laid out in a manifest.
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let (kind, len, id) = match self {
            Entry::Chunk { id, len } => (0, u64::from(*len), id.0),
            Entry::Zero { len } => (1, *len, [0u8; 32]),
        };
        let mut b = [0u8; ENTRY_LEN];
        b[0] = kind;
        b[1..9].copy_from_slice(&len.to_le_bytes());
        b[9..].copy_from_slice(&id);
        b
    }
}

/// A write that also hashes what passes, for the manifest's trailer.
struct Hashing<'a> {
    out: &'a mut dyn Write,
    sum: blake3::Hasher,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The header of a full manifest.
fn full_header(size: u64, id: &ImageId, count: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&size.to_le_bytes());
    h[24..56].copy_from_slice(&id.0 .0);
    h[56..64].copy_from_slice(&count.to_le_bytes());
    h
}

/// Writes a manifest: `head`, what `body` writes, the metadata and the
/// trailer.
fn write_encoded(
    out: &mut dyn Write,
    head: &[u8],
    body: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    meta: &ManifestMeta,
) -> io::Result<()> {
    let meta = serde_json::to_vec(meta).expect("metadata serializes");
    let mut w = Hashing {
        out,
        sum: blake3::Hasher::new(),
    };
    w.write_all(head)?;
    body(&mut w)?;
    w.write_all(&(meta.len() as u32).to_le_bytes())?;
    w.write_all(&meta)?;
    let sum = w.sum.finalize();
    w.out.write_all(sum.as_bytes())
}

/// A manifest's entries as a put finds them, kept encoded in an unnamed
/// temporary file instead of memory (41 bytes each: ~20 MB for a 16 GiB
/// image), so a put needs no more memory for a large image than a small one.
/// Adjacent zero runs merge into one.
pub struct Spool {
    file: BufWriter<File>,
    /// Entries in the file.
    written: u64,
    /// The last entry, held back so a following zero run can merge into it.
    last: Option<Entry>,
}

impl Spool {
    /// An empty spool in the system's temporary directory.
    pub fn new() -> Result<Spool> {
        let dir = std::env::temp_dir();
        let file = tempfile::tempfile().map_err(|e| match Error::io(&dir, e) {
            Error::Io { path, source } => Error::Io {
                path,
                source: io::Error::new(
                    source.kind(),
                    format!("cannot create the put's temporary file ({source}); set TMPDIR to a writable directory"),
                ),
            },
            full => full,
        })?;
        Ok(Spool {
            file: BufWriter::with_capacity(64 << 10, file),
            written: 0,
            last: None,
        })
    }

    /// Appends an entry.
    pub fn push(&mut self, entry: Entry) -> Result<()> {
        match (&mut self.last, entry) {
            (Some(Entry::Zero { len: run }), Entry::Zero { len }) => *run += len,
            (last, entry) => {
                if let Some(done) = last.replace(entry) {
                    self.write(&done)?;
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, entry: &Entry) -> Result<()> {
        self.file
            .write_all(&entry.encode())
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        self.written += 1;
        Ok(())
    }

    /// The entries, all written out, ready to become a manifest.
    pub fn finish(mut self) -> Result<Spooled> {
        if let Some(last) = self.last.take() {
            self.write(&last)?;
        }
        let file = self
            .file
            .into_inner()
            .map_err(|e| Error::io(std::env::temp_dir(), e.into_error()))?;
        Ok(Spooled {
            file,
            count: self.written,
        })
    }
}

/// A finished [`Spool`].
pub struct Spooled {
    file: File,
    count: u64,
}

impl Spooled {
    /// Entries in the spool.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Entries `from..from + n`, encoded. A failure says it was reading
    /// the spool back, not just "I/O error" under the manifest's name.
    fn read_raw(&self, from: u64, n: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; (n * ENTRY_LEN as u64) as usize];
        self.file
            .read_exact_at(&mut buf, from * ENTRY_LEN as u64)
            .map_err(|e| {
                let dir = std::env::temp_dir();
                io::Error::new(e.kind(), format!("temporary file in {}: {e}", dir.display()))
            })?;
        Ok(buf)
    }

    /// Entries `from..from + n`.
    fn read(&self, from: u64, n: u64) -> Result<Vec<Entry>> {
        let buf = self
            .read_raw(from, n)
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        buf.chunks_exact(ENTRY_LEN)
            .enumerate()
            .map(|(k, r)| Entry::decode(r, from + k as u64, &Object::PutSpool))
            .collect()
    }

    /// Writes the full manifest of the image `id` of `size` bytes, with the
    /// spooled entries, to `out` (for [`crate::backend::Backend::put_with`]).
    pub fn write_manifest(
        &self,
        size: u64,
        id: &ImageId,
        meta: &ManifestMeta,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let mut copy = |w: &mut dyn Write| {
            let mut at = 0;
            while at < self.count {
                let n = (self.count - at).min(WINDOW);
                w.write_all(&self.read_raw(at, n)?)?;
                at += n;
            }
            Ok(())
        };
        write_encoded(out, &full_header(size, id, self.count), &mut copy, meta)
    }
}

/// Metadata that comes from the image's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMeta {
    /// SIF header facts, when the image is a SIF file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sif: Option<SifInfo>,
}

/// An image: its size, hash, pieces and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Image size in bytes.
    pub size: u64,
    /// BLAKE3 of the image bytes; also its id.
    pub id: ImageId,
    /// The pieces in order; their lengths add up to `size`.
    pub entries: Vec<Entry>,
    /// Metadata lifted from the image.
    pub meta: ManifestMeta,
}

/// The store key of an image's full manifest.
pub fn key(id: &ImageId) -> String {
    id.0.key(MANIFESTS_DIR)
}

/// What a delta manifest's key adds to a full one's.
pub const DELTA_SUFFIX: &str = ".delta";

/// The store key of an image's delta manifest. Deltas never share a key
/// with full manifests, so no write can turn a base into a delta: deltas
/// name full manifests as their base, and a put replaces a manifest whole
/// without asking what is there (docs/ARCHITECTURE.md, invariant 2).
pub fn delta_key(id: &ImageId) -> String {
    format!("{}{DELTA_SUFFIX}", key(id))
}

/// What a checked manifest says of its image; its entries are read apart
/// ([`read_entries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Image size in bytes.
    pub size: u64,
    /// The image id.
    pub id: ImageId,
    /// Number of entries.
    pub count: u64,
    /// Metadata lifted from the image.
    pub meta: ManifestMeta,
    /// The image whose full manifest this one is a delta against.
    pub base: Option<ImageId>,
}

/// Entries read at a time while checking: ~1 MB.
const WINDOW: u64 = 25_000;

/// Checks a whole manifest in one pass, a window at a time: its trailer
/// hash, header, entries (kinds, lengths adding up to the size) and
/// metadata. So the manifest of a 16 GiB image is checked in as little
/// memory as a small one's, and its entries can then be read in windows.
pub fn check(file: &dyn ReadAt, what: &Object) -> Result<Header> {
    check_with(file, what, &mut |_| {})
}

/// [`check`], handing each entry to `each` on the way (kept only if the
/// whole manifest checks out): [`Manifest::decode`] reads entries once.
fn check_with(file: &dyn ReadAt, what: &Object, each: &mut dyn FnMut(Entry)) -> Result<Header> {
    let bad = |d: String| Error::corrupt(what, d);
    let len = file.size()?;
    if len < (HEADER_LEN + 4 + 32) as u64 {
        return Err(bad("not a manifest (magic or length)".into()));
    }
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, 0)?;
    if &head[..8] != MAGIC {
        return Err(bad("not a manifest (magic or length)".into()));
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version == delta::VERSION {
        return Err(bad("is a delta, not a full manifest".into()));
    }
    if version != VERSION {
        return Err(bad(format!("unknown manifest version {version}")));
    }
    let mut sum = blake3::Hasher::new();
    sum.update(&head);
    let u64_at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().expect("8 bytes"));
    let (size, count) = (u64_at(16), u64_at(56));
    let id = ImageId(Digest(head[24..56].try_into().expect("32 bytes")));
    let entries_end = count
        .checked_mul(ENTRY_LEN as u64)
        .and_then(|n| n.checked_add(HEADER_LEN as u64))
        .filter(|end| end.checked_add(4 + 32).is_some_and(|e| e <= len))
        .ok_or_else(|| bad(format!("{count} entries do not fit the file")))?;
    // A damaged entry is reported after the checksum: "checksum mismatch"
    // is the plainer diagnosis when both fail.
    let mut damaged = None;
    let mut total: u64 = 0;
    let mut buf = Vec::new();
    let mut at = 0;
    while at < count {
        let n = (count - at).min(WINDOW);
        buf.resize(n as usize * ENTRY_LEN, 0);
        file.read_exact_at(&mut buf, HEADER_LEN as u64 + at * ENTRY_LEN as u64)?;
        sum.update(&buf);
        for (k, r) in buf.chunks_exact(ENTRY_LEN).enumerate() {
            let i = at + k as u64;
            match Entry::decode(r, i, what) {
                Ok(e) => match total.checked_add(e.len()) {
                    Some(t) => {
                        total = t;
                        each(e);
                    }
                    None => {
                        damaged.get_or_insert(bad(format!("entry {i}: lengths overflow")));
                    }
                },
                Err(e) => {
                    damaged.get_or_insert(e);
                }
            }
        }
        at += n;
    }
    let mut meta_len = [0u8; 4];
    file.read_exact_at(&mut meta_len, entries_end)?;
    let meta_len = u64::from(u32::from_le_bytes(meta_len));
    if entries_end + 4 + meta_len + 32 != len {
        return Err(bad("metadata length does not match the file".into()));
    }
    let mut rest = vec![0u8; (4 + meta_len + 32) as usize];
    file.read_exact_at(&mut rest, entries_end)?;
    let (meta, trailer) = rest.split_at(rest.len() - 32);
    sum.update(meta);
    if sum.finalize().as_bytes() != trailer {
        return Err(bad("checksum mismatch".into()));
    }
    if let Some(e) = damaged {
        return Err(e);
    }
    if total != size {
        return Err(bad(format!("entries cover {total} bytes, header says {size}")));
    }
    let meta = serde_json::from_slice(&meta[4..]).map_err(|e| bad(format!("metadata: {e}")))?;
    Ok(Header {
        size,
        id,
        count,
        meta,
        base: None,
    })
}

/// Entries `from..from + n` of a manifest that [`check`] passed.
pub fn read_entries(file: &dyn ReadAt, from: u64, n: u64, what: &Object) -> Result<Vec<Entry>> {
    let mut buf = vec![0u8; n as usize * ENTRY_LEN];
    file.read_exact_at(&mut buf, HEADER_LEN as u64 + from * ENTRY_LEN as u64)?;
    buf.chunks_exact(ENTRY_LEN)
        .enumerate()
        .map(|(k, r)| Entry::decode(r, from + k as u64, what))
        .collect()
}

/// A checked manifest, full or delta, whose entries are read a window at
/// a time: `get` needs no more memory for a 16 GiB image's list than for a
/// small one's.
pub struct ManifestFile {
    body: Body,
    what: Object,
    /// What the manifest says of its image.
    pub head: Header,
}

enum Body {
    Full(Box<dyn ReadAt>),
    Delta(delta::Delta),
}

impl ManifestFile {
    /// Checks the manifest in `file`; `what` names it in errors. A delta's
    /// base is opened with `base`.
    pub fn open(
        file: Box<dyn ReadAt>,
        what: Object,
        base: &mut dyn FnMut(&ImageId) -> Result<ManifestFile>,
    ) -> Result<ManifestFile> {
        ManifestFile::open_each(file, what, base, &mut |_| {})
    }

    /// [`ManifestFile::open`], handing each entry to `each` as the check
    /// reads it (kept only if the whole manifest checks out), so a caller
    /// wanting every entry reads the manifest once.
    pub fn open_each(
        file: Box<dyn ReadAt>,
        what: Object,
        base: &mut dyn FnMut(&ImageId) -> Result<ManifestFile>,
        each: &mut dyn FnMut(Entry),
    ) -> Result<ManifestFile> {
        let mut head = [0u8; 12];
        if file.size()? >= 12 {
            file.read_exact_at(&mut head, 0)?;
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if &head[..8] == MAGIC && version == delta::VERSION {
            let (head, d) = delta::open(file.as_ref(), &what, base, each)?;
            return Ok(ManifestFile {
                body: Body::Delta(d),
                what,
                head,
            });
        }
        let head = check_with(file.as_ref(), &what, each)?;
        Ok(ManifestFile {
            body: Body::Full(file),
            what,
            head,
        })
    }

    /// Checks the full manifest in `file`, refusing a delta.
    pub fn open_full(file: Box<dyn ReadAt>, what: Object) -> Result<ManifestFile> {
        let head = check(file.as_ref(), &what)?;
        Ok(ManifestFile {
            body: Body::Full(file),
            what,
            head,
        })
    }

    /// Entries `from..from + n`.
    pub fn entries(&self, from: u64, n: u64) -> Result<Vec<Entry>> {
        match &self.body {
            Body::Full(file) => read_entries(file.as_ref(), from, n, &self.what),
            Body::Delta(d) => d.entries(from, n, &self.what),
        }
    }
}

/// The entry count from a manifest's header, without reading the rest.
pub fn entry_count(file: &dyn ReadAt, what: &Object) -> Result<u64> {
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, 0)?;
    if &head[..8] != MAGIC {
        return Err(Error::corrupt(what, "not a manifest (magic)"));
    }
    Ok(u64::from_le_bytes(head[56..64].try_into().expect("8 bytes")))
}

impl Manifest {
    /// Serialized bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(HEADER_LEN + self.entries.len() * ENTRY_LEN + 100);
        let head = full_header(self.size, &self.id, self.entries.len() as u64);
        let mut entries = |w: &mut dyn Write| self.entries.iter().try_for_each(|e| w.write_all(&e.encode()));
        write_encoded(&mut buf, &head, &mut entries, &self.meta).expect("writing to memory does not fail");
        buf
    }

    /// Parses and checks a manifest; `what` names it in errors.
    pub fn decode(bytes: &[u8], what: &Object) -> Result<Manifest> {
        let mut entries = Vec::new();
        let head = check_with(&InMemory(bytes), what, &mut |e| entries.push(e))?;
        Ok(Manifest {
            size: head.size,
            id: head.id,
            entries,
            meta: head.meta,
        })
    }

    /// Distinct chunk ids and the sum of their lengths (bytes the image needs stored).
    pub fn unique_chunks(&self) -> (usize, u64) {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        for e in &self.entries {
            if let Entry::Chunk { id, len } = e {
                if seen.insert(*id) {
                    bytes += u64::from(*len);
                }
            }
        }
        (seen.len(), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Manifest {
        Manifest {
            size: 100 + 4096 + 7,
            id: ImageId(Digest::of(b"image")),
            entries: vec![
                Entry::Chunk {
                    id: Digest::of(b"a"),
                    len: 100,
                },
                Entry::Zero { len: 4096 },
                Entry::Chunk {
                    id: Digest::of(b"b"),
                    len: 7,
                },
            ],
            meta: ManifestMeta::default(),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode(), &Object::InMemory).unwrap(), m);
    }

    #[test]
    fn spooled_manifest_is_the_same_bytes_with_zero_runs_merged() {
        let m = sample();
        let mut spool = Spool::new().unwrap();
        for e in &m.entries {
            // Split the zero run in two: the spool must merge it back.
            if let Entry::Zero { len } = e {
                spool.push(Entry::Zero { len: len - 1 }).unwrap();
                spool.push(Entry::Zero { len: 1 }).unwrap();
            } else {
                spool.push(*e).unwrap();
            }
        }
        let spooled = spool.finish().unwrap();
        assert_eq!(spooled.count(), 3);
        let mut bytes = Vec::new();
        spooled
            .write_manifest(m.size, &m.id, &m.meta, &mut bytes)
            .unwrap();
        assert_eq!(bytes, m.encode());
        assert_eq!(Manifest::decode(&bytes, &Object::InMemory).unwrap(), m);
    }

    #[test]
    fn manifests_larger_than_a_check_window_read_back() {
        let entries: Vec<Entry> = (0..2 * WINDOW + 7)
            .map(|i| match i % 3 {
                0 => Entry::Zero { len: i + 1 },
                _ => Entry::Chunk {
                    id: Digest::of(&i.to_le_bytes()),
                    len: i as u32 + 1,
                },
            })
            .collect();
        let m = Manifest {
            size: entries.iter().map(Entry::len).sum(),
            id: ImageId(Digest::of(b"big")),
            entries,
            meta: ManifestMeta::default(),
        };
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes, &Object::InMemory).unwrap(), m);
        let head = check(&InMemory(&bytes), &Object::InMemory).unwrap();
        assert_eq!(head.count, m.entries.len() as u64);
        let middle = read_entries(&InMemory(&bytes), WINDOW - 2, 5, &Object::InMemory).unwrap();
        assert_eq!(middle, &m.entries[WINDOW as usize - 2..WINDOW as usize + 3]);
    }

    #[test]
    fn damage_is_named() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                matches!(
                    Manifest::decode(&bad, &Object::InMemory),
                    Err(Error::Corrupt { .. })
                ),
                "flip at {i}"
            );
        }
        assert!(matches!(
            Manifest::decode(&bytes[..bytes.len() - 1], &Object::InMemory),
            Err(Error::Corrupt { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Manifest::decode(&bytes, &Object::InMemory);
        }
    }
}
