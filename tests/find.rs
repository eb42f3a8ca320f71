//! `imgstore find` and `imgstore diff --deffile`: search over definition
//! files, labels, names and put dates.

use std::path::Path;

use imgstore_store::sif;
use serde_json::Value;

use crate::common::{self, Env, Kind};
use crate::on_both_backends;

const NUMPY_DEF: &str =
    "Bootstrap: docker\nFrom: python:3.12\n%post\n  pip install numpy==2.1\n%labels\n  team ml\n";
const SCIPY_DEF: &str = "Bootstrap: docker\nFrom: python:3.12\n%post\n  pip install scipy\n";

/// A SIF whose own deffile installs numpy, with labels `maintainer=lab`.
fn numpy_sif(env: &Env, seed: u64) -> std::path::PathBuf {
    let bytes = sif::build_for_tests(&[
        (sif::DATA_DEFFILE, "", NUMPY_DEF.as_bytes()),
        (sif::DATA_LABELS, "", br#"{"maintainer":"lab"}"#),
        (sif::DATA_PARTITION, "", &common::random(150_000, seed)),
    ]);
    env.file(&format!("numpy{seed}.sif"), &bytes)
}

fn put_with(env: &Env, reference: &str, file: &Path, extra: &[&str]) {
    env.cmd()
        .args(["put", "-q", reference])
        .arg(file)
        .args(extra)
        .assert()
        .success();
}

/// The refs `find ARGS --json` lists.
fn found(env: &Env, args: &[&str]) -> Vec<String> {
    let mut a = vec!["find"];
    a.extend_from_slice(args);
    refs_of(&env.json(&a))
}

fn refs_of(v: &Value) -> Vec<String> {
    v["images"]
        .as_array()
        .expect("images is an array")
        .iter()
        .map(|i| i["ref"].as_str().unwrap().to_string())
        .collect()
}

fn finds_by_deffile_labels_name_and_date(kind: Kind) {
    let env = Env::on(kind);
    let scipy = env.file("scipy.def", SCIPY_DEF.as_bytes());
    let scipy = scipy.to_str().unwrap();
    put_with(&env, "lab/ml:v1", &numpy_sif(&env, 1), &[]);
    put_with(
        &env,
        "lab/sci:v2",
        &env.file("sci.img", &common::random(120_000, 2)),
        &["--deffile", scipy, "--label", "team=x", "--label", "stage=prod"],
    );
    put_with(
        &env,
        "other/plain:v2",
        &env.file("plain.img", &common::random(90_000, 3)),
        &["--label", "team=x"],
    );

    // The SIF's own deffile, with the matching line and its number.
    let v = env.json(&["find", "--deffile", r"numpy==\d"]);
    assert_eq!(refs_of(&v), ["lab/ml:v1"]);
    let hit = &v["images"][0];
    assert_eq!(hit["deffile"], "sif");
    assert_eq!(
        hit["matches"],
        serde_json::json!([{"line": 4, "text": "  pip install numpy==2.1"}])
    );
    assert_eq!(hit["labels"]["maintainer"], "lab");
    // A ref's --deffile; every line that matches; a plain image never matches a regex.
    assert_eq!(
        found(&env, &["--deffile", "pip install"]),
        ["lab/ml:v1", "lab/sci:v2"]
    );
    let v = env.json(&["find", "--deffile", "(?i)^FROM|scipy"]);
    assert_eq!(v["images"][1]["deffile"], "ref");
    assert_eq!(v["images"][1]["matches"].as_array().unwrap().len(), 2);
    assert!(found(&env, &["--deffile", "tensorflow"]).is_empty());
    // Labels: all must match; a SIF's labels count.
    assert_eq!(
        found(&env, &["--label", "team=x"]),
        ["lab/sci:v2", "other/plain:v2"]
    );
    assert_eq!(
        found(&env, &["--label", "team=x", "--label", "stage=prod"]),
        ["lab/sci:v2"]
    );
    assert!(found(&env, &["--label", "team=y"]).is_empty());
    assert_eq!(found(&env, &["--label", "maintainer=lab"]), ["lab/ml:v1"]);
    // Name globs: over the name, or over name:tag with a colon.
    assert_eq!(found(&env, &["--name", "lab/*"]), ["lab/ml:v1", "lab/sci:v2"]);
    assert_eq!(found(&env, &["--name", "*:v2"]), ["lab/sci:v2", "other/plain:v2"]);
    assert_eq!(
        found(&env, &["--name", "lab/*", "--label", "team=x"]),
        ["lab/sci:v2"]
    );
    // Dates and durations.
    assert_eq!(found(&env, &["--since", "2000-01-01"]).len(), 3);
    assert_eq!(found(&env, &["--since", "1h"]).len(), 3);
    assert!(found(&env, &["--since", "2100-01-01"]).is_empty());

    // A new put and an rm are seen by the next find, from this host and another.
    put_with(&env, "lab/ml:v2", &numpy_sif(&env, 4), &[]);
    assert_eq!(found(&env, &["--deffile", "numpy"]), ["lab/ml:v1", "lab/ml:v2"]);
    env.cmd().args(["rm", "lab/ml:v1"]).assert().success();
    assert_eq!(found(&env, &["--deffile", "numpy"]), ["lab/ml:v2"]);
    let other = refs_of(&env.json_host("b", &["find", "--deffile", "numpy"]));
    assert_eq!(other, ["lab/ml:v2"]);

    // Enough refs that they are read on several threads: all seen, in order.
    let tags: Vec<String> = (0..40).map(|i| format!("many/x:t{i:02}")).collect();
    for t in &tags {
        env.cmd().args(["tag", "-q", "lab/ml:v2", t]).assert().success();
    }
    assert_eq!(found(&env, &["--name", "many/*", "--deffile", "numpy"]), tags);
    assert_eq!(env.json(&["ls"])["refs"].as_array().unwrap().len(), 43);

    // The table shows the matching lines with their numbers.
    let out = env.cmd().args(["find", "--deffile", "numpy"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains("lab/ml:v2") && text.contains("4:   pip install numpy==2.1"),
        "{text}"
    );
    assert!(!text.contains("lab/sci"), "{text}");
}

on_both_backends!(finds_by_deffile_labels_name_and_date);

#[test]
fn json_shape_is_stable() {
    let env = Env::new();
    put_with(&env, "lab/ml:v1", &numpy_sif(&env, 1), &["--label", "team=x"]);
    let v = env.json(&["find", "--deffile", "numpy"]);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&v), ["format_version", "images", "searched"]);
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["searched"], 1);
    let hit = &v["images"][0];
    assert_eq!(
        keys(hit),
        ["created", "deffile", "image", "labels", "matches", "name", "ref", "size", "tag"]
    );
    assert_eq!(hit["name"], "lab/ml");
    assert_eq!(hit["tag"], "v1");
    assert!(hit["image"].as_str().unwrap().starts_with("blake3:"));
    assert!(hit["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(
        hit["labels"],
        serde_json::json!({"maintainer": "lab", "team": "x"})
    );
    // Without --deffile: no lines, and an image without one says null.
    put_with(
        &env,
        "lab/raw:v1",
        &env.file("raw.img", &common::random(10_000, 9)),
        &[],
    );
    let v = env.json(&["find", "--name", "lab/raw"]);
    assert_eq!(v["images"][0]["deffile"], Value::Null);
    assert_eq!(v["images"][0]["matches"], serde_json::json!([]));
}

