//! Delta manifests through the real binary: a name's later images are
//! stored as deltas against the first's full manifest, read back byte for
//! byte, survive gc, and damage to a base is named and mended by a re-put.

use std::path::PathBuf;

use crate::common::{self, Env};

/// An image's manifest file: the full one, else its delta (`<id>.delta`).
fn manifest_path(env: &Env, image: &serde_json::Value) -> PathBuf {
    let hex = image.as_str().unwrap().trim_start_matches("blake3:");
    let full = env.store().join("manifests").join(&hex[..2]).join(hex);
    if full.exists() {
        return full;
    }
    full.with_file_name(format!("{hex}.delta"))
}

/// (format version, base image id or "", file size) of a manifest.
fn manifest_kind(path: &PathBuf) -> (u32, String, u64) {
    let bytes = std::fs::read(path).unwrap();
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    let base = match version {
        2 => format!(
            "blake3:{}",
            bytes[64..96]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        _ => String::new(),
    };
    (version, base, bytes.len() as u64)
}

/// Puts a history of four commits under `lab/app`; returns each commit's
/// data and put report.
fn history(env: &Env) -> Vec<(Vec<u8>, serde_json::Value)> {
    let mut data = common::image(8 << 20, 7);
    let mut out = Vec::new();
    for c in 0..4 {
        if c > 0 {
            data = common::edit(&data, 3, c);
        }
        let f = env.file(&format!("c{c}.img"), &data);
        let report = env.put(&format!("lab/app:c{c}"), &f);
        out.push((data.clone(), report));
    }
    out
}

#[test]
fn a_names_later_images_are_deltas_against_its_first_and_read_back_whole() {
    let env = Env::new();
    let commits = history(&env);
    let first = &commits[0].1["image"];
    let (version, _, full_size) = manifest_kind(&manifest_path(&env, first));
    assert_eq!(version, 1, "a name's first image has a full manifest");
    for (c, (data, report)) in commits.iter().enumerate().skip(1) {
        let (version, base, size) = manifest_kind(&manifest_path(&env, &report["image"]));
        assert_eq!(version, 2, "c{c} is a delta");
        // Always against the full manifest, never a chain of deltas.
        assert_eq!(base, first.as_str().unwrap(), "c{c}'s base");
        assert!(size * 4 < full_size, "c{c}: delta {size} B vs full {full_size} B");
        assert!(env.get(&format!("lab/app:c{c}")) == *data, "c{c} reads back");
        let inspect = env.json(&["inspect", &format!("lab/app:c{c}")]);
        assert_eq!(inspect["manifest_base"], *first, "inspect names c{c}'s base");
    }
    assert!(env.json(&["inspect", "lab/app:c0"])["manifest_base"].is_null());
    // Another name starts over with a full manifest; a known image keeps
    // the manifest it has.
    let other = env.file("other.img", &common::image(2 << 20, 99));
    let report = env.put("lab/other:v1", &other);
    assert_eq!(manifest_kind(&manifest_path(&env, &report["image"])).0, 1);
    let c1 = manifest_path(&env, &commits[1].1["image"]);
    let before = std::fs::read(&c1).unwrap();
    env.put("lab/other:v2", &env.path("c1.img"));
    assert_eq!(
        std::fs::read(&c1).unwrap(),
        before,
        "a sound manifest is never rewritten"
    );

    // The base's own ref gone and gc run: the deltas still read back, and
    // verify finds every image sound, data included.
    env.cmd().args(["rm", "lab/app:c0"]).assert().success();
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    for (c, (data, _)) in commits.iter().enumerate().skip(1) {
        assert!(env.get(&format!("lab/app:c{c}")) == *data, "c{c} after gc");
    }
    let out = env
        .cmd()
        .args(["--json", "verify", "--read-data"])
        .output()
        .unwrap();
    assert_eq!(common::code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_damaged_base_is_named_for_every_delta_and_a_re_put_mends_it() {
    let env = Env::new();
    let commits = history(&env);
    let base = manifest_path(&env, &commits[0].1["image"]);
    let mut bytes = std::fs::read(&base).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&base, &bytes).unwrap();

    let target = env.path("out.img");
    let out = env
        .cmd()
        .args(["get", "lab/app:c2", "-o"])
        .arg(&target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::code(&out), 4, "{stderr}");
    let base_id = commits[0].1["image"].as_str().unwrap();
    // One line of error, one of hint.
    let first = stderr.lines().next().unwrap_or("");
    assert!(first.contains(&format!("its base image {base_id}")), "{stderr}");
    assert!(
        stderr.lines().nth(1).unwrap_or("").starts_with("hint:"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 2, "{stderr}");
    assert!(!target.exists(), "no output from a failed get");

    let out = env.cmd().args(["--json", "verify"]).output().unwrap();
    assert_eq!(common::code(&out), 4);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = crate::verify::damaged_refs(&report);
    assert_eq!(damaged, ["lab/app:c0", "lab/app:c1", "lab/app:c2", "lab/app:c3"]);

    // Putting the first image again replaces its damaged manifest (with a
    // full one), and with it every delta reads again.
    env.put("lab/app:c0", &env.path("c0.img"));
    assert_eq!(manifest_kind(&base).0, 1);
    for (c, (data, _)) in commits.iter().enumerate() {
        assert!(
            env.get(&format!("lab/app:c{c}")) == *data,
            "c{c} after the re-put"
        );
    }
    env.cmd().args(["verify"]).assert().success();
}

#[test]
fn a_store_made_without_deltas_keeps_writing_full_manifests() {
    let env = Env::new();
    let config = env.store().join("config");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        v["features"],
        serde_json::json!(["manifest-deltas", "chunk-groups", "delta-keys", "pins"])
    );
    v["features"] = serde_json::json!([]);
    std::fs::write(&config, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    for (data, report) in history(&env) {
        assert_eq!(manifest_kind(&manifest_path(&env, &report["image"])).0, 1);
        assert!(env.get(report["ref"].as_str().unwrap()) == data);
    }
}

/// A store laid out before `delta-keys` (deltas under the plain key,
/// written there only where no manifest was) still reads back, and puts
/// into it write full manifests only: keeping a base full there would need
/// put-if-absent.
#[test]
fn a_store_with_deltas_under_plain_keys_reads_and_gets_full_manifests() {
    let env = Env::new();
    let commits = history(&env);
    let mut moved = 0;
    for (_, report) in &commits[1..] {
        let delta = manifest_path(&env, &report["image"]);
        let name = delta.file_name().unwrap().to_str().unwrap().to_string();
        let plain = delta.with_file_name(name.trim_end_matches(".delta"));
        assert!(name.ends_with(".delta"), "{name}");
        std::fs::rename(&delta, &plain).unwrap();
        moved += 1;
    }
    assert_eq!(moved, 3);
    let config = env.store().join("config");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    v["features"] = serde_json::json!(["manifest-deltas", "chunk-groups"]);
    std::fs::write(&config, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    for (data, report) in &commits {
        assert!(env.get(report["ref"].as_str().unwrap()) == *data);
    }
    env.cmd().args(["verify", "--read-data"]).assert().success();
    let next = common::edit(&commits[3].0, 3, 9);
    let f = env.file("c9.img", &next);
    let report = env.put("lab/app:c9", &f);
    let path = manifest_path(&env, &report["image"]);
    assert_eq!(manifest_kind(&path).0, 1, "{}", path.display());
    assert!(env.get("lab/app:c9") == next);
}
