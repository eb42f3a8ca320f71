//! Store settings frozen at `init`: format version, store id, chunker
//! parameters and compression. Cut points and codecs are part of the format,
//! so none of this changes after the first put.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};

/// The store format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Key of the config file.
pub const CONFIG_KEY: &str = "config";
/// Default average chunk size (see docs/PERFORMANCE.md for the measurement).
pub const DEFAULT_AVG_CHUNK: u32 = 32 * 1024;
/// Default zstd level. With chunks compressed in 1 MiB groups, level 2 put
/// the first full ext3 image in 15.7 s and 1228 MiB, level 3 in 23.5 s and
/// 1181 MiB (restic: 1256 MiB), level 1 in 14.4 s and 1297 MiB
/// (benches/results/HISTORY.md, "Chunk groups on the full ext3 set").
pub const DEFAULT_ZSTD_LEVEL: i32 = 2;
/// Default size at which a pack is closed and written.
pub const DEFAULT_PACK_SIZE: u64 = 32 * 1024 * 1024;

/// Puts may write an image's manifest as a delta against an earlier
/// image's (FORMAT.md, "Delta manifest"). Stores made by `init` have it;
/// a build that predates it refuses such a store instead of misreading it.
pub const MANIFEST_DELTAS: &str = "manifest-deltas";

/// Puts may compress consecutive new chunks together in one zstd frame
/// (FORMAT.md, "Pack"): zstd on 32 KiB chunks one at a time stored the
/// first full ext3 image 129 MiB above restic. Stores made by `init` have
/// it; a build that predates it refuses such a store.
pub const CHUNK_GROUPS: &str = "chunk-groups";

/// Delta manifests live under keys of their own (`<image id>.delta`,
/// FORMAT.md "Manifest keys"), so no put needs put-if-absent to keep a
/// base full. Stores made by `init` have it; in a store without it, puts
/// write full manifests only. A build that predates it refuses such a
/// store: it would not find an image stored only as a delta.
pub const DELTA_KEYS: &str = "delta-keys";

/// Pins (`pins/`) are roots of gc's mark. Stores made by `init` have it;
/// the first pin in an older store adds it. A build that predates it
/// refuses such a store: its gc would delete pinned images.
pub const PINS: &str = "pins";

/// Archived images (`archives/`): gc marks an archived image's stream
/// instead of its manifest's chunks. Added by the first `archive`; a build
/// that predates it refuses the store, since its gc would delete the chunks
/// of every archived image.
pub const ARCHIVE: &str = "archive";

/// Format features this build understands; a store listing any other is refused.
const KNOWN_FEATURES: &[&str] = &[MANIFEST_DELTAS, CHUNK_GROUPS, DELTA_KEYS, PINS, ARCHIVE];

/// Adds feature `name` to the store's config unless it is there: so that
/// builds that do not know it refuse the store instead of misreading it.
/// Re-reads the config first: another host may have added it.
pub(crate) fn add_feature(backend: &dyn Backend, name: &str) -> Result<()> {
    let bytes = backend.get(CONFIG_KEY)?.ok_or_else(|| Error::CorruptConfig {
        detail: "the config file is gone".into(),
    })?;
    let mut current = Config::parse(&bytes)?;
    if !current.has(name) {
        current.features.push(name.into());
        backend.put(CONFIG_KEY, &current.to_bytes())?;
    }
    Ok(())
}

/// The contents of `STORE/config` (JSON, so an admin can read it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Always `"imgstore"`: tells a store's config from any other JSON.
    pub format: String,
    /// Format version; a newer one than [`FORMAT_VERSION`] is refused.
    pub version: u32,
    /// Format features in use beyond the base version.
    #[serde(default)]
    pub features: Vec<String>,
    /// Random id; names the local index directory of this store.
    pub store_id: String,
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// Always `"blake3"`.
    pub hash: String,
    /// Compression of new chunks.
    pub compression: Compression,
    /// Target size of pack files in bytes.
    pub pack_size: u64,
}

