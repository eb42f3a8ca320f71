//! Chunk compression: zstd where it pays, raw bytes where it does not
//! (squashfs data is already gzip-compressed and barely shrinks). A put
//! compresses a run of consecutive new chunks as one frame (a group): zstd
//! on 32 KiB alone lacks the context to find repeats (benches/zstd_groups.py).

use crate::error::{Error, Object, Result};
use crate::id::ChunkId;

/// How a chunk's bytes are stored in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is.
    Raw = 0,
    /// One zstd frame.
    Zstd = 1,
    /// A slice of one zstd frame that holds several consecutive chunks
    /// (a group): decoding the frame gives them all, one after another.
    ZstdGroup = 2,
}

impl Codec {
    /// Decodes the codec byte of a pack frame or index entry.
    pub fn from_u8(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::ZstdGroup),
            _ => None,
        }
    }
}

/// Compression keeps the zstd output only when it saves at least 1/32 of the
/// chunk; below that, decoding costs more than the bytes saved.
fn pays(raw: usize, compressed: usize) -> bool {
    compressed + raw / 32 < raw
}

/// True when a sample of `raw` is as random as compressed data: squashfs
/// images are gzip-compressed inside, and zstd on them cost ~15% of a new
/// SIF put (perf) to save nothing. Four 1 KiB slices, Shannon entropy of
/// their bytes above 7.8 bits (random or compressed data gives ~7.95;
/// text and machine code stay below 7).
fn looks_incompressible(raw: &[u8]) -> bool {
    const SLICE: usize = 1024;
    if raw.len() < 4 * SLICE {
        return false;
    }
    let mut hist = [0u32; 256];
    for k in 0..4 {
        let at = k * (raw.len() - SLICE) / 3;
        for &b in &raw[at..at + SLICE] {
            hist[b as usize] += 1;
        }
    }
    let n = (4 * SLICE) as f64;
    let entropy: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    entropy > 7.8
}

/// A reusable compressor, one per worker thread.
pub struct Encoder {
    zstd: zstd::bulk::Compressor<'static>,
    check: zstd::bulk::Decompressor<'static>,
}

impl Encoder {
    /// An encoder at zstd `level`.
    pub fn new(level: i32) -> Encoder {
        Encoder {
            zstd: zstd::bulk::Compressor::new(level).expect("zstd level is validated"),
            check: zstd::bulk::Decompressor::new().expect("zstd decoder allocates"),
        }
    }

    /// Compresses `raw` if that pays, then decodes the result again and
    /// compares it with `raw` — a put never stores bytes it cannot read back.
    /// `raw` is the slice `id` was just computed from, so equal bytes are
    /// the id's bytes; comparing costs a fraction of hashing them again.
    /// `None` means "store `raw` as is" (no copy is made of it).
    pub fn encode(&mut self, id: &ChunkId, raw: &[u8]) -> Result<Option<Vec<u8>>> {
        if looks_incompressible(raw) {
            return Ok(None);
        }
        self.compress(&Object::Chunk(*id), raw)
    }

    /// Compresses `raw`, the bytes of one or several consecutive chunks
    /// whose ids were just computed from it and that a caller already found
    /// worth compressing, as one frame, if that pays; checked as
    /// [`Encoder::encode`] checks. `what` names the chunks for errors.
    pub fn encode_group(&mut self, what: &Object, raw: &[u8]) -> Result<Option<Vec<u8>>> {
        self.compress(what, raw)
    }

    fn compress(&mut self, id: &Object, raw: &[u8]) -> Result<Option<Vec<u8>>> {
        // A test hook: a compressor that encodes other bytes than it is given.
        let mut altered = Vec::new();
        let input = if crate::hold::codec_armed("encode") {
            altered.extend_from_slice(raw);
            crate::hold::codec_fault("encode", &mut altered);
            &altered[..]
        } else {
            raw
        };
        let compressed = self.zstd.compress(input).map_err(|e| Error::Internal {
            detail: format!("zstd failed on {id}: {e}"),
        })?;
        if !pays(raw.len(), compressed.len()) {
            return Ok(None);
        }
        // A failed check is the compressor's failure (a bug, or memory
        // that flips bits), not damage in the store: nothing was stored.
        let back = self
            .check
            .decompress(&compressed, raw.len())
            .map_err(|e| Error::Internal {
                detail: format!(
                    "compressing {id}: zstd cannot decode its own frame ({e}); nothing was stored"
                ),
            })?;
        if back != raw {
            return Err(Error::Internal {
                detail: format!(
                    "compressing {id}: zstd decoded its own frame to other bytes; nothing was stored"
                ),
            });
        }
        Ok(Some(compressed))
    }
}

thread_local! {
    /// This thread's encoder and its level, kept across calls: encoders made
    /// per rayon split (`map_init`) spent ~1.5% of a new ext3 image's put
    /// creating zstd contexts (perf, c00-init.ext3 of the full corpus).
    static ENCODER: std::cell::RefCell<Option<(i32, Encoder)>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's encoder at zstd `level`.
fn with_encoder<T>(level: i32, f: impl FnOnce(&mut Encoder) -> T) -> T {
    ENCODER.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, Encoder::new(level)));
        }
        let (_, enc) = slot.as_mut().expect("set above");
        f(enc)
    })
}

/// [`Encoder::encode`] with this thread's encoder at zstd `level`.
pub fn encode(level: i32, id: &ChunkId, raw: &[u8]) -> Result<Option<Vec<u8>>> {
    with_encoder(level, |enc| enc.encode(id, raw))
}

