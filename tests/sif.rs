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