/// How chunks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// zstd level (1..=19); chunks that do not shrink are stored raw.
    pub zstd_level: i32,
}

impl Config {
    /// A fresh config with a random store id and chunker seed.
    pub fn new(avg_chunk: u32, zstd_level: i32) -> Result<Config> {
        let mut rnd = [0u8; 24];
        getrandom::fill(&mut rnd).expect("the OS random source is available");
        let seed = u64::from_le_bytes(rnd[16..24].try_into().expect("8 bytes"));
        let config = Config {
            format: "imgstore".into(),
            version: FORMAT_VERSION,
            features: vec![
                MANIFEST_DELTAS.into(),
                CHUNK_GROUPS.into(),
                DELTA_KEYS.into(),
                PINS.into(),
            ],
            store_id: hex::encode(&rnd[..16]),
            chunker: ChunkerParams::with_avg(avg_chunk, seed),
            hash: "blake3".into(),
            compression: Compression { zstd_level },
            pack_size: DEFAULT_PACK_SIZE,
        };
        config.validate()?;
        Ok(config)
    }

    /// Whether the store uses format feature `name`.
    pub fn has(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
    }

    /// Parses and checks a config file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Config> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::CorruptConfig {
            detail: format!("not valid JSON: {e}"),
        })?;
        // Look at the version before the rest, so a newer store is named as
        // such rather than as a corrupt one.
        if value.get("format").and_then(|f| f.as_str()) != Some("imgstore") {
            return Err(Error::CorruptConfig {
                detail: "not an imgstore config (format field)".into(),
            });
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version > u64::from(FORMAT_VERSION) {
            return Err(Error::NewerFormat {
                found: version.to_string(),
                supported: FORMAT_VERSION,
            });
        }
        let config: Config = serde_json::from_value(value).map_err(|e| Error::CorruptConfig {
            detail: format!("bad field: {e}"),
        })?;
        if let Some(f) = config
            .features
            .iter()
            .find(|f| !KNOWN_FEATURES.contains(&f.as_str()))
        {
            return Err(Error::NewerFormat {
                found: format!("{} with feature {f:?}", config.version),
                supported: FORMAT_VERSION,
            });
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        self.chunker.validate()?;
        if self.hash != "blake3" {
            return Err(Error::BadConfig {
                reason: format!("unknown hash {:?}", self.hash),
            });
        }
        if !(1..=19).contains(&self.compression.zstd_level) {
            return Err(Error::BadConfig {
                reason: format!("zstd level {} is not in 1..=19", self.compression.zstd_level),
            });
        }
        if !(1 << 20..=1 << 32).contains(&self.pack_size) {
            return Err(Error::BadConfig {
                reason: format!("pack size {} is not in 1 MiB..=4 GiB", self.pack_size),
            });
        }
        Ok(())
    }

    /// Reads the config of the store behind `backend`.
    pub fn load(backend: &dyn Backend) -> Result<Option<Config>> {
        backend.get(CONFIG_KEY)?.map(|b| Config::parse(&b)).transpose()
    }

    /// Serialized form, pretty-printed for admins.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("config serializes");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_newer_version_refused() {
        let c = Config::new(DEFAULT_AVG_CHUNK, 3).unwrap();
        assert_eq!(Config::parse(&c.to_bytes()).unwrap(), c);
        let mut v: serde_json::Value = serde_json::from_slice(&c.to_bytes()).unwrap();
        v["version"] = 2.into();
        let err = Config::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, Error::NewerFormat { .. }), "{err}");
        v["version"] = 1.into();
        v["features"] = serde_json::json!(["zstd-dict"]);
        let err = Config::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, Error::NewerFormat { .. }), "{err}");
    }

    #[test]
    fn garbage_is_corrupt_not_panic() {
        for bad in [&b""[..], b"{", b"[]", b"{\"format\":\"imgstore\",\"version\":1}"] {
            assert!(matches!(Config::parse(bad), Err(Error::CorruptConfig { .. })));
        }
    }
}
