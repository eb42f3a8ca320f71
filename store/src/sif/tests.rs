use super::*;
use proptest::prelude::*;

fn parse_bytes(bytes: &[u8]) -> Result<SifInfo, SifError> {
    parse(bytes.len() as u64, &mut |off, buf| {
        let start = usize::try_from(off).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| bytes.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    })
}

fn set_i64(bytes: &mut [u8], at: usize, v: i64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn desc_at(i: usize) -> usize {
    HEADER_LEN + i * DESCRIPTOR_LEN
}

const DEFFILE: &str = "Bootstrap: docker\nFrom: alpine:3.20\n\n%labels\n    OWNER Joana\n";
const LABELS: &str = r#"{"OWNER":"Joana","org.label-schema.schema-version":"1.0"}"#;

fn sample() -> Vec<u8> {
    build_for_tests(&[
        (DATA_DEFFILE, "", DEFFILE.as_bytes()),
        (DATA_LABELS, "labels", LABELS.as_bytes()),
        (DATA_GENERIC_JSON, "inspect-metadata.json", b"{}"),
        (DATA_PARTITION, "rootfs", &[0x68, 0x73, 0x71, 0x73, 0, 0, 0, 0]),
    ])
}

#[test]
fn round_trip() {
    let bytes = sample();
    let info = parse_bytes(&bytes).unwrap();
    assert_eq!(info.arch, "amd64");
    assert_eq!(info.deffile.as_deref(), Some(DEFFILE));
    let labels: Vec<_> = info
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [("OWNER", "Joana"), ("org.label-schema.schema-version", "1.0")]
    );
    let summary: Vec<_> = info
        .descriptors
        .iter()
        .map(|d| (d.id, d.data_type, d.type_name.as_str(), d.name.as_str(), d.size))
        .collect();
    assert_eq!(
        summary,
        [
            (1, DATA_DEFFILE, "deffile", "", DEFFILE.len() as u64),
            (2, DATA_LABELS, "labels", "labels", LABELS.len() as u64),
            (3, DATA_GENERIC_JSON, "generic-json", "inspect-metadata.json", 2),
            (4, DATA_PARTITION, "partition", "rootfs", 8),
        ]
    );
    for d in &info.descriptors {
        let (s, e) = (d.offset as usize, (d.offset + d.size) as usize);
        assert!(e <= bytes.len());
        if d.data_type == DATA_DEFFILE {
            assert_eq!(&bytes[s..e], DEFFILE.as_bytes());
        }
    }
    // Serde round trip of the result.
    let json = serde_json::to_string(&info).unwrap();
    assert_eq!(serde_json::from_str::<SifInfo>(&json).unwrap(), info);
}

#[test]
fn empty_image() {
    let info = parse_bytes(&build_for_tests(&[])).unwrap();
    assert_eq!(
        info,
        SifInfo {
            arch: "unknown".into(),
            ..SifInfo::default()
        }
    );
}

