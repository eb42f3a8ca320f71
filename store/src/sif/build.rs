//! SIF files built in memory, for tests here and in the integration tests.

use super::*;

/// One object for [`build_with_for_tests`]: its descriptor's fields and data.
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Debug, Clone, Default)]
pub struct TestObject<'a> {
    /// Data type (`DATA_*`).
    pub data_type: u32,
    /// Object name.
    pub name: &'a str,
    /// Its data.
    pub data: &'a [u8],
    /// Raw group id field (`0xf000_0000 | n` for group n; 0: none).
    pub group: u32,
    /// Raw linked id field (an object id, or `0xf000_0000 | n` for group n).
    pub link: u32,
    /// Type-specific extra field (up to 384 bytes); a partition's is
    /// filled in when left empty.
    pub extra: Vec<u8>,
}

/// Build a minimal valid SIF file in memory (header + descriptors + data), for
/// tests here and in the integration tests: objects are
/// `(data_type, name, bytes)`, all in group 1.
///
/// The layout mirrors what `sif.CreateContainer` writes with deterministic
/// options (nil UUID, zero timestamps), except that the descriptor table sits
/// right after the header, has exactly one slot per object, and data objects
/// are packed without alignment. Object IDs are 1, 2, .... A
/// [`DATA_PARTITION`] object is recorded as a primary squashfs system
/// partition for amd64 and sets the header architecture to `amd64`; without
/// one the architecture is unknown (`"00"`).
///
/// # Panics
///
/// If a name is longer than 128 bytes.
#[cfg(any(test, feature = "test-hooks"))]
pub fn build_for_tests(objects: &[(u32, &str, &[u8])]) -> Vec<u8> {
    let objects: Vec<TestObject<'_>> = objects
        .iter()
        .map(|&(data_type, name, data)| TestObject {
            data_type,
            name,
            data,
            group: 0xf000_0001,
            ..TestObject::default()
        })
        .collect();
    build_with_for_tests(&objects)
}

/// [`build_for_tests`] with each descriptor's group, link and extra field
/// given: signatures, SBOMs and OCI blobs as `github.com/sylabs/sif/v2`
/// writes them.
///
/// # Panics
///
/// If a name is longer than 128 bytes or an extra field longer than 384.
#[cfg(any(test, feature = "test-hooks"))]
pub fn build_with_for_tests(objects: &[TestObject<'_>]) -> Vec<u8> {
    const ARCH_AMD64: &[u8; 3] = b"02\0";
    let table_len = objects.len() * DESCRIPTOR_LEN;
    let data_off = HEADER_LEN + table_len;
    let data_len: usize = objects.iter().map(|o| o.data.len()).sum();
    let mut out = vec![0u8; data_off + data_len];
    let put_i64 = |out: &mut [u8], at: usize, v: usize| {
        out[at..at + 8].copy_from_slice(&(v as i64).to_le_bytes());
    };

    let has_partition = objects.iter().any(|o| o.data_type == DATA_PARTITION);
    out[..LAUNCH_SCRIPT.len()].copy_from_slice(LAUNCH_SCRIPT);
    out[MAGIC_OFFSET..MAGIC_OFFSET + SIF_MAGIC.len()].copy_from_slice(SIF_MAGIC);
    out[H_VERSION..H_VERSION + 3].copy_from_slice(&VERSION_01);
    out[H_ARCH..H_ARCH + 3].copy_from_slice(if has_partition { ARCH_AMD64 } else { b"00\0" });
    // UUID and timestamps stay zero.
    put_i64(&mut out, H_DESCR_FREE, 0);
    put_i64(&mut out, H_DESCR_TOTAL, objects.len());
    put_i64(&mut out, H_DESCR_OFFSET, HEADER_LEN);
    put_i64(&mut out, H_DESCR_LEN, table_len);
    put_i64(&mut out, H_DATA_OFFSET, data_off);
    put_i64(&mut out, H_DATA_LEN, data_len);

    let mut at = data_off;
    for (i, o) in objects.iter().enumerate() {
        assert!(
            o.name.len() <= D_NAME_LEN,
            "SIF object name longer than {D_NAME_LEN} bytes: {:?}",
            o.name
        );
        assert!(o.extra.len() <= DESCRIPTOR_LEN - D_EXTRA, "extra field too long");
        let d = HEADER_LEN + i * DESCRIPTOR_LEN;
        let desc = &mut out[d..d + DESCRIPTOR_LEN];
        desc[D_DATA_TYPE..D_DATA_TYPE + 4].copy_from_slice(&o.data_type.to_le_bytes());
        desc[D_USED] = 1;
        desc[D_ID..D_ID + 4].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        desc[D_GROUP_ID..D_GROUP_ID + 4].copy_from_slice(&o.group.to_le_bytes());
        desc[D_LINKED_ID..D_LINKED_ID + 4].copy_from_slice(&o.link.to_le_bytes());
        put_i64(desc, D_OFFSET, at);
        put_i64(desc, D_SIZE, o.data.len());
        put_i64(desc, D_SIZE_WITH_PADDING, o.data.len());
        desc[D_NAME..D_NAME + o.name.len()].copy_from_slice(o.name.as_bytes());
        if o.data_type == DATA_PARTITION && o.extra.is_empty() {
            // Fstype squashfs (1), parttype primary system (2), arch.
            desc[D_EXTRA..D_EXTRA + 4].copy_from_slice(&1i32.to_le_bytes());
            desc[D_EXTRA + 4..D_EXTRA + 8].copy_from_slice(&2i32.to_le_bytes());
            desc[D_EXTRA + 8..D_EXTRA + 11].copy_from_slice(ARCH_AMD64);
        } else {
            desc[D_EXTRA..D_EXTRA + o.extra.len()].copy_from_slice(&o.extra);
        }
        out[at..at + o.data.len()].copy_from_slice(o.data);
        at += o.data.len();
    }
    out
}
