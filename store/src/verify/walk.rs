//! The walk: one listing of the store in commit-safe order, each key
//! sorted into what verify checks or reported as a file that does not belong.

use super::{Problem, ProblemKind};
use crate::config::CONFIG_KEY;
use crate::error::Result;
use crate::index::QUARANTINE_DIR;
use crate::manifest::{self, MANIFESTS_DIR};
use crate::pack::PACKS_DIR;
use crate::pins::{self, PINS_DIR};
use crate::refs::{self, TagRef, REFS_DIR};
use crate::segment::INDEX_DIR;
use crate::Store;

pub(super) struct Walk {
    pub(super) refs: Vec<String>,
    pub(super) pins: Vec<String>,
    pub(super) manifests: Vec<String>,
    pub(super) segments: Vec<String>,
    pub(super) packs: Vec<String>,
    pub(super) logs: Vec<String>,
}

fn is_hex_id(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Files `classify` sorts into `w`; else why the key does not belong.
fn classify(key: &str, w: &mut Walk) -> Option<&'static str> {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        [CONFIG_KEY] => None,
        [REFS_DIR, .., last] if refs::is_tag_entry(last) => {
            let comps: Vec<String> = parts[1..].iter().map(|c| c.to_string()).collect();
            let valid = refs::ref_from_path(&comps).is_some_and(|t| TagRef::parse(&t.to_string()).is_ok());
            if valid {
                w.refs.push(key.into());
                None
            } else {
                Some("that is not a valid name:tag")
            }
        }
        [REFS_DIR, ..] => Some("that is not a ref"),
        [PINS_DIR, ..] if pins::pin_key_image(key).is_some() => {
            w.pins.push(key.into());
            None
        }
        [PINS_DIR, ..] => Some("that is not a pin named by an image id"),
        // Sharded content: <dir>/<xx>/<64 hex starting with xx>.
        [dir @ (MANIFESTS_DIR | INDEX_DIR | PACKS_DIR), shard, name] => {
            let shard_ok = shard.len() == 2
                && shard
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            let id = match *dir {
                MANIFESTS_DIR => name.strip_suffix(manifest::DELTA_SUFFIX).unwrap_or(name),
                _ => name,
            };
            if !shard_ok {
                return Some("where only shard directories belong");
            }
            if !(is_hex_id(id) && id.starts_with(shard)) {
                return Some("that is not named by its content id");
            }
            match *dir {
                MANIFESTS_DIR => w.manifests.push(key.into()),
                INDEX_DIR => w.segments.push(key.into()),
                _ => w.packs.push(key.into()),
            }
            None
        }
        [MANIFESTS_DIR | INDEX_DIR | PACKS_DIR, ..] => Some("where only shard directories belong"),
        // log/ and sessions/: flat directories of .json records.
        [dir @ ("log" | "sessions"), name] if name.ends_with(".json") => {
            if *dir == "log" {
                w.logs.push(key.into());
            }
            None
        }
        ["log" | "sessions", ..] => Some("that is not a .json record"),
        // archives/<xx>/<image hex>[.stream]: an archived image's recipe
        // and stream manifest (read through the images that have them).
        [crate::archive::ARCHIVES_DIR, shard, name] => {
            let id = name.strip_suffix(crate::archive::STREAM_SUFFIX).unwrap_or(name);
            if is_hex_id(id) && id.starts_with(shard) && shard.len() == 2 {
                None
            } else {
                Some("that is not named by an image id")
            }
        }
        [crate::archive::ARCHIVES_DIR, ..] => Some("where only shard directories belong"),
        // gc/ and quarantine/ belong to their commands, oci/ to `serve`
        // (records named by content: never wrong, at most unused).
        ["gc" | QUARANTINE_DIR | crate::oci::OCI_DIR, _, ..] => None,
        _ => Some("that the store layout has no place for"),
    }
}

/// Directories listed first, in this order.
const ORDERED: [&str; 5] = [REFS_DIR, PINS_DIR, MANIFESTS_DIR, INDEX_DIR, PACKS_DIR];

/// A stray file's problem.
fn stray(key: String, why: &str) -> Problem {
    Problem {
        kind: ProblemKind::Stray,
        key,
        detail: format!("file {why}"),
    }
}

impl Store {
    /// Lists the store in commit-safe order (refs, manifests, segments,
    /// packs) and reports what does not belong. One listing of every key,
    /// each classified by its path; what is not an object at all (a
    /// symlink in a store directory) comes from the backend apart, never
    /// followed.
    pub(super) fn walk(&self, problems: &mut Vec<Problem>) -> Result<Walk> {
        let mut w = Walk {
            refs: Vec::new(),
            pins: Vec::new(),
            manifests: Vec::new(),
            segments: Vec::new(),
            packs: Vec::new(),
            logs: Vec::new(),
        };
        for (key, detail) in self.backend.foreign_entries()? {
            problems.push(Problem {
                kind: ProblemKind::Symlink,
                key,
                detail,
            });
        }
        // Listed in commit-safe order: refs and pins before manifests before
        // segments before packs, so a put finishing during the walk is seen
        // whole or not at all.
        for dir in ORDERED {
            for key in self.backend.list(dir)? {
                if let Some(why) = classify(&key, &mut w) {
                    problems.push(stray(key, why));
                }
            }
        }
        for key in self.backend.list("")? {
            let top = key.split('/').next().unwrap_or_default();
            if ORDERED.contains(&top) {
                continue;
            }
            if let Some(why) = classify(&key, &mut w) {
                problems.push(stray(key, why));
            }
        }
        w.refs.sort();
        w.pins.sort();
        Ok(w)
    }
}
