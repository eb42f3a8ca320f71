//! The type-specific fields of SIF descriptors (signatures, SBOMs, OCI
//! blobs, partitions, crypto messages), as `github.com/sylabs/sif/v2` lays
//! them out.

use serde::{Deserialize, Serialize};

use super::*;

/// What a signature object's descriptor says, and the kind of envelope its
/// first bytes show. Nothing is verified: this is what is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SifSignature {
    /// `"pgp"` (an OpenPGP clear-signed message), `"dsse"` (a DSSE JSON
    /// envelope) or `"unknown"`.
    pub format: String,
    /// The hash type field: `"sha256"`, `"sha384"`, `"sha512"`,
    /// `"blake2s"`, `"blake2b"`, or `"unknown(N)"`.
    pub hash: String,
    /// The signing key's fingerprint as stored (the entity field's first
    /// 20 bytes, upper-case hex); `None` when they are all zero (DSSE).
    pub fingerprint: Option<String>,
}

/// A partition object's descriptor fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SifPartition {
    /// `"squashfs"`, `"ext3"`, `"archive"`, `"raw"`, `"encrypted-squashfs"`.
    pub fs: String,
    /// `"system"`, `"primary-system"`, `"data"`, `"overlay"`.
    pub part_type: String,
    /// Its architecture as a Go arch name, or `"unknown"`.
    pub arch: String,
}

/// A crypto message object's descriptor fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SifCryptoMessage {
    /// `"openpgp"` or `"pem"`.
    pub format: String,
    /// `"clear-signature"` or `"rsa-oaep"`.
    pub message: String,
}

/// Bytes of a signature object read to tell its envelope kind.
pub(super) const SIGNATURE_HEAD: u64 = 4096;
/// Set in a group id or a linked id that names a group.
const GROUP_MASK: u32 = 0xf000_0000;
/// Length of the entity (key fingerprint) field of a signature descriptor.
const ENTITY_LEN: usize = 256;

fn i32_at(b: &[u8], at: usize) -> i32 {
    u32_at(b, at) as i32
}

/// Lowercase name of a type-specific code, or `unknown(N)`.
fn code_name(names: &[&str], first: i32, code: i32) -> String {
    usize::try_from(code - first)
        .ok()
        .and_then(|i| names.get(i))
        .map_or_else(|| format!("unknown({code})"), |n| (*n).to_owned())
}

/// Fills the group, link and type-specific fields of `d` from its raw
/// descriptor, as `github.com/sylabs/sif/v2` lays them out (`pkg/sif`:
/// `signature`, `sbom`, `ociBlob`, `partition`, `cryptoMessage`).
pub(super) fn describe_extra(d: &mut SifDescriptor, raw: &[u8; DESCRIPTOR_LEN]) {
    let group = u32_at(raw, D_GROUP_ID) & !GROUP_MASK;
    d.group = (group != 0).then_some(group);
    let link = u32_at(raw, D_LINKED_ID);
    let linked = link & !GROUP_MASK;
    if linked != 0 {
        if link & GROUP_MASK == GROUP_MASK {
            d.linked_group = Some(linked);
        } else {
            d.linked_object = Some(linked);
        }
    }
    let extra = &raw[D_EXTRA..];
    match d.data_type {
        DATA_SIGNATURE => {
            let hash = code_name(
                &["sha256", "sha384", "sha512", "blake2s", "blake2b"],
                1,
                i32_at(extra, 0),
            );
            let entity = &extra[4..4 + ENTITY_LEN];
            let fp = &entity[..20];
            d.signature = Some(SifSignature {
                format: "unknown".to_owned(),
                hash,
                fingerprint: fp.iter().any(|&b| b != 0).then(|| hex::encode_upper(fp)),
            });
        }
        DATA_SBOM => {
            d.sbom_format = Some(code_name(
                &[
                    "cyclonedx-json",
                    "cyclonedx-xml",
                    "github-json",
                    "spdx-json",
                    "spdx-rdf",
                    "spdx-tag-value",
                    "spdx-yaml",
                    "syft-json",
                ],
                1,
                i32_at(extra, 0),
            ));
        }
        DATA_OCI_ROOT_INDEX | DATA_OCI_BLOB => {
            let end = extra.iter().position(|&b| b == 0).unwrap_or(extra.len());
            let digest = String::from_utf8_lossy(&extra[..end]).into_owned();
            d.oci_digest = (!digest.is_empty()).then_some(digest);
        }
        DATA_PARTITION => {
            let arch = &extra[8..11];
            d.partition = Some(SifPartition {
                fs: code_name(
                    &["squashfs", "ext3", "archive", "raw", "encrypted-squashfs"],
                    1,
                    i32_at(extra, 0),
                ),
                part_type: code_name(
                    &["system", "primary-system", "data", "overlay"],
                    1,
                    i32_at(extra, 4),
                ),
                arch: ARCHES
                    .iter()
                    .find(|(code, _)| code[..] == *arch)
                    .map_or("unknown", |(_, name)| name)
                    .to_owned(),
            });
        }
        DATA_CRYPTO_MESSAGE => {
            let message = match i32_at(extra, 4) {
                0x100 => "clear-signature".to_owned(),
                0x200 => "rsa-oaep".to_owned(),
                m => format!("unknown({m})"),
            };
            d.crypto_message = Some(SifCryptoMessage {
                format: code_name(&["openpgp", "pem"], 1, i32_at(extra, 0)),
                message,
            });
        }
        _ => {}
    }
}

/// `"pgp"` for an OpenPGP clear-signed message, `"dsse"` for a DSSE JSON
/// envelope (`payloadType`, `payload`, `signatures`), else `"unknown"`.
pub(super) fn signature_format(head: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(head);
    let t = text.trim_start();
    if t.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
        "pgp"
    } else if t.starts_with('{') && t.contains("\"payloadType\"") {
        "dsse"
    } else {
        "unknown"
    }
}