#[test]
fn a_refs_deffile_wins_over_the_sifs() {
    let env = Env::new();
    let def = env.file("own.def", SCIPY_DEF.as_bytes());
    put_with(
        &env,
        "lab/ml:v1",
        &numpy_sif(&env, 1),
        &["--deffile", def.to_str().unwrap()],
    );
    // As `imgstore deffile` says.
    env.cmd()
        .args(["deffile", "lab/ml:v1"])
        .assert()
        .success()
        .stdout(SCIPY_DEF);
    assert!(found(&env, &["--deffile", "numpy"]).is_empty());
    let v = env.json(&["find", "--deffile", "scipy"]);
    assert_eq!(v["images"][0]["deffile"], "ref");
}

#[test]
fn bad_regex_label_and_date_are_usage_errors() {
    let env = Env::new();
    for (args, says) in [
        (
            &["find", "--deffile", "pip (install"][..],
            "not a valid regular expression",
        ),
        (&["find", "--label", "team"][..], "KEY=VALUE"),
        (&["find", "--since", "last week"][..], "--since"),
        (&["find", "--name", "lab/[x"][..], "--name"),
    ] {
        let out = env.cmd().args(args).assert().failure().get_output().clone();
        assert_eq!(common::code(&out), 2, "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(first.starts_with("imgstore: "), "{stderr}");
    }
}

#[test]
fn an_empty_store_finds_nothing() {
    let env = Env::new();
    let v = env.json(&["find", "--deffile", "x"]);
    assert_eq!(v["images"], serde_json::json!([]));
    assert_eq!(v["searched"], 0);
    let out = env.cmd().arg("find").assert().success().get_output().clone();
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image matches"));
}

/// What search needs is kept in the local view: once seen, an image's
/// deffile is found without its manifest (here deleted to prove it).
#[test]
fn the_view_keeps_what_search_needs() {
    let env = Env::new();
    let r = env.put("lab/ml:v1", &numpy_sif(&env, 1));
    assert_eq!(found(&env, &["--deffile", "numpy"]), ["lab/ml:v1"]);
    let hex = r["image"]
        .as_str()
        .unwrap()
        .strip_prefix("blake3:")
        .unwrap()
        .to_string();
    let manifests: Vec<_> = common::list_files(&env.store())
        .into_iter()
        .filter(|f| f.starts_with("manifests/") && f.contains(&hex))
        .collect();
    assert!(!manifests.is_empty(), "the manifest is where expected");
    for m in &manifests {
        std::fs::remove_file(env.store().join(m)).unwrap();
    }
    assert_eq!(found(&env, &["--deffile", "numpy"]), ["lab/ml:v1"]);
    // Another host has no view yet: it must read the manifest, and says it is gone.
    env.cmd_host("b")
        .args(["find", "--deffile", "numpy"])
        .assert()
        .failure();
}

#[test]
fn diff_deffile_prints_a_unified_diff() {
    let env = Env::new();
    let scipy = env.file("scipy.def", SCIPY_DEF.as_bytes());
    put_with(&env, "lab/ml:v1", &numpy_sif(&env, 1), &[]);
    let img = env.file("b.img", &common::random(100_000, 5));
    put_with(&env, "lab/ml:v2", &img, &["--deffile", scipy.to_str().unwrap()]);
    put_with(
        &env,
        "lab/raw:v1",
        &env.file("raw.img", &common::random(10_000, 6)),
        &[],
    );

    let out = env
        .cmd()
        .args(["diff", "--deffile", "lab/ml:v1", "lab/ml:v2"])
        .assert()
        .success()
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("in common"), "the chunk table stays: {text}");
    for line in [
        "--- lab/ml:v1",
        "+++ lab/ml:v2",
        "-  pip install numpy==2.1",
        "+  pip install scipy",
        "-%labels",
        " %post",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing in:\n{text}");
    }
    let v = env.json(&["diff", "--deffile", "lab/ml:v1", "lab/ml:v2"]);
    assert_eq!(v["deffile"]["a"], "sif");
    assert_eq!(v["deffile"]["b"], "ref");
    assert_eq!(v["deffile"]["identical"], false);
    assert!(v["deffile"]["unified"]
        .as_str()
        .unwrap()
        .contains("+  pip install scipy"));
    assert!(v["common_chunks"].is_u64());

    let said = |a: &str, b: &str| {
        let out = env.cmd().args(["diff", "--deffile", a, b]).assert().success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    assert!(
        said("lab/ml:v1", "lab/raw:v1").contains("definition files: lab/raw:v1 has none (lab/ml:v1 has one)")
    );
    assert!(
        said("lab/raw:v1", "lab/ml:v2").contains("definition files: lab/raw:v1 has none (lab/ml:v2 has one)")
    );
    assert!(said("lab/raw:v1", "lab/raw:v1").contains("neither lab/raw:v1 nor lab/raw:v1 has one"));
    assert!(said("lab/ml:v1", "lab/ml:v1").contains("definition files: identical"));
    let v = env.json(&["diff", "--deffile", "lab/ml:v1", "lab/raw:v1"]);
    assert_eq!(v["deffile"]["b"], Value::Null);
    assert_eq!(v["deffile"]["unified"], Value::Null);
    // Without --deffile, no deffile part.
    assert!(!said_plain(&env).contains("definition files"));
    assert!(env
        .json(&["diff", "lab/ml:v1", "lab/ml:v2"])
        .get("deffile")
        .is_none());
}

fn said_plain(env: &Env) -> String {
    let out = env
        .cmd()
        .args(["diff", "lab/ml:v1", "lab/ml:v2"])
        .assert()
        .success();
    String::from_utf8_lossy(&out.get_output().stdout).into_owned()
}
