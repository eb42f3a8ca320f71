//! Delta manifests: an image's entries as runs copied from another image's
//! full manifest, plus the entries that are new.
//!
//! A commit's image differs from the last commit's in a few chunks, yet a
//! full manifest costs 41 bytes a chunk: 1.45 MB for a 1.4 GB squashfs
//! image, more than an edit-only commit's new chunks (benches/results/HISTORY.md,
//! "Delta manifests").
//! A delta costs 17 bytes a run of shared entries and 41 a new one.
//!
//! ```text
//! header  104 B  magic "IMGSMANI", version u32 = 2, reserved u32, image size u64,
//!                image BLAKE3 [32], entry count u64, base image BLAKE3 [32], op count u64
//! op             kind u8 0 (copy): first base entry u64, entry count u64
//!                kind u8 1 (new): entry count u64, then that many 41-byte entries
//! meta           u32 length, then JSON, as in a full manifest
//! trailer 32 B   BLAKE3 of everything before it
//! ```
//!
//! A base is always a full manifest, so reading a delta reads one more
//! file, never a chain: a put picks as base the newest image of the same
//! name, or that image's own base when it is a delta; and a delta lives
//! under a key of its own (`<image id>.delta`, [`super::delta_key`]), never
//! under a full manifest's, so a base stays full without put-if-absent.

use std::collections::HashMap;
use std::io::{self, Write};

use super::{write_encoded, Entry, Header, ManifestFile, ManifestMeta, Spooled, ENTRY_LEN, MAGIC, WINDOW};
use crate::backend::ReadAt;
use crate::error::{Error, Object, Result};
use crate::id::{ChunkId, Digest, ImageId};

/// The format version of a delta manifest (a full one is version 1).
pub(super) const VERSION: u32 = 2;
const HEADER_LEN: usize = 104;
const COPY_LEN: u64 = 17;
const NEW_LEN: u64 = 9;
/// The largest delta a put writes; above it, or above half the full
/// manifest, the full manifest is written. A reader holds a delta in
/// memory, so this bounds its memory whatever the image size.
pub const MAX_BYTES: u64 = 4 << 20;
/// What a reader accepts: a delta beyond this was not written by a put.
const MAX_READ: u64 = 4 * MAX_BYTES;

/// Entries of the image, `count` of them from entry `first` on, taken from
/// `source`.
#[derive(Debug, Clone, Copy)]
struct Run {
    first: u64,
    count: u64,
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    /// The base's entries from this one on.
    Base(u64),
    /// Encoded entries at this offset of the delta file.
    Literal(usize),
}

/// An opened, checked delta manifest.
pub(super) struct Delta {
    bytes: Vec<u8>,
    runs: Vec<Run>,
    base: Box<ManifestFile>,
}

impl Delta {
    /// Entries `from..from + n` of the image.
    pub(super) fn entries(&self, from: u64, n: u64, what: &Object) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(n as usize);
        let end = from + n;
        let mut i = self.runs.partition_point(|r| r.first + r.count <= from);
        let mut at = from;
        while at < end {
            let run = self
                .runs
                .get(i)
                .ok_or_else(|| Error::corrupt(what, format!("no entry {at}")))?;
            let skip = at - run.first;
            let k = (run.count - skip).min(end - at);
            match run.source {
                Source::Base(start) => out.extend(self.base.entries(start + skip, k)?),
                Source::Literal(pos) => {
                    let p = pos + skip as usize * ENTRY_LEN;
                    let encoded = &self.bytes[p..p + k as usize * ENTRY_LEN];
                    for (j, r) in encoded.chunks_exact(ENTRY_LEN).enumerate() {
                        out.push(Entry::decode(r, at + j as u64, what)?);
                    }
                }
            }
            at += k;
            i += 1;
        }
        Ok(out)
    }
}

