//! Content ids: 32-byte BLAKE3 digests for chunks, images, packs and segments.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A 32-byte BLAKE3 digest shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Digest> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| Error::BadInput {
            reason: format!("{s:?} is not a 64-digit hex digest"),
        })?;
        Ok(Digest(out))
    }

    /// Store key for an object of this id: `<dir>/<first two hex>/<hex>`.
    pub fn key(&self, dir: &str) -> String {
        let hex = self.to_hex();
        format!("{dir}/{}/{hex}", &hex[..2])
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Hashes a [`Digest`] by its first 8 bytes: they are already uniformly
/// random (finding two chunks that collide there costs 2^64 BLAKE3 calls), so
/// maps over millions of ids need not run SipHash over all 32.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    /// Called with the slice length (a constant) and then the digest's 32
    /// bytes: each write folds in its first 8 bytes.
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }
}

/// A hash map keyed by digests, hashed with [`DigestHasher`].
pub type DigestMap<V> = std::collections::HashMap<Digest, V, std::hash::BuildHasherDefault<DigestHasher>>;

/// A hash set of digests, hashed with [`DigestHasher`].
pub type DigestSet = std::collections::HashSet<Digest, std::hash::BuildHasherDefault<DigestHasher>>;

/// Names a chunk: BLAKE3 of its raw bytes.
pub type ChunkId = Digest;
/// Names a pack file: BLAKE3 of the whole file.
pub type PackId = Digest;

/// Names an image: BLAKE3 of the image's bytes. Shown as `blake3:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ImageId(pub Digest);

impl ImageId {
    /// The prefix every shown image id carries.
    pub const PREFIX: &'static str = "blake3:";
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0)
    }
}

impl FromStr for ImageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::from_hex(s.strip_prefix(Self::PREFIX).unwrap_or(s)).map(ImageId)
    }
}

impl serde::Serialize for ImageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Feeds `n` zero bytes to `hasher` (zero runs and holes), on all cores:
/// a 100 GiB sparse image must not cost minutes of one core.
pub fn hash_zeros(hasher: &mut blake3::Hasher, mut n: u64) {
    static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        hasher.update_rayon(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// A name unique to this process and moment (`<pid>-<16 hex>`), for
/// temporary files, sessions and log entries.
pub fn unique_suffix() -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("the OS random source is available");
    format!("{}-{}", std::process::id(), hex::encode(r))
}
