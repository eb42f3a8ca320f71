//! SIF files built in the test: deffile and labels lifted into the manifest.

use imgstore_store::sif;

use crate::common::{self, Env};

#[test]
fn deffile_and_labels_are_lifted_from_sif() {
    let env = Env::new();
    let deffile = b"Bootstrap: docker\nFrom: nvidia/cuda:12.4\n%post\n  pip install app\n";
    let labels = br#"{"org.label-schema.vcs-ref":"3f2c1e","maintainer":"lab"}"#;
    let squash = common::image(2 << 20, 5);
    let bytes = sif::build_for_tests(&[
        (sif::DATA_DEFFILE, "", deffile),
        (sif::DATA_LABELS, "", labels),
        (sif::DATA_PARTITION, "", &squash),
    ]);
    let f = env.file("app.sif", &bytes);
    let r = env.put("lab/app:3f2c1e", &f);
    assert_eq!(r["sif"], true);
    env.cmd()
        .args(["deffile", "lab/app:3f2c1e"])
        .assert()
        .success()
        .stdout(String::from_utf8_lossy(deffile).into_owned());
    let v = env.json(&["inspect", "lab/app:3f2c1e"]);
    assert_eq!(v["labels"]["org.label-schema.vcs-ref"], "3f2c1e");
    assert_eq!(v["sif"], true);
    assert!(v["sif_descriptors"].as_array().unwrap().len() >= 3);
    // Also readable by image id, without the ref.
    let id = r["image"].as_str().unwrap();
    env.cmd().args(["deffile", id]).assert().success();
    assert!(env.get("lab/app:3f2c1e") == bytes);
}