/// Checks the delta manifest in `file` whole (trailer, ops, entries, that
/// the entries cover the image size) against its base, which `base` opens,
/// handing each entry to `each` on the way.
pub(super) fn open(
    file: &dyn ReadAt,
    what: &Object,
    base: &mut dyn FnMut(&ImageId) -> Result<ManifestFile>,
    each: &mut dyn FnMut(Entry),
) -> Result<(Header, Delta)> {
    let bad = |d: String| Error::corrupt(what, d);
    let len = file.size()?;
    if len > MAX_READ {
        return Err(bad(format!(
            "a delta of {len} bytes is larger than any put writes"
        )));
    }
    if len < (HEADER_LEN + 4 + 32) as u64 {
        return Err(bad("not a manifest (magic or length)".into()));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)?;
    let (body, trailer) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != trailer {
        return Err(bad("checksum mismatch".into()));
    }
    let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().expect("8 bytes"));
    let digest_at = |o: usize| Digest(body[o..o + 32].try_into().expect("32 bytes"));
    let (size, id, count) = (u64_at(16), ImageId(digest_at(24)), u64_at(56));
    let (base_id, ops) = (ImageId(digest_at(64)), u64_at(96));

    let base = base(&base_id).map_err(|e| match e {
        Error::Corrupt { detail, .. } => bad(format!("its base image {base_id}: {detail}")),
        other => other,
    })?;
    if base.head.base.is_some() {
        return Err(bad(format!("its base image {base_id} is itself a delta")));
    }

    let mut runs = Vec::new();
    let mut pos = HEADER_LEN;
    let mut first: u64 = 0;
    let truncated = || bad("ops run past the metadata".into());
    for op in 0..ops {
        let kind = *body.get(pos).ok_or_else(truncated)?;
        let field = |o: usize| -> Result<u64> {
            let b = body.get(o..o + 8).ok_or_else(truncated)?;
            Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let n = field(pos + 1)?;
        let source = match kind {
            0 => {
                let start = n;
                let n = field(pos + 9)?;
                if start.checked_add(n).is_none_or(|e| e > base.head.count) {
                    return Err(bad(format!(
                        "op {op}: copies past the base's {} entries",
                        base.head.count
                    )));
                }
                pos += COPY_LEN as usize;
                (n, Source::Base(start))
            }
            1 => {
                let at = pos + NEW_LEN as usize;
                let end = n
                    .checked_mul(ENTRY_LEN as u64)
                    .and_then(|b| b.checked_add(at as u64))
                    .filter(|&e| e <= body.len() as u64)
                    .ok_or_else(truncated)? as usize;
                for (j, r) in body[at..end].chunks_exact(ENTRY_LEN).enumerate() {
                    Entry::decode(r, first + j as u64, what)?;
                }
                pos = end;
                (n, Source::Literal(at))
            }
            k => return Err(bad(format!("op {op}: unknown kind {k}"))),
        };
        let (n, source) = source;
        runs.push(Run {
            first,
            count: n,
            source,
        });
        first = first
            .checked_add(n)
            .ok_or_else(|| bad(format!("op {op}: entry count overflows")))?;
    }
    if first != count {
        return Err(bad(format!("ops give {first} entries, header says {count}")));
    }
    let meta_len = body
        .get(pos..pos + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| bad("metadata length does not match the file".into()))?;
    if pos + 4 + meta_len != body.len() {
        return Err(bad("metadata length does not match the file".into()));
    }
    let meta: ManifestMeta =
        serde_json::from_slice(&body[pos + 4..]).map_err(|e| bad(format!("metadata: {e}")))?;

    let delta = Delta {
        bytes,
        runs,
        base: Box::new(base),
    };
    let mut total: u64 = 0;
    let mut at = 0;
    while at < count {
        let n = (count - at).min(WINDOW);
        for e in delta.entries(at, n, what)? {
            total = total
                .checked_add(e.len())
                .ok_or_else(|| bad(format!("entry lengths overflow near entry {at}")))?;
            each(e);
        }
        at += n;
    }
    if total != size {
        return Err(bad(format!("entries cover {total} bytes, header says {size}")));
    }
    let head = Header {
        size,
        id,
        count,
        meta,
        base: Some(base_id),
    };
    Ok((head, delta))
}