/// [`Encoder::encode_group`] with this thread's encoder at zstd `level`.
pub fn encode_group(level: i32, what: &Object, raw: &[u8]) -> Result<Option<Vec<u8>>> {
    with_encoder(level, |enc| enc.encode_group(what, raw))
}

/// Whether a chunk is worth trying to compress: not when a sample of it
/// looks as random as compressed data.
pub fn worth_compressing(raw: &[u8]) -> bool {
    !looks_incompressible(raw)
}

thread_local! {
    static DECODER: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("zstd decoder allocates"));
}

/// Decodes stored bytes to `raw_len` bytes and checks them against `id`.
/// `what` names where they came from for the error message.
pub fn decode(codec: Codec, stored: &[u8], raw_len: usize, id: &ChunkId, what: &Object) -> Result<Vec<u8>> {
    let raw = match codec {
        Codec::Raw => {
            check_len(stored, raw_len, id, what)?;
            stored.to_vec()
        }
        Codec::Zstd => decompress(stored, raw_len, id, what)?,
        Codec::ZstdGroup => {
            return Err(Error::corrupt(
                what,
                format!("chunk {id}: a group member is decoded with its group"),
            ))
        }
    };
    check_hash(&raw, id, what)?;
    Ok(raw)
}

/// Decompresses a zstd-stored chunk (no hash check: see [`check_hash`]).
pub fn decompress(stored: &[u8], raw_len: usize, id: &ChunkId, what: &Object) -> Result<Vec<u8>> {
    let raw = decompress_frame(stored, raw_len)
        .map_err(|e| Error::corrupt(what, format!("chunk {id}: zstd: {e}")))?;
    check_len(&raw, raw_len, id, what)?;
    Ok(raw)
}

/// Decompresses one zstd frame of at most `capacity` bytes.
pub fn decompress_frame(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    // One decoder context per thread: creating one per chunk cost 5% of
    // a get (perf, 1 GiB image).
    let mut raw = DECODER.with_borrow_mut(|d| d.decompress(stored, capacity))?;
    crate::hold::codec_fault("decode", &mut raw);
    Ok(raw)
}

/// Checks that a chunk's raw bytes are as long as its index entry says.
pub fn check_len(raw: &[u8], raw_len: usize, id: &ChunkId, what: &Object) -> Result<()> {
    if raw.len() != raw_len {
        return Err(Error::corrupt(
            what,
            format!("chunk {id}: {} bytes decoded, {raw_len} expected", raw.len()),
        ));
    }
    Ok(())
}

/// Checks raw chunk bytes against their id.
pub fn check_hash(raw: &[u8], id: &ChunkId, what: &Object) -> Result<()> {
    if ChunkId::of(raw) != *id {
        return Err(Error::corrupt(what, format!("chunk {id}: hash mismatch")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_codecs() {
        let mut enc = Encoder::new(3);
        let text = b"hello world ".repeat(1000);
        let id = ChunkId::of(&text);
        let stored = enc.encode(&id, &text).unwrap().expect("text compresses");
        assert_eq!(
            decode(Codec::Zstd, &stored, text.len(), &id, &Object::InMemory).unwrap(),
            text
        );

        let mut noise = vec![0u8; 4096];
        getrandom::fill(&mut noise).unwrap();
        let id = ChunkId::of(&noise);
        assert_eq!(enc.encode(&id, &noise).unwrap(), None, "noise is stored raw");
        assert_eq!(
            decode(Codec::Raw, &noise, noise.len(), &id, &Object::InMemory).unwrap(),
            noise
        );
    }

    #[test]
    fn thread_encoder_follows_the_level_asked_for() {
        // Words drawn by a xorshift generator: compressible, and unlike
        // plain repetition, levels 1 and 19 give different sizes.
        let words = [
            "lib", "cuda", "so", "init", "py", "blas", "fft", "dnn", "0x7f", "rand",
        ];
        let mut x: u64 = 88172645463325252;
        let mut text = Vec::new();
        while text.len() < 32 * 1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.extend_from_slice(words[(x % 10) as usize].as_bytes());
            text.push(b' ');
        }
        let id = ChunkId::of(&text);
        let fast = encode(1, &id, &text).unwrap().expect("compresses");
        let best = encode(19, &id, &text).unwrap().expect("compresses");
        let fast_again = encode(1, &id, &text).unwrap().expect("compresses");
        assert!(best.len() < fast.len(), "{} vs {}", best.len(), fast.len());
        assert_eq!(fast, fast_again);
        for stored in [fast, best] {
            assert_eq!(
                decode(Codec::Zstd, &stored, text.len(), &id, &Object::InMemory).unwrap(),
                text
            );
        }
    }

    #[test]
    fn entropy_sample_tells_random_from_text() {
        let mut noise = vec![0u8; 32 * 1024];
        getrandom::fill(&mut noise).unwrap();
        assert!(looks_incompressible(&noise));
        assert!(!looks_incompressible(&b"hello world, some text ".repeat(2000)));
        assert!(
            !looks_incompressible(&noise[..1000]),
            "short chunks are always tried"
        );
    }

    #[test]
    fn decode_detects_damage() {
        let data = b"abc".repeat(500);
        let id = ChunkId::of(&data);
        let codec = Codec::Zstd;
        let mut stored = Encoder::new(3).encode(&id, &data).unwrap().expect("compresses");
        let n = stored.len();
        stored[n / 2] ^= 1;
        assert!(matches!(
            decode(codec, &stored, data.len(), &id, &Object::InMemory),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            decode(Codec::Raw, b"xyz", 3, &id, &Object::InMemory),
            Err(Error::Corrupt { .. })
        ));
    }
}
