//! Parser for the header and descriptor table of Singularity/Apptainer SIF
//! images.
//!
//! The on-disk format is the one written by `github.com/apptainer/sif/v2`
//! (`pkg/sif`): Go structs serialised with `encoding/binary` in little-endian
//! order. `encoding/binary` never inserts padding, so both structures are
//! packed:
//!
//! Global header (128 bytes, at offset 0):
//!
//! | offset | size | field                                       |
//! |-------:|-----:|---------------------------------------------|
//! |      0 |   32 | launch script (`#!/usr/bin/env ...`)        |
//! |     32 |   10 | magic `"SIF_MAGIC\0"`                       |
//! |     42 |    3 | spec version, `"01\0"`                      |
//! |     45 |    3 | primary architecture code, e.g. `"02\0"`    |
//! |     48 |   16 | image UUID                                  |
//! |     64 |    8 | created-at (i64, Unix seconds)              |
//! |     72 |    8 | modified-at (i64)                           |
//! |     80 |    8 | free descriptors (i64)                      |
//! |     88 |    8 | total descriptors (i64)                     |
//! |     96 |    8 | descriptor table offset (i64)               |
//! |    104 |    8 | descriptor table length in bytes (i64)      |
//! |    112 |    8 | data section offset (i64)                   |
//! |    120 |    8 | data section length (i64)                   |
//!
//! Raw descriptor (585 bytes each, `total descriptors` of them):
//!
//! | offset | size | field                                       |
//! |-------:|-----:|---------------------------------------------|
//! |      0 |    4 | data type (i32, `0x4001..`)                 |
//! |      4 |    1 | used (bool, non-zero = true)                |
//! |      5 |    4 | object ID (u32)                             |
//! |      9 |    4 | group ID (u32)                              |
//! |     13 |    4 | linked ID (u32)                             |
//! |     17 |    8 | data offset in file (i64)                   |
//! |     25 |    8 | data size (i64)                             |
//! |     33 |    8 | size including alignment padding (i64)      |
//! |     41 |    8 | created-at (i64)                            |
//! |     49 |    8 | modified-at (i64)                           |
//! |     57 |    8 | UID (i64, deprecated)                       |
//! |     65 |    8 | GID (i64, deprecated)                       |
//! |     73 |  128 | name (NUL padded)                           |
//! |    201 |  384 | type specific extra data                    |
//!
//! The parser never trusts a length from the file: the descriptor count is
//! capped, every offset/size is checked against the file length with checked
//! arithmetic, and the only object contents read (definition file and labels)
//! are size-capped.

use std::collections::BTreeMap;
use std::io;

use serde::{Deserialize, Serialize};

/// Data type of a definition file object.
pub const DATA_DEFFILE: u32 = 0x4001;
/// Data type of an environment variables object.
pub const DATA_ENVVAR: u32 = 0x4002;
/// Data type of a JSON labels object.
pub const DATA_LABELS: u32 = 0x4003;
/// Data type of a file system (partition) object.
pub const DATA_PARTITION: u32 = 0x4004;
/// Data type of a signing/verification object.
pub const DATA_SIGNATURE: u32 = 0x4005;
/// Data type of a generic JSON metadata object.
pub const DATA_GENERIC_JSON: u32 = 0x4006;
/// Data type of a generic / raw data object.
pub const DATA_GENERIC: u32 = 0x4007;
/// Data type of a cryptographic message object.
pub const DATA_CRYPTO_MESSAGE: u32 = 0x4008;
/// Data type of a software bill of materials object.
pub const DATA_SBOM: u32 = 0x4009;
/// Data type of a root OCI index object.
pub const DATA_OCI_ROOT_INDEX: u32 = 0x400a;
/// Data type of an OCI blob object.
pub const DATA_OCI_BLOB: u32 = 0x400b;

/// The SIF magic, `"SIF_MAGIC\0"`, found at [`MAGIC_OFFSET`].
pub const SIF_MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
/// Byte offset of the magic within the file (right after the launch script).
pub const MAGIC_OFFSET: usize = 32;
/// Size in bytes of the SIF global header.
pub const HEADER_LEN: usize = 128;
/// Size in bytes of one on-disk (raw) descriptor.
pub const DESCRIPTOR_LEN: usize = 585;
/// Largest descriptor count [`parse`] accepts.
pub const MAX_DESCRIPTORS: u64 = 1 << 16;
/// Largest definition file [`parse`] reads, in bytes.
pub const MAX_DEFFILE_LEN: u64 = 1 << 20;
/// Largest labels object [`parse`] reads, in bytes.
pub const MAX_LABELS_LEN: u64 = 1 << 20;