/// The image whose full manifest the manifest in `file` is a delta
/// against, from its header alone; `None` for a full manifest. Unchecked:
/// a caller that uses the base opens and checks it.
pub fn base_of(file: &dyn ReadAt, what: &Object) -> Result<Option<ImageId>> {
    let mut head = [0u8; 96];
    let n = file.size()?.min(head.len() as u64) as usize;
    file.read_exact_at(&mut head[..n], 0)?;
    if n < 12 || &head[..8] != MAGIC {
        return Err(Error::corrupt(what, "not a manifest (magic)"));
    }
    match u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) {
        VERSION if n == head.len() => Ok(Some(ImageId(Digest(head[64..96].try_into().expect("32 bytes"))))),
        VERSION => Err(Error::corrupt(what, "delta header cut short")),
        _ => Ok(None),
    }
}

/// A delta worked out by [`plan`], ready to write.
pub struct Plan {
    base: ImageId,
    ops: Vec<Op>,
    /// Its encoded size, without the metadata.
    pub bytes: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Op {
    Copy {
        start: u64,
        count: u64,
    },
    /// `count` spooled entries from entry `from` on.
    New {
        from: u64,
        count: u64,
    },
}

/// The base's entries, read a window at a time: runs of copied entries
/// read it forward.
struct BaseWindow<'a> {
    file: &'a ManifestFile,
    start: u64,
    entries: Vec<Entry>,
}

impl BaseWindow<'_> {
    fn get(&mut self, i: u64) -> Result<Entry> {
        if i < self.start || i >= self.start + self.entries.len() as u64 {
            let n = (self.file.head.count - i).min(4096);
            self.entries = self.file.entries(i, n)?;
            self.start = i;
        }
        Ok(self.entries[(i - self.start) as usize])
    }
}

/// The first 8 bytes of a chunk id: enough to find a candidate in the base,
/// which the whole entry then confirms.
fn prefix(id: &ChunkId) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"))
}

/// The image in `spooled` as a delta against the full manifest `base`, or
/// `None` when that would not pay: more than half the full manifest, or
/// more than [`MAX_BYTES`]. Memory: 16 bytes per base chunk, one window of
/// entries, and the ops.
pub fn plan(spooled: &Spooled, base: &ManifestFile) -> Result<Option<Plan>> {
    if base.head.base.is_some() {
        // A delta's base must be a full manifest.
        return Ok(None);
    }
    let limit = (spooled.count() * ENTRY_LEN as u64 / 2).min(MAX_BYTES);
    let mut positions = HashMap::<u64, u64>::with_capacity(base.head.count as usize);
    let mut at = 0;
    while at < base.head.count {
        let n = (base.head.count - at).min(WINDOW);
        for (k, e) in base.entries(at, n)?.iter().enumerate() {
            if let Entry::Chunk { id, .. } = e {
                positions.entry(prefix(id)).or_insert(at + k as u64);
            }
        }
        at += n;
    }
    let mut window = BaseWindow {
        file: base,
        start: 0,
        entries: Vec::new(),
    };
    let mut ops: Vec<Op> = Vec::new();
    let mut bytes = (HEADER_LEN + 4 + 32) as u64;
    let mut i = 0;
    while i < spooled.count() {
        let n = (spooled.count() - i).min(WINDOW);
        for (k, e) in spooled.read(i, n)?.into_iter().enumerate() {
            let index = i + k as u64;
            if let Some(Op::Copy { start, count }) = ops.last_mut() {
                let next = *start + *count;
                if next < base.head.count && window.get(next)? == e {
                    *count += 1;
                    continue;
                }
            }
            let found = match e {
                Entry::Chunk { id, .. } => positions.get(&prefix(&id)).copied(),
                Entry::Zero { .. } => None,
            };
            match found {
                Some(p) if window.get(p)? == e => {
                    ops.push(Op::Copy { start: p, count: 1 });
                    bytes += COPY_LEN;
                }
                _ => {
                    if let Some(Op::New { count, .. }) = ops.last_mut() {
                        *count += 1;
                    } else {
                        ops.push(Op::New {
                            from: index,
                            count: 1,
                        });
                        bytes += NEW_LEN;
                    }
                    bytes += ENTRY_LEN as u64;
                }
            }
            if bytes > limit {
                return Ok(None);
            }
        }
        i += n;
    }
    Ok(Some(Plan {
        base: base.head.id,
        ops,
        bytes,
    }))
}