#[test]
fn lying_sif_descriptor_is_a_clear_error() {
    let env = Env::new();
    let mut bytes = sif::build_for_tests(&[(sif::DATA_DEFFILE, "", b"Bootstrap: x\n")]);
    // Point the first descriptor's size far past the end of the file.
    let size_at = sif::HEADER_LEN + 25;
    bytes[size_at..size_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let f = env.file("bad.sif", &bytes);
    let out = env
        .cmd()
        .args(["put", "lab/app:bad"])
        .arg(&f)
        .assert()
        .failure()
        .get_output()
        .clone();
    assert_eq!(common::code(&out), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SIF") && stderr.contains("descriptor"),
        "{stderr}"
    );
    // A truncated SIF too.
    let f = env.file(
        "short.sif",
        &sif::build_for_tests(&[(sif::DATA_DEFFILE, "", b"x")])[..100],
    );
    env.cmd()
        .args(["put", "lab/app:short"])
        .arg(&f)
        .assert()
        .failure();
}

#[test]
fn labels_from_apptainer_inspect_metadata() {
    let env = Env::new();
    let inspect = br#"{"data":{"attributes":{"labels":{"org.label-schema.build-arch":"amd64","version":"1.2"},"deffile":"x"}}}"#;
    let bytes = sif::build_for_tests(&[
        (sif::DATA_GENERIC_JSON, sif::INSPECT_METADATA, inspect),
        (sif::DATA_PARTITION, "", &common::random(100_000, 8)),
    ]);
    let f = env.file("app.sif", &bytes);
    env.put("lab/app:v1", &f);
    let v = env.json(&["inspect", "lab/app:v1"]);
    assert_eq!(v["labels"]["version"], "1.2");
    assert_eq!(v["labels"]["org.label-schema.build-arch"], "amd64");
}

/// A SIF built like the reference library's signed test images
/// (`one-group-signed-pgp.sif`, `-dsse.sif`, `one-object-sbom.sif`,
/// `one-object-oci-blob.sif`): `inspect` lists each object from its
/// descriptor, from the manifest alone.
#[test]
fn inspect_lists_signatures_sbom_and_oci_blobs() {
    let env = Env::new();
    let fp: Vec<u8> = (0xa0..0xb4).collect();
    let mut pgp_extra = 1i32.to_le_bytes().to_vec();
    pgp_extra.extend_from_slice(&fp);
    let mut dsse_extra = 1i32.to_le_bytes().to_vec();
    dsse_extra.resize(4 + 256, 0);
    let digest = "sha256:a88b15e95042f7d5a1327c03c57e10bdc1cf5f5efc2968fc73c12b6f5b00c731";
    let squash = common::image(1 << 20, 11);
    let pgp = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{\"version\":1}\n-----BEGIN PGP SIGNATURE-----\n";
    let dsse = br#"{"payloadType":"application/vnd.sylabs.sif-metadata+json","payload":"e30=","signatures":[{"keyid":"","sig":"AA=="}]}"#;
    let bytes = sif::build_with_for_tests(&[
        sif::TestObject {
            name: "rootfs",
            group: 0xf000_0001,
            ..obj(sif::DATA_PARTITION, &squash)
        },
        sif::TestObject {
            link: 0xf000_0001,
            extra: pgp_extra,
            ..obj(sif::DATA_SIGNATURE, pgp)
        },
        sif::TestObject {
            link: 1,
            extra: dsse_extra,
            ..obj(sif::DATA_SIGNATURE, dsse)
        },
        sif::TestObject {
            name: "sbom.cdx.json",
            extra: 1i32.to_le_bytes().to_vec(),
            ..obj(sif::DATA_SBOM, br#"{"bomFormat":"CycloneDX"}"#)
        },
        sif::TestObject {
            extra: digest.as_bytes().to_vec(),
            ..obj(sif::DATA_OCI_BLOB, br#"{"schemaVersion":2}"#)
        },
        obj(sif::DATA_GENERIC_JSON, br#"{"a":1}"#),
    ]);
    let f = env.file("signed.sif", &bytes);
    env.put("lab/app:signed", &f);
    // Nothing below reads the image: its packs are gone.
    std::fs::remove_dir_all(env.store().join("packs")).unwrap();

    let v = env.json(&["inspect", "lab/app:signed"]);
    let d = v["sif_descriptors"].as_array().unwrap();
    assert_eq!(d.len(), 6);
    assert_eq!(d[0]["group"], 1);
    assert_eq!(d[0]["partition"]["fs"], "squashfs");
    assert_eq!(d[1]["type_name"], "signature");
    assert_eq!(
        d[1]["signature"],
        serde_json::json!({"format": "pgp", "hash": "sha256", "fingerprint": "A0A1A2A3A4A5A6A7A8A9AAABACADAEAFB0B1B2B3"})
    );
    assert_eq!(d[1]["linked_group"], 1);
    assert_eq!(d[2]["signature"]["format"], "dsse");
    assert_eq!(d[2]["signature"]["fingerprint"], serde_json::Value::Null);
    assert_eq!(d[2]["linked_object"], 1);
    assert_eq!(d[3]["type_name"], "sbom");
    assert_eq!(d[3]["sbom_format"], "cyclonedx-json");
    assert_eq!(d[3]["name"], "sbom.cdx.json");
    assert_eq!(d[4]["type_name"], "oci-blob");
    assert_eq!(d[4]["oci_digest"], digest);
    assert_eq!(d[5]["type_name"], "generic-json");
    assert!(d[5].get("signature").is_none());

    let out = env.cmd().args(["inspect", "lab/app:signed"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for want in [
        "pgp signature, hash sha256, key A0A1A2A3A4A5A6A7A8A9AAABACADAEAFB0B1B2B3, signs group 1",
        "dsse signature, hash sha256, no key fingerprint, signs object 1",
        "sbom, \"sbom.cdx.json\", 25 B, format cyclonedx-json",
        &format!("oci-blob, 19 B, {digest}"),
        "partition, \"rootfs\", 1.0 MiB, squashfs primary-system amd64, in group 1",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
}

fn obj(data_type: u32, data: &[u8]) -> sif::TestObject<'_> {
    sif::TestObject {
        data_type,
        data,
        ..Default::default()
    }
}