// Fields with `allow(dead_code)` are written only by `build_for_tests`
// (test builds): the parser does not read them.

/// The only SIF spec version in existence (`"01\0"`).
const VERSION_01: [u8; 3] = *b"01\0";
#[cfg_attr(not(any(test, feature = "test-hooks")), allow(dead_code))]
const LAUNCH_SCRIPT: &[u8] = b"#!/usr/bin/env run-singularity\n";

// Global header field offsets.
const H_VERSION: usize = 42;
const H_ARCH: usize = 45;
#[cfg_attr(not(any(test, feature = "test-hooks")), allow(dead_code))]
const H_DESCR_FREE: usize = 80;
const H_DESCR_TOTAL: usize = 88;
const H_DESCR_OFFSET: usize = 96;
const H_DESCR_LEN: usize = 104;
#[cfg_attr(not(any(test, feature = "test-hooks")), allow(dead_code))]
const H_DATA_OFFSET: usize = 112;
#[cfg_attr(not(any(test, feature = "test-hooks")), allow(dead_code))]
const H_DATA_LEN: usize = 120;

// Raw descriptor field offsets.
const D_DATA_TYPE: usize = 0;
const D_USED: usize = 4;
const D_ID: usize = 5;
const D_GROUP_ID: usize = 9;
const D_LINKED_ID: usize = 13;
const D_OFFSET: usize = 17;
const D_SIZE: usize = 25;
#[cfg_attr(not(any(test, feature = "test-hooks")), allow(dead_code))]
const D_SIZE_WITH_PADDING: usize = 33;
const D_NAME: usize = 73;
const D_NAME_LEN: usize = 128;
const D_EXTRA: usize = 201;

/// Header architecture codes and the Go arch names they stand for.
const ARCHES: &[(&[u8; 3], &str)] = &[
    (b"01\0", "386"),
    (b"02\0", "amd64"),
    (b"03\0", "arm"),
    (b"04\0", "arm64"),
    (b"05\0", "ppc64"),
    (b"06\0", "ppc64le"),
    (b"07\0", "mips"),
    (b"08\0", "mipsle"),
    (b"09\0", "mips64"),
    (b"10\0", "mips64le"),
    (b"11\0", "s390x"),
    (b"12\0", "riscv64"),
    (b"13\0", "loong64"),
];

/// Metadata lifted from a SIF image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SifInfo {
    /// Primary architecture from the global header as a Go arch name
    /// (`"amd64"`, `"arm64"`, ...), or `"unknown"`.
    pub arch: String,
    /// The in-use descriptors, in table order.
    pub descriptors: Vec<SifDescriptor>,
    /// Contents of the first definition file object (lossy UTF-8), if any.
    pub deffile: Option<String>,
    /// Labels from the first JSON labels object; empty if there is none.
    pub labels: BTreeMap<String, String>,
}

/// One in-use data object descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SifDescriptor {
    /// Object ID (unique within the image, starts at 1).
    pub id: u32,
    /// Raw data type, one of the `DATA_*` constants for known types.
    pub data_type: u32,
    /// Short name of the data type (see [`data_type_name`]).
    pub type_name: String,
    /// Object name, with trailing NUL padding removed (lossy UTF-8).
    pub name: String,
    /// Byte offset of the object's data within the file.
    pub offset: u64,
    /// Size of the object's data in bytes.
    pub size: u64,
    /// The object group it belongs to (`None`: no group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// The object it is linked to (a signature: the object it signs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_object: Option<u32>,
    /// The group it is linked to (a signature: the group it signs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_group: Option<u32>,
    /// A signature object's descriptor fields and envelope kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SifSignature>,
    /// An SBOM object's format (`"cyclonedx-json"`, `"spdx-json"`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom_format: Option<String>,
    /// An OCI blob or root index object's digest (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_digest: Option<String>,
    /// A partition object's file system, partition type and architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<SifPartition>,
    /// A crypto message object's format and message type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crypto_message: Option<SifCryptoMessage>,
}

