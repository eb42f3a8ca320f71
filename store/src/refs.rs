//! Names and refs: the grammar of `collection/name:tag`, how a ref maps to a
//! store key, and the small record a ref file holds.
//!
//! A ref file is `refs/<name>/@<tag>`. Name components cannot start with `@`,
//! so a tag file never collides with a deeper name's directory. Replacing a
//! ref file (one atomic rename) is the commit point of a put.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Object, Result};
use crate::id::ImageId;

/// Store directory of refs.
pub const REFS_DIR: &str = "refs";
const TAG_MARK: char = '@';
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A checked `name:tag`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TagRef {
    /// `collection/name`, lowercase components.
    pub name: String,
    /// The tag.
    pub tag: String,
}

impl fmt::Display for TagRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

fn bad(name: &str, reason: impl Into<String>) -> Error {
    Error::BadName {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Checks a repository name: `[a-z0-9]+([._-][a-z0-9]+)*` components joined by `/`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(bad(name, "the name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(name, format!("longer than {MAX_NAME_LEN} characters")));
    }
    for comp in name.split('/') {
        if comp.is_empty() {
            return Err(bad(name, "empty path component"));
        }
        let mut prev_sep = true;
        for c in comp.chars() {
            match c {
                'a'..='z' | '0'..='9' => prev_sep = false,
                '.' | '_' | '-' if !prev_sep => prev_sep = true,
                '.' | '_' | '-' => {
                    return Err(bad(
                        name,
                        format!("component {comp:?} has a separator at its start or two in a row"),
                    ))
                }
                'A'..='Z' => return Err(bad(name, "names are lowercase")),
                _ => return Err(bad(name, format!("character {c:?} is not allowed in a name"))),
            }
        }
        if prev_sep {
            return Err(bad(name, format!("component {comp:?} ends with a separator")));
        }
    }
    Ok(())
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn check_tag(tag: &str, whole: &str) -> Result<()> {
    if tag.is_empty() {
        return Err(bad(whole, "the tag is empty"));
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(bad(
            whole,
            format!("the tag is longer than {MAX_TAG_LEN} characters"),
        ));
    }
    let mut chars = tag.chars();
    let first = chars.next().expect("non-empty");
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(bad(whole, "a tag starts with a letter, digit or '_'"));
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(bad(whole, format!("character {c:?} is not allowed in a tag")));
    }
    Ok(())
}

impl TagRef {
    /// Parses and checks `name:tag`.
    pub fn parse(s: &str) -> Result<TagRef> {
        let (name, tag) = s
            .split_once(':')
            .ok_or_else(|| bad(s, "missing `:TAG` (write it as NAME:TAG, e.g. lab/app:3f2c1e)"))?;
        check_name(name)?;
        check_tag(tag, s)?;
        Ok(TagRef {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }

    /// The store key of this ref's file.
    pub fn key(&self) -> String {
        format!("{REFS_DIR}/{}/{TAG_MARK}{}", self.name, self.tag)
    }
}

/// What a user may name an image by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `name:tag`.
    Tag(TagRef),
    /// `blake3:<hex>`, or a prefix of at least 6 hex digits after `blake3:`.
    Id(String),
}

impl ImageRef {
    /// Parses a ref as a user typed it.
    pub fn parse(s: &str) -> Result<ImageRef> {
        if let Some(hex) = s.strip_prefix(ImageId::PREFIX) {
            if hex.len() < 6 || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(s, "an image id is `blake3:` and 6 to 64 hex digits"));
            }
            return Ok(ImageRef::Id(hex.to_ascii_lowercase()));
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(ImageRef::Id(s.to_ascii_lowercase()));
        }
        TagRef::parse(s).map(ImageRef::Tag)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Tag(t) => t.fmt(f),
            ImageRef::Id(hex) => write!(f, "{}{hex}", ImageId::PREFIX),
        }
    }
}