/// Byte-exact reproduction of apptainer/sif
/// `pkg/sif/testdata/TestCreateContainer/TwoDescriptors.golden` (written
/// by the Go implementation): a zero-filled 32770-byte file with these
/// non-zero runs.
#[test]
fn go_golden_two_descriptors() {
    const RUNS: &[(usize, &str)] = &[
        (32, "5349465f4d41474943003031003031"),
        (65, "096e88f1ffffff00096e88f1ffffff2e"),
        (88, "30"),
        (97, "10"),
        (104, "b06d"),
        (112, "b07d"),
        (120, "5202"),
        (4096, "074000000101000000010000f0"),
        (4113, "b07d"),
        (4121, "02"),
        (4129, "02"),
        (4138, "096e88f1ffffff00096e88f1ffffff"),
        (4681, "044000000102000000010000f0"),
        (4699, "80"),
        (4706, "02"),
        (4714, "5002"),
        (4723, "096e88f1ffffff00096e88f1ffffff"),
        (4882, "01000000020000003031"),
        (32176, "face"),
        (32768, "feed"),
    ];
    let mut bytes = vec![0u8; 32770];
    for (at, hex) in RUNS {
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).unwrap();
            bytes[at + i] = u8::from_str_radix(s, 16).unwrap();
        }
    }
    // 48 descriptor slots of 585 bytes at 4096; data right after.
    assert_eq!(i64_at(&bytes, H_DESCR_TOTAL), 48);
    assert_eq!(i64_at(&bytes, H_DESCR_LEN), 48 * DESCRIPTOR_LEN as i64);
    assert_eq!(i64_at(&bytes, H_DATA_OFFSET), 4096 + 48 * 585);
    let info = parse_bytes(&bytes).unwrap();
    assert_eq!(info.arch, "386");
    assert_eq!(info.deffile, None);
    assert!(info.labels.is_empty());
    assert_eq!(
        info.descriptors,
        [
            SifDescriptor {
                id: 1,
                data_type: DATA_GENERIC,
                type_name: "generic".into(),
                name: String::new(),
                offset: 32176,
                size: 2,
                group: Some(1),
                ..SifDescriptor::default()
            },
            SifDescriptor {
                id: 2,
                data_type: DATA_PARTITION,
                type_name: "partition".into(),
                name: String::new(),
                offset: 32768,
                size: 2,
                group: Some(1),
                partition: Some(SifPartition {
                    fs: "squashfs".into(),
                    part_type: "primary-system".into(),
                    arch: "386".into(),
                }),
                ..SifDescriptor::default()
            },
        ]
    );
}

#[test]
fn is_sif_checks_magic_only() {
    let bytes = sample();
    assert!(is_sif(&bytes));
    assert!(is_sif(&bytes[..42]));
    assert!(!is_sif(&bytes[..41]));
    assert!(!is_sif(b""));
    assert!(!is_sif(&[0u8; 128]));
    let mut other = bytes.clone();
    other[MAGIC_OFFSET + 9] = b'X';
    assert!(!is_sif(&other));
    assert!(matches!(parse_bytes(&other), Err(SifError::NotSif)));
}

#[test]
fn truncated_header_at_every_length() {
    let bytes = sample();
    for len in 0..HEADER_LEN {
        let err = parse_bytes(&bytes[..len]).unwrap_err();
        if len < MAGIC_OFFSET + SIF_MAGIC.len() {
            assert!(matches!(err, SifError::NotSif), "len {len}: {err}");
        } else {
            assert!(
                matches!(err, SifError::Truncated { what: "header", .. }),
                "len {len}: {err}"
            );
        }
    }
}

#[test]
fn truncated_anywhere_is_an_error() {
    let bytes = sample();
    let table_end = desc_at(4);
    for len in 0..bytes.len() {
        let err = parse_bytes(&bytes[..len]).unwrap_err();
        if (HEADER_LEN..table_end).contains(&len) {
            assert!(
                matches!(
                    err,
                    SifError::Truncated {
                        what: "descriptor table",
                        ..
                    }
                ),
                "len {len}: {err}"
            );
        } else if len >= table_end {
            assert!(matches!(err, SifError::BadDescriptor { .. }), "len {len}: {err}");
        }
    }
    assert!(parse_bytes(&bytes).is_ok());
}