/// Why a SIF image could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum SifError {
    /// The magic `SIF_MAGIC` is not at byte offset 32.
    #[error("not a SIF image: magic \"SIF_MAGIC\" not found at byte offset 32")]
    NotSif,
    /// The file ends before a structure that must be present.
    #[error("SIF image truncated: {what} needs {needed} bytes but the file has {file_len}")]
    Truncated {
        /// The structure that is cut short.
        what: &'static str,
        /// File length the structure needs.
        needed: u64,
        /// Actual file length.
        file_len: u64,
    },
    /// The header carries a spec version this parser does not know.
    #[error("unsupported SIF version {version:?} (only \"01\" is supported)")]
    UnsupportedVersion {
        /// The version field, NULs trimmed, lossy UTF-8.
        version: String,
    },
    /// A global header field is out of range or inconsistent.
    #[error("bad SIF header: {reason}")]
    BadHeader {
        /// What is wrong.
        reason: String,
    },
    /// An in-use descriptor is invalid (e.g. points past the end of the file).
    #[error("bad SIF descriptor #{index}: {reason}")]
    BadDescriptor {
        /// Position of the descriptor in the descriptor table (0-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A metadata object is larger than this parser is willing to read.
    #[error("SIF {what} object (descriptor #{index}) is {size} bytes, over the {limit}-byte limit")]
    ObjectTooLarge {
        /// Position of the descriptor in the descriptor table (0-based).
        index: usize,
        /// Kind of object (`"definition file"`, `"labels"`).
        what: &'static str,
        /// Size claimed by the descriptor.
        size: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// The labels object is not a JSON object.
    #[error("bad SIF labels object (descriptor #{index}): {reason}")]
    BadLabels {
        /// Position of the descriptor in the descriptor table (0-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Reading from the file failed.
    #[error("I/O error reading SIF {what} at offset {offset}: {source}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// Offset of the failed read.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Short, stable name of a SIF data type: `"deffile"`, `"envvar"`,
/// `"labels"`, `"partition"`, `"signature"`, `"generic-json"`, `"generic"`,
/// `"crypto-message"`, `"sbom"`, `"oci-root-index"`, `"oci-blob"`, or
/// `"unknown"`.
pub fn data_type_name(data_type: u32) -> &'static str {
    match data_type {
        DATA_DEFFILE => "deffile",
        DATA_ENVVAR => "envvar",
        DATA_LABELS => "labels",
        DATA_PARTITION => "partition",
        DATA_SIGNATURE => "signature",
        DATA_GENERIC_JSON => "generic-json",
        DATA_GENERIC => "generic",
        DATA_CRYPTO_MESSAGE => "crypto-message",
        DATA_SBOM => "sbom",
        DATA_OCI_ROOT_INDEX => "oci-root-index",
        DATA_OCI_BLOB => "oci-blob",
        _ => "unknown",
    }
}

/// True if the first bytes look like a SIF file (magic at the right offset).
/// Cheap; reads nothing else. `head` needs at least 42 bytes to match.
pub fn is_sif(head: &[u8]) -> bool {
    head.get(MAGIC_OFFSET..MAGIC_OFFSET + SIF_MAGIC.len()) == Some(&SIF_MAGIC[..])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(a)
}

/// Reads exactly `buf.len()` bytes at `offset`, after checking the range lies
/// within `file_len`.
fn read_checked(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    file_len: u64,
    offset: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), SifError> {
    let needed = offset.saturating_add(buf.len() as u64);
    if needed > file_len {
        return Err(SifError::Truncated {
            what,
            needed,
            file_len,
        });
    }
    if buf.is_empty() {
        return Ok(());
    }
    read_at(offset, buf).map_err(|source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            SifError::Truncated {
                what,
                needed,
                file_len,
            }
        } else {
            SifError::Io { what, offset, source }
        }
    })
}

fn non_negative(value: i64, field: &str) -> Result<u64, SifError> {
    u64::try_from(value).map_err(|_| SifError::BadHeader {
        reason: format!("{field} is negative ({value})"),
    })
}