/// What a put added to the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// Chunks that were new to the store.
    pub chunks: u64,
    /// Their raw bytes.
    pub raw_bytes: u64,
    /// Their bytes on disk after compression (pack framing excluded).
    pub stored_bytes: u64,
}

/// The contents of a ref file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    /// Always `"imgstore-ref"`.
    pub format: String,
    /// Record version, 1.
    pub version: u32,
    /// The image this ref names.
    pub image: ImageId,
    /// Its size in bytes.
    pub size: u64,
    /// When it was put or tagged (seconds since the epoch, the writing host's clock).
    pub created: u64,
    /// Who put it.
    pub user: String,
    /// From which host.
    pub host: String,
    /// `--message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `--label`s, merged over labels lifted from a SIF image.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--deffile`, when given (a SIF's own deffile stays in the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deffile: Option<String>,
    /// What the put that made this image added to the store.
    #[serde(default)]
    pub added: Added,
}

impl RefRecord {
    /// Serialized form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("ref serializes");
        v.push(b'\n');
        v
    }

    /// Parses a ref file; `what` names it in errors.
    pub fn parse(bytes: &[u8], what: &Object) -> Result<RefRecord> {
        let r: RefRecord = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(what, format!("not a ref record: {e}")))?;
        if r.format != "imgstore-ref" {
            return Err(Error::corrupt(what, "not a ref record (format field)"));
        }
        if r.version > 1 {
            return Err(Error::NewerFormat {
                found: format!("ref version {}", r.version),
                supported: 1,
            });
        }
        Ok(r)
    }
}

/// Splits a key under `refs/` back into a ref; `None` for a directory.
pub fn ref_from_path(components: &[String]) -> Option<TagRef> {
    let (last, dirs) = components.split_last()?;
    let tag = last.strip_prefix(TAG_MARK)?;
    Some(TagRef {
        name: dirs.join("/"),
        tag: tag.to_string(),
    })
}

/// True for a directory entry under `refs/` that is a tag file.
pub fn is_tag_entry(name: &str) -> bool {
    name.starts_with(TAG_MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_names() {
        for s in [
            "lab/app:3f2c1e",
            "a:b",
            "lab/sub.x/app-1_2:V1.0-rc_1",
            "x:_",
            "a1/b2/c3:latest",
        ] {
            TagRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        let long_tag = format!("a:{}", "t".repeat(128));
        TagRef::parse(&long_tag).unwrap();
    }

    #[test]
    fn rejects_bad_names() {
        let long_tag = format!("a:{}", "t".repeat(129));
        let long_name = format!("{}:t", "a".repeat(256));
        for s in [
            "",
            "../x:t",
            "x/../y:t",
            "/abs:t",
            "lab/app",
            "lab/app:",
            "Lab/app:t",
            "lab//app:t",
            "lab/app/:t",
            "lab/.x:t",
            "lab/x.:t",
            "lab/a..b:t",
            "lab/app:.t",
            "lab/app:-t",
            "lab/app:t/x",
            "lab/app:t:u",
            "lab app:t",
            "lab/app:t\0",
            "lab/@x:t",
            &long_tag,
            &long_name,
        ] {
            assert!(
                matches!(TagRef::parse(s), Err(Error::BadName { .. })),
                "{s:?} accepted"
            );
        }
    }

    #[test]
    fn keys_stay_inside_refs() {
        let r = TagRef::parse("lab/app:v1").unwrap();
        assert_eq!(r.key(), "refs/lab/app/@v1");
        let comps: Vec<String> = vec!["lab".into(), "app".into(), "@v1".into()];
        assert_eq!(ref_from_path(&comps), Some(r));
    }

    #[test]
    fn image_refs() {
        assert_eq!(
            ImageRef::parse("blake3:ABCDEF12").unwrap(),
            ImageRef::Id("abcdef12".into())
        );
        assert!(ImageRef::parse("blake3:abc").is_err());
        assert!(ImageRef::parse("blake3:xyzxyzxyz").is_err());
        assert!(matches!(ImageRef::parse("lab/app:v1").unwrap(), ImageRef::Tag(_)));
    }
}
