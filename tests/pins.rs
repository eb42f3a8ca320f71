//! Pins: a pinned image survives rm of its tags, prune and gc; unpin and gc
//! free exactly what only it held.

use std::time::{Duration, Instant};

use crate::common::{self, Env, Kind};

fn gc(env: &Env) -> serde_json::Value {
    common::json_of(env.cmd(), &["gc", "--grace", "0s"])
}

fn stats(env: &Env) -> serde_json::Value {
    env.json(&["stats"])
}

fn a_pinned_image_survives_rm_prune_and_gc(kind: Kind) {
    let env = Env::on(kind);
    let old = common::random(3 << 20, 1);
    let new = common::random(3 << 20, 2);
    let id = env.put("lab/app:v1", &env.file("v1.img", &old))["image"]
        .as_str()
        .unwrap()
        .to_string();
    env.put("lab/app:v2", &env.file("v2.img", &new));
    let pin = env.json(&["pin", "lab/app:v1", "--reason", "figure 3 of the paper"]);
    assert_eq!(pin["image"], id.as_str());
    env.cmd().args(["rm", "lab/app:v1"]).assert().success();
    env.cmd().args(["prune", "--keep-last", "1"]).assert().success();
    let first = gc(&env);
    assert_eq!(first["packs_condemned"], 0, "{first}");
    gc(&env);
    assert!(env.get(&id) == old, "the pinned image lost bytes");
    let pins = env.json(&["ls", "--pins"]);
    assert_eq!(pins["pins"][0]["image"], id.as_str(), "{pins}");
    assert_eq!(pins["pins"][0]["reason"], "figure 3 of the paper");
    assert_eq!(pins["pins"][0]["tags"].as_array().unwrap().len(), 0);
    let v = env.json(&["verify", "--read-data"]);
    assert_eq!(v["pins"], 1, "{v}");
    assert_eq!(v["images"], 2, "{v}");
}