impl Plan {
    /// Writes the delta manifest of the image `id` of `size` bytes, whose
    /// entries are in `spooled`, to `out`.
    pub fn write(
        &self,
        spooled: &Spooled,
        size: u64,
        id: &ImageId,
        meta: &ManifestMeta,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&size.to_le_bytes());
        head.extend_from_slice(&id.0 .0);
        head.extend_from_slice(&spooled.count().to_le_bytes());
        head.extend_from_slice(&self.base.0 .0);
        head.extend_from_slice(&(self.ops.len() as u64).to_le_bytes());
        let mut ops = |w: &mut dyn Write| {
            for op in &self.ops {
                match *op {
                    Op::Copy { start, count } => {
                        w.write_all(&[0])?;
                        w.write_all(&start.to_le_bytes())?;
                        w.write_all(&count.to_le_bytes())?;
                    }
                    Op::New { from, count } => {
                        w.write_all(&[1])?;
                        w.write_all(&count.to_le_bytes())?;
                        let mut at = from;
                        while at < from + count {
                            let n = (from + count - at).min(WINDOW);
                            w.write_all(&spooled.read_raw(at, n)?)?;
                            at += n;
                        }
                    }
                }
            }
            Ok(())
        };
        write_encoded(out, &head, &mut ops, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::InMemory;
    use crate::manifest::{Manifest, Spool};
    use proptest::prelude::*;

    fn chunk(i: u64) -> Entry {
        Entry::Chunk {
            id: Digest::of(&i.to_le_bytes()),
            len: 1000 + (i % 7) as u32,
        }
    }

    fn manifest(entries: Vec<Entry>, name: &[u8]) -> Manifest {
        Manifest {
            size: entries.iter().map(Entry::len).sum(),
            id: ImageId(Digest::of(name)),
            entries,
            meta: ManifestMeta::default(),
        }
    }

    fn file(bytes: Vec<u8>) -> Box<dyn ReadAt> {
        Box::new(InMemory(Box::leak(bytes.into_boxed_slice())))
    }

    fn full(m: &Manifest) -> ManifestFile {
        ManifestFile::open_full(file(m.encode()), Object::InMemory).unwrap()
    }

    fn spooled(m: &Manifest) -> Spooled {
        let mut spool = Spool::new().unwrap();
        for e in &m.entries {
            spool.push(*e).unwrap();
        }
        spool.finish().unwrap()
    }

    /// The delta of `m` against `base`, if it pays, as written.
    fn delta_bytes(m: &Manifest, base: &Manifest) -> Option<Vec<u8>> {
        let s = spooled(m);
        let plan = plan(&s, &full(base)).unwrap()?;
        let mut bytes = Vec::new();
        plan.write(&s, m.size, &m.id, &m.meta, &mut bytes).unwrap();
        let meta = serde_json::to_vec(&m.meta).unwrap().len() as u64;
        assert_eq!(
            plan.bytes + meta,
            bytes.len() as u64,
            "the planned size is the written size"
        );
        Some(bytes)
    }

    fn open_delta(bytes: Vec<u8>, base: &Manifest) -> Result<ManifestFile> {
        let base = base.encode();
        ManifestFile::open(file(bytes), Object::InMemory, &mut |_| {
            ManifestFile::open_full(file(base.clone()), Object::InMemory)
        })
    }

    /// A history's next image: some entries edited, some inserted, some
    /// dropped, a zero run added.
    fn next_commit(base: &Manifest) -> Manifest {
        let mut entries = base.entries.clone();
        let n = entries.len();
        entries[10] = chunk(1_000_000);
        entries.insert(n / 3, chunk(1_000_001));
        entries.insert(n / 3 + 1, Entry::Zero { len: 4096 });
        entries.drain(2 * n / 3..2 * n / 3 + 3);
        let last = entries.len() - 1;
        entries[last] = chunk(1_000_002);
        manifest(entries, b"next")
    }

    #[test]
    fn a_delta_reads_back_as_the_image_it_describes() {
        let base = manifest((0..3 * WINDOW / 2).map(chunk).collect(), b"base");
        let next = next_commit(&base);
        let bytes = delta_bytes(&next, &base).expect("a small edit pays");
        // Four edits cost a few runs, not the whole list (1.5 MB).
        assert!(bytes.len() < 500, "{} bytes", bytes.len());
        let m = open_delta(bytes.clone(), &base).unwrap();
        assert_eq!(m.head.base, Some(base.id));
        assert_eq!(
            (m.head.size, m.head.count),
            (next.size, next.entries.len() as u64)
        );
        for (from, n) in [
            (0, 11),
            (495, 10),
            (1999, 5),
            (WINDOW - 3, 7),
            (next.entries.len() as u64 - 2, 2),
        ] {
            let want = &next.entries[from as usize..(from + n) as usize];
            assert_eq!(m.entries(from, n).unwrap(), want, "entries {from}..+{n}");
        }
        assert_eq!(m.entries(0, m.head.count).unwrap(), next.entries);
        assert_eq!(
            base_of(&InMemory(&bytes), &Object::InMemory).unwrap(),
            Some(base.id)
        );
        assert_eq!(
            base_of(&InMemory(&base.encode()), &Object::InMemory).unwrap(),
            None
        );
    }

    #[test]
    fn a_delta_that_does_not_pay_is_not_planned() {
        let base = manifest((0..1000).map(chunk).collect(), b"base");
        let other = manifest((5000..6000).map(chunk).collect(), b"other");
        assert!(delta_bytes(&other, &base).is_none());
        // Half the entries new: a delta over half the full size.
        let half = manifest((500..1600).map(chunk).collect(), b"half");
        assert!(delta_bytes(&half, &base).is_none());
    }

    #[test]
    fn damage_is_named() {
        let base = manifest((0..300).map(chunk).collect(), b"base");
        let bytes = delta_bytes(&next_commit(&base), &base).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                matches!(open_delta(bad, &base), Err(Error::Corrupt { .. })),
                "flip at {i}"
            );
        }
        assert!(matches!(
            open_delta(bytes[..bytes.len() - 1].to_vec(), &base),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn a_delta_against_the_wrong_base_or_a_delta_is_refused() {
        let base = manifest((0..300).map(chunk).collect(), b"base");
        let bytes = delta_bytes(&next_commit(&base), &base).unwrap();
        // A base with fewer entries than the delta copies.
        let short = manifest((0..100).map(chunk).collect(), b"base");
        let e = open_delta(bytes.clone(), &short).err().expect("refused");
        assert!(e.to_string().contains("copies past the base"), "{e}");
        // A base of other entries: the lengths no longer add up.
        let longer = |i| match chunk(i) {
            Entry::Chunk { id, len } => Entry::Chunk { id, len: len + 1 },
            zero => zero,
        };
        let other = manifest((0..300).map(longer).collect(), b"base");
        assert!(matches!(
            open_delta(bytes.clone(), &other),
            Err(Error::Corrupt { .. })
        ));
        // A full manifest is what a base must be.
        let e = ManifestFile::open_full(file(bytes), Object::InMemory)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("is a delta"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let base = manifest((0..50).map(chunk).collect(), b"base");
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&VERSION.to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            bytes.extend_from_slice(&tail);
            // A sound trailer, so the parsing behind it is what is tried.
            let sum = blake3::hash(&bytes);
            bytes.extend_from_slice(sum.as_bytes());
            let _ = open_delta(bytes, &base);
        }
    }
}
