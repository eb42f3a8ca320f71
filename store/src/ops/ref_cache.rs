//! Ref records kept on this host for the commands that only show refs
//! (`ls`, `find`, `mount`): on object storage each ref is an object, and
//! reading 1,000 of them is 1,000 GETs per command (or per second, for a
//! mount in use). The listing carries each object's ETag, which changes
//! with its contents, so only refs whose ETag changed are read again.
//!
//! gc, prune and verify never use it: they read every ref from the store.
//! On a directory store (no ETags in a listing) it reads every ref, as
//! before: a local read costs about what a stat would.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::refs::{list_refs, parallel_map, read_ref_at, tag_of_key};
use crate::error::Result;
use crate::refs::{check_name, RefRecord, TagRef, REFS_DIR};
use crate::Store;

/// The cache file in this host's index directory.
const CACHE_FILE: &str = "refs-cache.json";

/// One cached ref: the ETag it was read at, and what it said.
#[derive(Serialize, Deserialize)]
struct Cached {
    etag: String,
    record: RefRecord,
}

impl Store {
    /// The refs of `name` (all when `None`), as [`Store::refs`] gives them,
    /// reading from the store only those that changed since this host
    /// last read them (object storage); sorted.
    pub fn refs_for_display(&self, name: Option<&str>) -> Result<Vec<(TagRef, RefRecord)>> {
        if let Some(n) = name {
            check_name(n)?;
        }
        let prefix = name.map_or_else(|| REFS_DIR.to_string(), |n| format!("{REFS_DIR}/{n}"));
        let Some(listed) = self.backend.list_etags(&prefix)? else {
            return list_refs(self.backend.as_ref(), name);
        };
        let path = self.index_dir.join(CACHE_FILE);
        let mut cache = load(&path);
        let mut out = Vec::with_capacity(listed.len());
        let mut stale = Vec::new();
        for (key, etag) in &listed {
            let t = tag_of_key(key)?;
            match cache.get(key) {
                Some(c) if c.etag == *etag => out.push((t, c.record.clone())),
                _ => stale.push((key.clone(), t, etag.clone())),
            }
        }
        let read = |(key, t, _): &(String, TagRef, String)| read_ref_at(self.backend.as_ref(), key, t);
        let fresh = parallel_map(&stale, read)?;
        // Keys under the prefix that are no longer listed leave the cache.
        let keys: HashSet<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        let before = cache.len();
        let dir = format!("{prefix}/");
        cache.retain(|k, _| !k.starts_with(&dir) || keys.contains(k.as_str()));
        let changed = !stale.is_empty() || cache.len() != before;
        for ((key, _, etag), got) in stale.into_iter().zip(fresh) {
            match got {
                Some((t, record)) => {
                    cache.insert(
                        key,
                        Cached {
                            etag,
                            record: record.clone(),
                        },
                    );
                    out.push((t, record));
                }
                // Removed since the listing.
                None => {
                    cache.remove(&key);
                }
            }
        }
        if changed {
            save(&path, &cache);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// The cache as last saved; empty if missing or unreadable (it is only a cache).
fn load(path: &Path) -> HashMap<String, Cached> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Saves the cache whole (beside it, then renamed); a failure only costs
/// the next command its reads.
fn save(path: &Path, cache: &HashMap<String, Cached>) {
    let Some(dir) = path.parent() else { return };
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer(&mut tmp, cache)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        tracing::warn!("could not save the ref cache {}: {e}", path.display());
    }
}