/// Parse header + descriptor table, plus the definition file and labels
/// objects if present.
///
/// `read_at(offset, buf)` must fill `buf` exactly from the file at `offset`
/// or return an error (an [`io::ErrorKind::UnexpectedEof`] error is reported
/// as [`SifError::Truncated`]); it is only ever called for ranges inside
/// `0..file_len`. `file_len` is the file size.
///
/// Unused descriptors are skipped. If several definition file or labels
/// objects exist, the first in table order is used (as apptainer does).
pub fn parse(
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<SifInfo, SifError> {
    // Header: read what is there (up to 128 bytes) so that a short file with
    // the magic is reported as truncated rather than "not SIF".
    let mut hdr = [0u8; HEADER_LEN];
    let head_len = usize::try_from(file_len.min(HEADER_LEN as u64)).unwrap_or(HEADER_LEN);
    read_checked(read_at, file_len, 0, &mut hdr[..head_len], "header")?;
    if !is_sif(&hdr[..head_len]) {
        return Err(SifError::NotSif);
    }
    if head_len < HEADER_LEN {
        return Err(SifError::Truncated {
            what: "header",
            needed: HEADER_LEN as u64,
            file_len,
        });
    }

    let version = &hdr[H_VERSION..H_VERSION + 3];
    if version != VERSION_01 {
        let trimmed: &[u8] = version
            .iter()
            .rposition(|&b| b != 0)
            .map_or(&[], |end| &version[..=end]);
        return Err(SifError::UnsupportedVersion {
            version: String::from_utf8_lossy(trimmed).into_owned(),
        });
    }

    let arch_code = &hdr[H_ARCH..H_ARCH + 3];
    let arch = ARCHES
        .iter()
        .find(|(code, _)| code[..] == *arch_code)
        .map_or("unknown", |(_, name)| name)
        .to_owned();

    let total = i64_at(&hdr, H_DESCR_TOTAL);
    let table_off = non_negative(i64_at(&hdr, H_DESCR_OFFSET), "descriptor table offset")?;
    let table_len = non_negative(i64_at(&hdr, H_DESCR_LEN), "descriptor table length")?;
    let total = u64::try_from(total)
        .ok()
        .filter(|&t| t <= MAX_DESCRIPTORS)
        .ok_or_else(|| SifError::BadHeader {
            reason: format!("descriptor count {total} is out of range (0..={MAX_DESCRIPTORS})"),
        })?;
    // Cannot overflow: total <= 2^16.
    let table_needed = total * DESCRIPTOR_LEN as u64;
    if table_len < table_needed {
        return Err(SifError::BadHeader {
            reason: format!(
                "descriptor table length {table_len} is too small for {total} descriptors \
                 of {DESCRIPTOR_LEN} bytes"
            ),
        });
    }
    let table_end = table_off
        .checked_add(table_needed)
        .ok_or_else(|| SifError::BadHeader {
            reason: format!("descriptor table offset {table_off} overflows"),
        })?;
    if table_end > file_len {
        return Err(SifError::Truncated {
            what: "descriptor table",
            needed: table_end,
            file_len,
        });
    }

    let mut info = SifInfo {
        arch,
        ..SifInfo::default()
    };
    let mut deffile_at: Option<(usize, u64, u64)> = None;
    let mut labels_at: Option<(usize, u64, u64)> = None;
    // Current apptainer writes labels not as a labels object but inside a
    // generic JSON object, at data.attributes.labels.
    let mut inspect_at: Option<(usize, u64, u64)> = None;

    let mut signatures: Vec<(usize, u64, u64)> = Vec::new();
    let mut raw = [0u8; DESCRIPTOR_LEN];
    for (index, at) in (table_off..table_end).step_by(DESCRIPTOR_LEN).enumerate() {
        read_checked(read_at, file_len, at, &mut raw, "descriptor table")?;
        if raw[D_USED] == 0 {
            continue;
        }
        let bad = |reason: String| SifError::BadDescriptor { index, reason };
        let data_type = u32_at(&raw, D_DATA_TYPE);
        let raw_offset = i64_at(&raw, D_OFFSET);
        let raw_size = i64_at(&raw, D_SIZE);
        let offset = u64::try_from(raw_offset).map_err(|_| bad(format!("negative offset {raw_offset}")))?;
        let size = u64::try_from(raw_size).map_err(|_| bad(format!("negative size {raw_size}")))?;
        let end = offset
            .checked_add(size)
            .ok_or_else(|| bad(format!("offset {offset} + size {size} overflows")))?;
        if end > file_len {
            return Err(bad(format!(
                "object at offset {offset} with size {size} ends at {end}, \
                 past the end of the file ({file_len} bytes)"
            )));
        }
        let name = &raw[D_NAME..D_NAME + D_NAME_LEN];
        let name_end = name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let name = String::from_utf8_lossy(&name[..name_end]).into_owned();

        match data_type {
            DATA_DEFFILE if deffile_at.is_none() => deffile_at = Some((index, offset, size)),
            DATA_LABELS if labels_at.is_none() => labels_at = Some((index, offset, size)),
            DATA_GENERIC_JSON if inspect_at.is_none() && name == INSPECT_METADATA => {
                inspect_at = Some((index, offset, size))
            }
            _ => {}
        }
        let mut d = SifDescriptor {
            id: u32_at(&raw, D_ID),
            data_type,
            type_name: data_type_name(data_type).to_owned(),
            name,
            offset,
            size,
            ..SifDescriptor::default()
        };
        describe_extra(&mut d, &raw);
        if data_type == DATA_SIGNATURE {
            signatures.push((info.descriptors.len(), offset, size));
        }
        info.descriptors.push(d);
    }

    // A signature's envelope kind, from its first bytes (never the image's).
    for (i, offset, size) in signatures {
        let mut head = vec![0u8; usize::try_from(size.min(SIGNATURE_HEAD)).unwrap_or(0)];
        read_checked(read_at, file_len, offset, &mut head, "signature object")?;
        if let Some(sig) = info.descriptors[i].signature.as_mut() {
            sig.format = signature_format(&head).to_owned();
        }
    }

    if let Some((index, offset, size)) = deffile_at {
        let data = read_object(
            read_at,
            file_len,
            index,
            offset,
            size,
            "definition file",
            MAX_DEFFILE_LEN,
        )?;
        info.deffile = Some(String::from_utf8_lossy(&data).into_owned());
    }

    // A labels object wins; else apptainer's inspect metadata.
    let labels = match (labels_at, inspect_at) {
        (Some(at), _) => Some((at, "labels", false)),
        (None, Some(at)) => Some((at, "inspect metadata", true)),
        (None, None) => None,
    };
    if let Some(((index, offset, size), what, inspect)) = labels {
        let data = read_object(read_at, file_len, index, offset, size, what, MAX_LABELS_LEN)?;
        let parsed = if inspect {
            parse_inspect_labels(&data)
        } else {
            parse_labels(&data)
        };
        info.labels = parsed.map_err(|reason| SifError::BadLabels { index, reason })?;
    }

    Ok(info)
}

/// Name of the generic JSON object in which apptainer keeps `inspect` data.
pub const INSPECT_METADATA: &str = "inspect-metadata.json";

/// Labels from apptainer's inspect metadata: `{"data":{"attributes":{"labels":{..}}}}`.
/// A document without labels gives none; one that is not JSON is an error.
fn parse_inspect_labels(data: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| format!("invalid JSON: {e}"))?;
    match v.pointer("/data/attributes/labels") {
        Some(serde_json::Value::Object(map)) => Ok(label_strings(map.clone())),
        _ => Ok(BTreeMap::new()),
    }
}

