//! `imgstore copy` between a directory and object storage: ids, tags,
//! SIF metadata and provenance kept; only missing chunks stored; a copy
//! killed midway publishes nothing half-done and resumes.

use std::time::Duration;

use imgstore_store::sif;

use crate::common::{self, Env, Kind};

/// `ls --json` of a store, without what differs between two copies (the
/// bytes each store added).
fn refs(env: &Env) -> Vec<serde_json::Value> {
    let mut v = env.json(&["ls"]);
    let list = v["refs"].as_array_mut().expect("ls --json lists refs");
    for r in list.iter_mut() {
        r.as_object_mut().unwrap().remove("added");
    }
    list.clone()
}

#[test]
fn a_copy_there_and_back_keeps_ids_tags_metadata_and_bytes() {
    let local = Env::on(Kind::Local);
    let deffile = b"Bootstrap: docker\nFrom: nvidia/cuda:12.4\n";
    let squash = common::image(3 << 20, 1);
    let app = sif::build_for_tests(&[
        (sif::DATA_DEFFILE, "", deffile),
        (sif::DATA_PARTITION, "", &squash),
    ]);
    local.put("lab/app:v1", &local.file("app.sif", &app));
    let v2 = common::edit(&app, 3, 2);
    let f2 = local.file("v2.img", &v2);
    local
        .cmd()
        .args(["put", "lab/app:v2", "--label", "commit=3f2c1e", "-m", "second"])
        .arg(&f2)
        .assert()
        .success();
    local
        .cmd()
        .args(["tag", "lab/app:v2", "lab/app:latest"])
        .assert()
        .success();

    let s3 = Env::on(Kind::S3);
    let from = local.store().display().to_string();
    let dry = common::json_of(s3.cmd(), &["copy", "--from", &from, "--dry-run"]);
    assert!(
        dry["refs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "would copy"),
        "{dry}"
    );
    assert!(refs(&s3).is_empty(), "a dry run wrote refs");

    let done = common::json_of(s3.cmd(), &["copy", "--from", &from]);
    let stored: Vec<u64> = done["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["stored_bytes"].as_u64().unwrap())
        .collect();
    // latest names v2's image, already copied: nothing new for it.
    assert_eq!(done["refs"].as_array().unwrap().len(), 3, "{done}");
    assert!(stored.iter().filter(|&&b| b == 0).count() >= 1, "{done}");
    assert_eq!(refs(&s3), refs(&local));
    assert!(s3.get("lab/app:v2") == v2);
    s3.cmd()
        .args(["deffile", "lab/app:v1"])
        .assert()
        .success()
        .stdout(String::from_utf8_lossy(deffile).into_owned());
    assert_eq!(s3.json(&["inspect", "lab/app:v2"])["labels"]["commit"], "3f2c1e");
    s3.cmd().args(["verify", "--read-data"]).assert().success();

    // Again: everything is present, nothing is sent.
    let again = common::json_of(s3.cmd(), &["copy", "--from", &from]);
    assert!(
        again["refs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "present"),
        "{again}"
    );

    // And back into a new directory store, by name.
    let back = Env::on(Kind::Local);
    let url = s3.store_arg().into_string().unwrap();
    let mut cmd = back.process("a");
    common::s3::server().client_env(&mut cmd);
    common::json_of(
        assert_cmd::Command::from_std(cmd),
        &["copy", "--from", &url, "lab/app"],
    );
    assert_eq!(refs(&back), refs(&local));
    assert!(back.get("lab/app:v1") == app);
}

#[test]
fn a_copy_killed_midway_shows_nothing_half_done_and_resumes() {
    let local = Env::on(Kind::Local);
    let big = common::random(24 << 20, 3);
    local.put("lab/big:v1", &local.file("big.img", &big));
    let s3 = Env::on(Kind::S3);
    let from = local.store().display().to_string();
    for ms in [50u64, 200, 400] {
        let mut child = s3.process("a").args(["copy", "--from", &from]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let out = s3.cmd().args(["get", "lab/big:v1", "-o", "-"]).output().unwrap();
        if out.status.success() {
            assert!(out.stdout == big, "a visible copy has the wrong bytes");
        } else {
            assert_eq!(common::code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let done = common::json_of(s3.cmd(), &["copy", "--from", &from]);
    assert!(s3.get("lab/big:v1") == big, "{done}");
    s3.cmd().args(["verify", "--read-data"]).assert().success();
}

#[test]
fn copy_refuses_a_missing_ref_and_the_same_store() {
    let local = Env::on(Kind::Local);
    local.put("lab/a:v1", &local.file("a.img", &common::random(1 << 20, 4)));
    let from = local.store().display().to_string();
    let other = Env::on(Kind::Local);
    let out = other
        .cmd()
        .args(["copy", "--from", &from, "lab/a:nope"])
        .output()
        .unwrap();
    assert_eq!(common::code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    let out = local.cmd().args(["copy", "--from", &from]).output().unwrap();
    assert_eq!(common::code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("same store"));
}
