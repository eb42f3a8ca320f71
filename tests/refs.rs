//! Names, refs and metadata commands: ls, inspect, deffile, tag, rm, log.

use crate::common::{self, Env};

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).expect("valid JSON")
}

#[test]
fn ls_inspect_tag_rm_log() {
    let env = Env::new();
    let f1 = env.file("a.img", &common::image(1 << 20, 1));
    let f2 = env.file("b.img", &common::image(1 << 20, 2));
    let deffile = env.file("app.def", b"Bootstrap: docker\nFrom: ubuntu:24.04\n");
    env.cmd()
        .args(["put", "lab/app:v1", "--label", "commit=3f2c1e", "-m", "first"])
        .arg(&f1)
        .arg("--deffile")
        .arg(&deffile)
        .assert()
        .success()
        .stdout(predicates::str::contains("stored").and(predicates::str::contains("lab/app:v1")));
    env.put("lab/app:v2", &f2);
    env.put("other/tool:x", &f2);

    let ls = json(
        &env.cmd()
            .args(["--json", "ls"])
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    let refs: Vec<&str> = ls["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["lab/app:v1", "lab/app:v2", "other/tool:x"]);
    assert_eq!(ls["format_version"], 1);
    let only = json(
        &env.cmd()
            .args(["--json", "ls", "lab/app"])
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    assert_eq!(only["refs"].as_array().unwrap().len(), 2);
    env.cmd()
        .arg("ls")
        .assert()
        .success()
        .stdout(predicates::str::contains("lab/app"));

    let inspect = json(
        &env.cmd()
            .args(["--json", "inspect", "lab/app:v1"])
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    assert_eq!(inspect["size"], 1 << 20);
    assert_eq!(inspect["labels"]["commit"], "3f2c1e");
    assert_eq!(inspect["message"], "first");
    assert_eq!(inspect["has_deffile"], true);
    assert!(inspect["chunks"].as_u64().unwrap() >= 1);

    env.cmd()
        .args(["deffile", "lab/app:v1"])
        .assert()
        .success()
        .stdout("Bootstrap: docker\nFrom: ubuntu:24.04\n");
    let out = env
        .cmd()
        .args(["deffile", "lab/app:v2"])
        .assert()
        .failure()
        .get_output()
        .clone();
    assert_eq!(common::code(&out), 3);

    env.cmd()
        .args(["tag", "lab/app:v1", "lab/app:stable"])
        .assert()
        .success();
    assert!(env.get("lab/app:stable") == std::fs::read(&f1).unwrap());
    env.cmd().args(["rm", "lab/app:v1"]).assert().success();
    let out = env
        .cmd()
        .args(["get", "lab/app:v1", "-o", "-"])
        .assert()
        .failure()
        .get_output()
        .clone();
    assert_eq!(common::code(&out), 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // The image is still there under its other tag.
    assert!(env.get("lab/app:stable") == std::fs::read(&f1).unwrap());

    let log = json(
        &env.cmd()
            .args(["--json", "log", "lab/app"])
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    let actions: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["put", "put", "tag", "rm"]);
    assert_eq!(log["events"][0]["host"], "host-a");
}

#[test]
fn moving_a_tag_reports_the_previous_image() {
    let env = Env::new();
    let f1 = env.file("a.img", &common::image(200_000, 3));
    let f2 = env.file("b.img", &common::image(200_000, 4));
    let r1 = env.put("lab/app:latest", &f1);
    let r2 = env.put("lab/app:latest", &f2);
    assert_eq!(r2["replaced"], r1["image"]);
    assert!(env.get("lab/app:latest") == std::fs::read(&f2).unwrap());
}

use predicates::prelude::*;

/// `imgstore deffile REF | head -c 10` ends quietly: a closed pipe is no error.
#[test]
fn deffile_into_a_closed_pipe_ends_quietly() {
    use std::io::Read as _;
    let env = Env::new();
    let def = env.file("big.def", &vec![b'x'; 1 << 20]);
    env.cmd()
        .args(["put", "lab/app:v1", "--deffile"])
        .arg(&def)
        .arg(env.file("a.img", &common::random(64 << 10, 1)))
        .assert()
        .success();
    let mut child = env
        .process("a")
        .args(["deffile", "lab/app:v1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