/// Reads a (size-capped, already range-checked) metadata object.
fn read_object(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    file_len: u64,
    index: usize,
    offset: u64,
    size: u64,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>, SifError> {
    let len = usize::try_from(size)
        .ok()
        .filter(|_| size <= limit)
        .ok_or(SifError::ObjectTooLarge {
            index,
            what,
            size,
            limit,
        })?;
    let mut data = vec![0u8; len];
    read_checked(read_at, file_len, offset, &mut data, what)?;
    Ok(data)
}

/// Decodes a labels object: a JSON object whose values are normally strings;
/// any other value is kept as its compact JSON text.
fn parse_labels(data: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let value: serde_json::Value = serde_json::from_slice(data).map_err(|e| format!("invalid JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("not a JSON object".to_owned());
    };
    Ok(label_strings(map))
}

/// Label values as strings; a value that is not a string is kept as its JSON text.
fn label_strings(map: serde_json::Map<String, serde_json::Value>) -> BTreeMap<String, String> {
    map.into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect()
}

#[cfg(any(test, feature = "test-hooks"))]
mod build;
mod objects;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "test-hooks"))]
pub use build::{build_for_tests, build_with_for_tests, TestObject};
use objects::{describe_extra, signature_format, SIGNATURE_HEAD};
pub use objects::{SifCryptoMessage, SifPartition, SifSignature};