fn unpin_then_gc_frees_exactly_its_exclusive_bytes(kind: Kind) {
    let env = Env::on(kind);
    let keep = common::image(2 << 20, 3);
    // Half shared with the kept image, half its own.
    let mut gone = keep[..1 << 20].to_vec();
    gone.extend(common::random(2 << 20, 4));
    env.put("lab/keep:v1", &env.file("keep.img", &keep));
    env.put("lab/gone:v1", &env.file("gone.img", &gone));
    env.cmd()
        .args(["pin", "lab/gone:v1", "--reason", "r"])
        .assert()
        .success();
    env.cmd().args(["rm", "lab/gone:v1"]).assert().success();
    gc(&env);
    gc(&env);
    let du = env.json(&["du"]);
    let row = &du["pinned"];
    let only_pins = row["exclusive_stored_bytes"].as_u64().unwrap();
    assert!(only_pins > 2 << 20, "{du}");
    assert!(row["shared_stored_bytes"].as_u64().unwrap() > 0, "{du}");
    let before = stats(&env);
    assert_eq!(before["pinned_only_stored_bytes"], only_pins, "{before}");
    // The tagged image's own row: nothing it shares with the pin is exclusive.
    assert!(du["total"]["exclusive_stored_bytes"].as_u64().unwrap() < keep.len() as u64);

    let id = env.json(&["ls", "--pins"])["pins"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    env.cmd().args(["unpin", &id]).assert().success();
    let first = gc(&env);
    assert!(first["packs_condemned"].as_u64().unwrap() + first["packs_repacked"].as_u64().unwrap() >= 1);
    gc(&env);
    let after = stats(&env);
    let freed = before["live_stored_bytes"].as_u64().unwrap() - after["live_stored_bytes"].as_u64().unwrap();
    assert_eq!(freed, only_pins, "unpin + gc freed {freed}, du said {only_pins}");
    assert_eq!(after["pins"], 0);
    assert!(env.get("lab/keep:v1") == keep);
    let out = env.cmd().args(["get", &id, "-o", "-"]).output().unwrap();
    assert_ne!(common::code(&out), 0, "the unpinned image still reads back");
}

fn prune_keeps_a_pinned_images_tags_and_says_why(kind: Kind) {
    let env = Env::on(kind);
    for i in 1..=3 {
        env.put(
            &format!("lab/app:v{i}"),
            &env.file("i.img", &common::random(64 << 10, i)),
        );
        std::thread::sleep(Duration::from_millis(1100));
    }
    env.cmd()
        .args(["pin", "lab/app:v1", "--reason", "paper 2026"])
        .assert()
        .success();
    let r = env.json(&["prune", "--keep-last", "1"]);
    let fate = |tag: &str| {
        r["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["ref"] == tag)
            .unwrap_or_else(|| panic!("{tag} not in {r}"))
            .clone()
    };
    assert_eq!(fate("lab/app:v1")["keep"], true, "{r}");
    assert_eq!(fate("lab/app:v1")["reasons"][0], "image pinned (paper 2026)");
    assert_eq!(fate("lab/app:v2")["keep"], false);
    assert_eq!(fate("lab/app:v3")["keep"], true);
}

/// Rounds of puts from two processes racing prune and gc with no grace,
/// each worker's first image of a round pinned: every pinned image reads
/// back whole.
fn pins_hold_through_rounds_of_prune_and_gc_with_puts(kind: Kind) {
    let env = Env::on(kind);
    let base = &common::image(1 << 20, 5);
    let env = &env;
    let mut pinned = Vec::new();
    for round in 0..4u64 {
        let stop = Instant::now() + Duration::from_secs(3);
        let ids: Vec<(String, Vec<u8>)> = std::thread::scope(|s| {
            let putters: Vec<_> = (0..2u64)
                .map(|w| {
                    s.spawn(move || {
                        let mut out = Vec::new();
                        let mut i = 0;
                        while Instant::now() < stop || i == 0 {
                            let data = common::edit(base, 3, round * 100 + w * 10 + i);
                            let f = env.path(&format!("w{w}.img"));
                            std::fs::write(&f, &data).unwrap();
                            let tag = format!("t/w{w}:r{round}-{i}");
                            let host = format!("w{w}");
                            let r = common::json_of(env.cmd_host(&host), &["put", &tag, f.to_str().unwrap()]);
                            if i == 0 {
                                // Pinned while its tag still names it, then
                                // the tag removed: only the pin keeps it.
                                env.cmd_host(&host)
                                    .args(["pin", &tag, "--reason", &format!("round {round}")])
                                    .assert()
                                    .success();
                                env.cmd_host(&host).args(["rm", &tag]).assert().success();
                                out.push((r["image"].as_str().unwrap().to_string(), data));
                            }
                            i += 1;
                        }
                        out
                    })
                })
                .collect();
            while Instant::now() < stop {
                env.cmd_host("gc")
                    .args(["prune", "--keep-last", "1"])
                    .assert()
                    .success();
                env.cmd_host("gc")
                    .args(["gc", "--grace", "0s", "--wait"])
                    .assert()
                    .success();
            }
            putters.into_iter().flat_map(|p| p.join().unwrap()).collect()
        });
        pinned.extend(ids);
    }
    for _ in 0..2 {
        env.cmd_host("gc")
            .args(["prune", "--keep-last", "1"])
            .assert()
            .success();
        gc(env);
    }
    for (id, data) in &pinned {
        assert!(env.get(id) == *data, "pinned {id} lost bytes");
    }
    env.cmd().args(["verify"]).assert().success();
}

crate::on_both_backends!(
    a_pinned_image_survives_rm_prune_and_gc,
    unpin_then_gc_frees_exactly_its_exclusive_bytes,
    prune_keeps_a_pinned_images_tags_and_says_why,
    pins_hold_through_rounds_of_prune_and_gc_with_puts,
);

#[test]
fn pin_errors_are_one_line_with_their_exit_codes() {
    let env = Env::new();
    env.put("lab/app:v1", &env.file("a.img", &common::random(64 << 10, 9)));
    let run = |args: &[&str]| env.cmd().args(args).output().unwrap();
    // No reason: a usage error.
    assert_eq!(common::code(&run(&["pin", "lab/app:v1"])), 2);
    assert_eq!(common::code(&run(&["pin", "lab/app:v1", "--reason", " "])), 2);
    // Unknown image; image not pinned.
    assert_eq!(common::code(&run(&["pin", "lab/app:nope", "--reason", "r"])), 3);
    let out = run(&["unpin", "lab/app:v1"]);
    assert_eq!(common::code(&out), 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pin of image") && err.contains("ls --pins"), "{err}");
    // Pinning twice keeps the first pin.
    run(&["pin", "lab/app:v1", "--reason", "first"]);
    let again = env.json(&["pin", "lab/app:v1", "--reason", "second"]);
    assert_eq!(again["reason"], "first");

    // An image whose tag went and whose chunks gc condemned cannot be pinned.
    let id = env.json(&["ls"])["refs"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    env.cmd().args(["unpin", &id]).assert().success();
    env.cmd().args(["rm", "lab/app:v1"]).assert().success();
    gc(&env);
    let out = run(&["pin", &id, "--reason", "too late"]);
    assert_eq!(common::code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("condemned"));
}

#[test]
fn a_damaged_pin_stops_gc_and_verify_names_it() {
    let env = Env::new();
    env.put("lab/app:v1", &env.file("a.img", &common::random(64 << 10, 10)));
    let id = env.json(&["pin", "lab/app:v1", "--reason", "r"])["image"]
        .as_str()
        .unwrap()
        .trim_start_matches("blake3:")
        .to_string();
    let pin = env.store().join("pins").join(&id[..2]).join(&id);
    std::fs::write(&pin, b"{ not json").unwrap();
    let out = env.cmd().args(["gc", "--grace", "0s"]).output().unwrap();
    assert_eq!(common::code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.cmd().args(["verify"]).output().unwrap();
    assert_ne!(common::code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("pins/"));
}

/// A store made before pins gains the `pins` format feature at its first
/// pin, so a build whose gc would ignore pins refuses the store.
#[test]
fn the_first_pin_marks_an_older_store_so_older_builds_refuse_it() {
    let env = Env::new();
    let config = env.store().join("config");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    v["features"] = serde_json::json!(["manifest-deltas", "chunk-groups", "delta-keys"]);
    std::fs::write(&config, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    env.put("lab/app:v1", &env.file("a.img", &common::random(64 << 10, 11)));
    env.cmd()
        .args(["pin", "lab/app:v1", "--reason", "r"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        v["features"],
        serde_json::json!(["manifest-deltas", "chunk-groups", "delta-keys", "pins"])
    );
    env.cmd().args(["verify"]).assert().success();
}