#[test]
fn short_read_is_truncated_and_io_error_propagates() {
    let bytes = sample();
    // Caller claims a longer file than read_at can serve.
    let mut short = |off: u64, buf: &mut [u8]| -> io::Result<()> {
        let start = off as usize;
        match bytes.get(start..start + buf.len()) {
            Some(src) if start < 200 => {
                buf.copy_from_slice(src);
                Ok(())
            }
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    };
    let err = parse(bytes.len() as u64, &mut short).unwrap_err();
    assert!(matches!(err, SifError::Truncated { .. }), "{err}");

    let mut failing = |_: u64, _: &mut [u8]| -> io::Result<()> { Err(io::Error::other("disk on fire")) };
    let err = parse(4096, &mut failing).unwrap_err();
    assert!(
        matches!(
            &err,
            SifError::Io {
                what: "header",
                offset: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("disk on fire"));
}

#[test]
fn descriptor_past_end() {
    let mut bytes = sample();
    let len = bytes.len() as i64;
    set_i64(&mut bytes, desc_at(1) + D_OFFSET, len - 3);
    let err = parse_bytes(&bytes).unwrap_err();
    assert!(matches!(err, SifError::BadDescriptor { index: 1, .. }), "{err}");
    assert!(err.to_string().contains("#1"), "{err}");
}

#[test]
fn descriptor_negative_or_overflowing() {
    let cases: &[(usize, i64)] = &[
        (D_OFFSET, -1),
        (D_SIZE, -1),
        (D_OFFSET, i64::MIN),
        (D_SIZE, i64::MAX),
        (D_OFFSET, i64::MAX),
    ];
    for &(field, v) in cases {
        let mut bytes = sample();
        set_i64(&mut bytes, desc_at(2) + field, v);
        let err = parse_bytes(&bytes).unwrap_err();
        assert!(
            matches!(err, SifError::BadDescriptor { index: 2, .. }),
            "{field} = {v}: {err}"
        );
    }
}

#[test]
fn unused_descriptors_are_skipped() {
    let mut bytes = sample();
    bytes[desc_at(0) + D_USED] = 0;
    // An unused descriptor may hold garbage.
    set_i64(&mut bytes, desc_at(0) + D_OFFSET, -5);
    let info = parse_bytes(&bytes).unwrap();
    assert_eq!(info.deffile, None);
    let ids: Vec<_> = info.descriptors.iter().map(|d| d.id).collect();
    assert_eq!(ids, [2, 3, 4]);
}

#[test]
fn bad_header_fields() {
    let table_len = 4 * DESCRIPTOR_LEN as i64;
    let cases: &[(usize, i64)] = &[
        (H_DESCR_TOTAL, -1),
        (H_DESCR_TOTAL, MAX_DESCRIPTORS as i64 + 1),
        (H_DESCR_TOTAL, i64::MAX),
        (H_DESCR_TOTAL, 5), // more than the table length allows
        (H_DESCR_OFFSET, -128),
        (H_DESCR_LEN, -1),
        (H_DESCR_LEN, table_len - 1),
    ];
    for &(field, v) in cases {
        let mut bytes = sample();
        set_i64(&mut bytes, field, v);
        let err = parse_bytes(&bytes).unwrap_err();
        assert!(matches!(err, SifError::BadHeader { .. }), "{field} = {v}: {err}");
    }
    // Table placed past the end of the file.
    let mut bytes = sample();
    set_i64(&mut bytes, H_DESCR_OFFSET, i64::MAX);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(SifError::Truncated {
            what: "descriptor table",
            ..
        })
    ));
    // A larger descriptor table length than needed is fine (spare slots).
    let mut bytes = sample();
    set_i64(&mut bytes, H_DESCR_LEN, table_len + 1000);
    assert!(parse_bytes(&bytes).is_ok());
}

#[test]
fn unsupported_version() {
    let mut bytes = sample();
    bytes[H_VERSION..H_VERSION + 3].copy_from_slice(b"02\0");
    let err = parse_bytes(&bytes).unwrap_err();
    assert!(
        matches!(&err, SifError::UnsupportedVersion { version } if version == "02"),
        "{err}"
    );
}

#[test]
fn labels_non_string_values_and_errors() {
    let json = br#"{"a":1,"b":true,"c":{"x":["y"]},"d":"s","e":null}"#;
    let bytes = build_for_tests(&[(DATA_LABELS, "", json)]);
    let info = parse_bytes(&bytes).unwrap();
    let got: Vec<_> = info
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", "1"),
            ("b", "true"),
            ("c", r#"{"x":["y"]}"#),
            ("d", "s"),
            ("e", "null")
        ]
    );

    for bad in [&b"{"[..], b"[\"a\"]", b"", b"\"str\"", b"{\"a\":1} x"] {
        let bytes = build_for_tests(&[(DATA_DEFFILE, "", b"x"), (DATA_LABELS, "", bad)]);
        let err = parse_bytes(&bytes).unwrap_err();
        assert!(
            matches!(err, SifError::BadLabels { index: 1, .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn first_deffile_and_labels_win() {
    let bytes = build_for_tests(&[
        (DATA_DEFFILE, "", b"one"),
        (DATA_LABELS, "", br#"{"k":"1"}"#),
        (DATA_DEFFILE, "", b"two"),
        (DATA_LABELS, "", b"not json"),
    ]);
    let info = parse_bytes(&bytes).unwrap();
    assert_eq!(info.deffile.as_deref(), Some("one"));
    assert_eq!(info.labels.get("k").map(String::as_str), Some("1"));
    assert_eq!(info.descriptors.len(), 4);
}

#[test]
fn deffile_lossy_and_size_cap() {
    let bytes = build_for_tests(&[(DATA_DEFFILE, "", b"ok \xff\xfe end")]);
    let info = parse_bytes(&bytes).unwrap();
    assert_eq!(info.deffile.as_deref(), Some("ok \u{fffd}\u{fffd} end"));

    let at_cap = vec![b'#'; MAX_DEFFILE_LEN as usize];
    let bytes = build_for_tests(&[(DATA_DEFFILE, "", &at_cap)]);
    assert_eq!(
        parse_bytes(&bytes).unwrap().deffile.map(|d| d.len()),
        Some(at_cap.len())
    );

    let over = vec![b'#'; MAX_DEFFILE_LEN as usize + 1];
    let bytes = build_for_tests(&[(DATA_GENERIC, "", b"x"), (DATA_DEFFILE, "", &over)]);
    let err = parse_bytes(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            SifError::ObjectTooLarge {
                index: 1,
                what: "definition file",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn names_and_type_names() {
    let long = "n".repeat(128);
    let bytes = build_for_tests(&[
        (DATA_SBOM, &long, b""),
        (0x7777, "weird", b""),
        (DATA_OCI_BLOB, "blob", b"x"),
    ]);
    let info = parse_bytes(&bytes).unwrap();
    assert_eq!(info.descriptors[0].name, long);
    assert_eq!(info.descriptors[0].type_name, "sbom");
    assert_eq!(info.descriptors[1].type_name, "unknown");
    assert_eq!(info.descriptors[1].data_type, 0x7777);
    assert_eq!(info.descriptors[2].type_name, "oci-blob");
    assert_eq!(data_type_name(DATA_ENVVAR), "envvar");
    assert_eq!(data_type_name(DATA_SIGNATURE), "signature");
    assert_eq!(data_type_name(DATA_CRYPTO_MESSAGE), "crypto-message");
    assert_eq!(data_type_name(DATA_OCI_ROOT_INDEX), "oci-root-index");
}

#[test]
fn error_messages_are_single_lines() {
    let errors = [
        SifError::NotSif,
        SifError::Truncated {
            what: "header",
            needed: 128,
            file_len: 50,
        },
        SifError::UnsupportedVersion { version: "02".into() },
        SifError::BadHeader { reason: "x".into() },
        SifError::BadDescriptor {
            index: 3,
            reason: "y".into(),
        },
        SifError::ObjectTooLarge {
            index: 0,
            what: "labels",
            size: 9,
            limit: 8,
        },
        SifError::BadLabels {
            index: 0,
            reason: "z".into(),
        },
        SifError::Io {
            what: "header",
            offset: 0,
            source: io::Error::other("e"),
        },
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_bytes(&bytes);
    }

    #[test]
    fn never_panics_with_valid_magic(
        mut bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN..4096),
        total in 0i64..8,
        table_off in 0i64..4096,
        extra_len in 0u64..1_000_000,
    ) {
        bytes[MAGIC_OFFSET..MAGIC_OFFSET + 10].copy_from_slice(SIF_MAGIC);
        bytes[H_VERSION..H_VERSION + 3].copy_from_slice(&VERSION_01);
        set_i64(&mut bytes, H_DESCR_TOTAL, total);
        set_i64(&mut bytes, H_DESCR_OFFSET, table_off);
        set_i64(&mut bytes, H_DESCR_LEN, total * DESCRIPTOR_LEN as i64);
        let _ = parse_bytes(&bytes);
        // Claimed length larger than what read_at can serve.
        let claimed = bytes.len() as u64 + extra_len;
        let _ = parse(claimed, &mut |off, buf| {
            let start = usize::try_from(off).map_err(|_| io::ErrorKind::UnexpectedEof)?;
            let src = start
                .checked_add(buf.len())
                .and_then(|end| bytes.get(start..end))
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        });
    }

    #[test]
    fn never_panics_on_byte_flips(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..16),
    ) {
        let mut bytes = sample();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        let _ = parse_bytes(&bytes);
    }

    #[test]
    fn flips_in_header_or_table_never_panic(
        flips in proptest::collection::vec((0usize..HEADER_LEN + 4 * DESCRIPTOR_LEN, any::<u8>()), 1..8),
    ) {
        let mut bytes = sample();
        for (i, v) in flips {
            bytes[i] = v;
        }
        let _ = parse_bytes(&bytes);
    }
}

/// Signature, SBOM and OCI blob descriptors laid out as
/// `github.com/sylabs/sif/v2` writes them (`pkg/sif/descriptor.go`).
#[test]
fn provenance_objects_are_described() {
    let fp: Vec<u8> = (1..=20).collect();
    let mut sig_extra = 2i32.to_le_bytes().to_vec(); // SHA384
    sig_extra.extend_from_slice(&fp);
    let mut dsse_extra = 1i32.to_le_bytes().to_vec(); // SHA256, no fingerprint
    dsse_extra.resize(4 + 256, 0);
    let pgp = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA384\n\n{}\n";
    let dsse =
        br#"{"payloadType":"application/vnd.sylabs.sif-metadata+json","payload":"e30=","signatures":[]}"#;
    let bytes = build_with_for_tests(&[
        TestObject {
            data_type: DATA_PARTITION,
            name: "rootfs",
            data: b"squashfs",
            group: 0xf000_0001,
            ..TestObject::default()
        },
        TestObject {
            data_type: DATA_SIGNATURE,
            data: pgp,
            link: 0xf000_0001,
            extra: sig_extra,
            ..TestObject::default()
        },
        TestObject {
            data_type: DATA_SIGNATURE,
            data: dsse,
            link: 1,
            extra: dsse_extra,
            ..TestObject::default()
        },
        TestObject {
            data_type: DATA_SBOM,
            data: b"{}",
            extra: 4i32.to_le_bytes().to_vec(),
            ..TestObject::default()
        },
        TestObject {
            data_type: DATA_OCI_BLOB,
            data: b"{}",
            extra: b"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a".to_vec(),
            ..TestObject::default()
        },
        TestObject {
            data_type: DATA_CRYPTO_MESSAGE,
            data: b"x",
            extra: [1i32.to_le_bytes(), 0x100i32.to_le_bytes()].concat(),
            ..TestObject::default()
        },
    ]);
    let d = parse_bytes(&bytes).unwrap().descriptors;
    assert_eq!(d[0].group, Some(1));
    assert_eq!(d[0].partition.as_ref().unwrap().fs, "squashfs");
    assert_eq!(
        d[1].signature,
        Some(SifSignature {
            format: "pgp".into(),
            hash: "sha384".into(),
            fingerprint: Some("0102030405060708090A0B0C0D0E0F1011121314".into()),
        })
    );
    assert_eq!(
        (d[1].linked_group, d[1].linked_object, d[1].group),
        (Some(1), None, None)
    );
    let s = d[2].signature.as_ref().unwrap();
    assert_eq!(
        (s.format.as_str(), s.hash.as_str(), &s.fingerprint),
        ("dsse", "sha256", &None)
    );
    assert_eq!((d[2].linked_group, d[2].linked_object), (None, Some(1)));
    assert_eq!(d[3].sbom_format.as_deref(), Some("spdx-json"));
    assert_eq!(
        d[4].oci_digest.as_deref(),
        Some("sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
    );
    let c = d[5].crypto_message.as_ref().unwrap();
    assert_eq!(
        (c.format.as_str(), c.message.as_str()),
        ("openpgp", "clear-signature")
    );
    // Manifests written before these fields existed still decode.
    let old = r#"{"id":1,"data_type":16389,"type_name":"signature","name":"","offset":9,"size":2}"#;
    let d: SifDescriptor = serde_json::from_str(old).unwrap();
    assert_eq!((d.signature, d.group), (None, None));
}
