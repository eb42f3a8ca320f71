//! Storage reports against a store with known sharing. The expected figures
//! are counted here, independently, from the manifest and pack files.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use imgstore_store::manifest::{Entry, Manifest, ManifestFile};
use imgstore_store::{Backend, ImageId, LocalBackend};
use serde_json::Value;

use crate::common::{self, Env};

/// Per-chunk overhead in a pack (its footer entry; the 48 B frame header is
/// in the chunk's stored share, `Truth::stored`) and per pack.
const CHUNK_OVERHEAD: u64 = 56;
const PACK_OVERHEAD: u64 = 80;

fn json(env: &Env, host: &str, args: &[&str]) -> Value {
    env.json_host(host, args)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// What the files say: each image's distinct chunks, each chunk's stored length.
struct Truth {
    chunks: HashMap<ImageId, HashMap<[u8; 32], u64>>,
    stored: HashMap<[u8; 32], u64>,
    packs: u64,
    entries: u64,
}

impl Truth {
    fn read(store: &Path, images: &[ImageId]) -> Truth {
        let backend = LocalBackend::new(store);
        let mut chunks = HashMap::new();
        for id in images {
            // A full manifest, else a delta, which reads through its base's
            // full manifest.
            let key = [
                imgstore_store::manifest::key(id),
                imgstore_store::manifest::delta_key(id),
            ]
            .into_iter()
            .find(|k| backend.head(k).unwrap().is_some())
            .expect("a manifest");
            let mut base = |b: &ImageId| {
                let key = imgstore_store::manifest::key(b);
                ManifestFile::open_full(backend.open(&key)?, imgstore_store::Object::Manifest { key })
            };
            let mut entries = Vec::new();
            ManifestFile::open_each(
                backend.open(&key).unwrap(),
                imgstore_store::Object::Manifest { key: key.clone() },
                &mut base,
                &mut |e| entries.push(e),
            )
            .unwrap();
            let set = entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Chunk { id, len } => Some((id.0, u64::from(*len))),
                    Entry::Zero { .. } => None,
                })
                .collect();
            chunks.insert(*id, set);
        }
        let (mut stored, mut packs, mut entries) = (HashMap::new(), 0, 0);
        for key in backend.list("packs").unwrap() {
            let f = backend.open(&key).unwrap();
            let footer = imgstore_store::pack::read_footer(
                f.as_ref(),
                &imgstore_store::Object::Pack { key: key.clone() },
            )
            .unwrap();
            for (e, share) in footer.iter().zip(imgstore_store::pack::framed_shares(&footer)) {
                stored.insert(e.id.0, share);
                entries += 1;
            }
            packs += 1;
        }
        Truth {
            chunks,
            stored,
            packs,
            entries,
        }
    }

    /// Distinct chunks of these images.
    fn union(&self, ids: &[ImageId]) -> HashMap<[u8; 32], u64> {
        ids.iter().flat_map(|i| self.chunks[i].clone()).collect()
    }

    /// (raw, stored) bytes of chunks in `set` used by none of `others`.
    fn exclusive(&self, set: &[ImageId], others: &[ImageId]) -> (u64, u64) {
        let out: HashSet<[u8; 32]> = self.union(others).into_keys().collect();
        self.union(set)
            .iter()
            .filter(|(c, _)| !out.contains(*c))
            .fold((0, 0), |(r, s), (c, len)| (r + len, s + self.stored[c]))
    }

    fn raw_stored(&self, chunks: &HashMap<[u8; 32], u64>) -> (u64, u64) {
        chunks
            .iter()
            .fold((0, 0), |(r, s), (c, len)| (r + len, s + self.stored[c]))
    }
}

fn image_id(put: &Value) -> ImageId {
    put["image"].as_str().unwrap().parse().unwrap()
}

fn row<'a>(du: &'a Value, group: &str) -> &'a Value {
    du["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"] == group)
        .unwrap_or_else(|| panic!("no row {group} in {du}"))
}

#[test]
fn figures_match_an_independent_count() {
    let env = Env::new();
    // v1 and v2 share a known 1.2 MB prefix; other/x shares nothing and
    // has two tags on one image.
    let shared = common::image(1_200_000, 1);
    let mut a = shared.clone();
    a.extend(common::random(300_000, 2));
    let mut b = shared.clone();
    b.extend(common::image(500_000, 3));
    let c = common::image(700_000, 4);
    let pa = env.put("lab/app:v1", &env.file("a", &a));
    let pb = env.put("lab/app:v2", &env.file("b", &b));
    let pc = env.put("other/x:1", &env.file("c", &c));
    env.cmd()
        .args(["tag", "other/x:1", "other/x:copy"])
        .assert()
        .success();
    let (ia, ib, ic) = (image_id(&pa), image_id(&pb), image_id(&pc));
    let t = Truth::read(&env.store(), &[ia, ib, ic]);

    // stats
    let s = json(&env, "a", &["stats"]);
    assert_eq!(u(&s, "format_version"), 1);
    let all = t.union(&[ia, ib, ic]);
    let (unique, live_stored) = t.raw_stored(&all);
    let logical = (a.len() + b.len() + 2 * c.len()) as u64;
    assert_eq!(u(&s, "logical_bytes"), logical);
    assert_eq!(u(&s, "unique_bytes"), unique);
    assert_eq!(u(&s, "live_stored_bytes"), live_stored);
    assert_eq!(u(&s, "chunks"), all.len() as u64);
    assert_eq!(u(&s, "refs"), 4);
    assert_eq!(u(&s, "images"), 3);
    assert_eq!(u(&s, "names"), 2);
    assert_eq!(u(&s, "packs"), t.packs);
    assert_eq!(u(&s, "stored_bytes"), env.pack_bytes());
    assert_eq!(u(&s, "garbage_bytes"), 0);
    assert_eq!(u(&s, "duplicate_bytes"), 0);
    assert_eq!(
        u(&s, "overhead_bytes"),
        t.packs * PACK_OVERHEAD + t.entries * CHUNK_OVERHEAD
    );
    assert_eq!(u(&s, "stored_bytes"), live_stored + u(&s, "overhead_bytes"));
    // The shared prefix is really shared (the test means something).
    assert!(
        t.union(&[ia])
            .keys()
            .filter(|k| t.chunks[&ib].contains_key(*k))
            .count()
            > 5
    );

    // du over a set is computed over the set, not summed per ref.
    let du = json(&env, "a", &["du", "--by", "tag", "lab/app:v1", "lab/app:v2"]);
    let (ex_raw, ex_st) = t.exclusive(&[ia], &[ib, ic]);
    let v1 = row(&du, "lab/app:v1");
    assert_eq!(u(v1, "exclusive_bytes"), ex_raw);
    assert_eq!(u(v1, "exclusive_stored_bytes"), ex_st);
    let (_, v1_st) = t.raw_stored(&t.chunks[&ia]);
    assert_eq!(u(v1, "shared_stored_bytes"), v1_st - ex_st);
    let (ex_raw, ex_st) = t.exclusive(&[ia, ib], &[ic]);
    let total = &du["total"];
    assert_eq!(u(total, "exclusive_bytes"), ex_raw);
    assert_eq!(u(total, "exclusive_stored_bytes"), ex_st);
    assert_eq!(
        u(total, "frees_bytes"),
        ex_st + CHUNK_OVERHEAD * u(total, "exclusive_chunks")
    );
    assert!(
        u(total, "exclusive_bytes") > u(v1, "exclusive_bytes") + u(row(&du, "lab/app:v2"), "exclusive_bytes")
    );

    // An image another ref still names frees nothing; both its tags free it.
    let du = json(&env, "a", &["du", "--by", "tag", "other/x:1"]);
    assert_eq!(u(&du["total"], "exclusive_bytes"), 0);
    let du = json(&env, "a", &["du"]);
    let (ex_raw, _) = t.exclusive(&[ic], &[ia, ib]);
    assert_eq!(u(row(&du, "other/x"), "exclusive_bytes"), ex_raw);
    assert_eq!(u(row(&du, "other/x"), "logical_bytes"), 2 * c.len() as u64);
    assert_eq!(u(&du["total"], "exclusive_stored_bytes"), live_stored);

    // history: added is kept from the put, exclusive is now.
    let h = json(&env, "a", &["history", "lab/app"]);
    let commits = h["commits"].as_array().unwrap();
    assert_eq!(commits.len(), 2);
    assert_eq!(commits[0]["tag"], "v1");
    assert_eq!(
        u(&commits[0], "added_stored_bytes"),
        u(&pa["added"], "stored_bytes")
    );
    assert_eq!(
        u(&commits[1], "added_stored_bytes"),
        u(&pb["added"], "stored_bytes")
    );
    assert_eq!(u(&commits[1], "exclusive_bytes"), t.exclusive(&[ib], &[ia, ic]).0);

    // diff
    let d = json(&env, "a", &["diff", "lab/app:v1", "lab/app:v2"]);
    let common: HashMap<_, _> = t.chunks[&ia]
        .iter()
        .filter(|(k, _)| t.chunks[&ib].contains_key(*k))
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(u(&d, "common_chunks"), common.len() as u64);
    assert_eq!(u(&d, "common_bytes"), t.raw_stored(&common).0);
    assert_eq!(u(&d, "only_a_bytes"), t.exclusive(&[ia], &[ib]).0);
    assert_eq!(u(&d, "only_b_bytes"), t.exclusive(&[ib], &[ia]).0);

    // rm: the freed chunks are garbage waiting for gc, exactly.
    env.cmd()
        .args(["rm", "lab/app:v1", "lab/app:v2"])
        .assert()
        .success();
    let s = json(&env, "a", &["stats"]);
    let freed = t.union(&[ia, ib]);
    let kept: HashSet<_> = t.chunks[&ic].keys().collect();
    let garbage: u64 = freed
        .keys()
        .filter(|k| !kept.contains(k))
        .map(|k| t.stored[k] + CHUNK_OVERHEAD)
        .sum();
    assert_eq!(u(&s, "unreferenced_bytes"), garbage);
    assert_eq!(u(&s, "garbage_bytes"), garbage);

    // gc condemns, a second gc deletes: stats then matches the disk.
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    let s = json(&env, "a", &["stats"]);
    assert!(u(&s, "condemned_bytes") > 0, "{s}");
    assert_eq!(
        u(&s, "garbage_bytes"),
        u(&s, "condemned_bytes") + u(&s, "unreferenced_bytes")
    );
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    let s = json(&env, "a", &["stats"]);
    let t2 = Truth::read(&env.store(), &[ic]);
    let (_, live_stored) = t2.raw_stored(&t2.chunks[&ic]);
    assert_eq!(u(&s, "garbage_bytes"), 0, "{s}");
    assert_eq!(u(&s, "stored_bytes"), env.pack_bytes());
    assert_eq!(u(&s, "live_stored_bytes"), live_stored);
    assert_eq!(
        u(&s, "stored_bytes"),
        live_stored + t2.packs * PACK_OVERHEAD + t2.entries * CHUNK_OVERHEAD
    );
}

/// Removes the figure that differs between hosts (their own index size).
fn store_figures(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("index_bytes");
    v
}

/// A gc run that deletes packs is in the log with exactly the bytes it freed
/// on disk, and `log NAME` leaves it out.
#[test]
fn gc_runs_are_logged_with_what_they_freed() {
    let env = Env::new();
    env.put("lab/app:v1", &env.file("a", &common::image(900_000, 5)));
    env.put("lab/app:v2", &env.file("b", &common::image(800_000, 6)));
    env.cmd().args(["rm", "lab/app:v1"]).assert().success();
    let before = env.pack_bytes();
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    let freed = before - env.pack_bytes();
    assert!(freed > 0);
    let log = json(&env, "a", &["log"]);
    let gcs: Vec<&Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "gc")
        .collect();
    assert_eq!(gcs.len(), 1, "{log}");
    assert_eq!(gcs[0]["gc"]["bytes_freed"], freed);
    assert!(gcs[0].get("image").is_none());
    let named = json(&env, "a", &["log", "lab/app"]);
    assert!(named["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["action"] != "gc"));
    env.cmd()
        .arg("log")
        .assert()
        .success()
        .stdout(predicates::str::contains("gc"));
}

#[test]
fn cached_figures_follow_other_hosts_puts_rm_and_gc() {
    let env = Env::new();
    env.put("lab/app:v1", &env.file("a", &common::image(900_000, 5)));
    let before = json(&env, "a", &["stats"]);
    assert!(env.path("index-a").join("report").join("CURRENT").exists());
    // Host b puts and removes; host a's cache must not hide it.
    env.cmd_host("b")
        .args(["put", "lab/app:v2"])
        .arg(env.file("b", &common::image(800_000, 6)))
        .assert()
        .success();
    let after = json(&env, "a", &["stats"]);
    assert_eq!(u(&after, "images"), 2);
    assert!(u(&after, "stored_bytes") > u(&before, "stored_bytes"));
    assert_eq!(
        store_figures(after),
        store_figures(json(&env, "fresh1", &["stats"]))
    );
    env.cmd_host("b").args(["rm", "lab/app:v1"]).assert().success();
    env.cmd_host("b").args(["gc", "--grace", "0s"]).assert().success();
    env.cmd_host("b").args(["gc", "--grace", "0s"]).assert().success();
    let a = json(&env, "a", &["stats"]);
    assert_eq!(u(&a, "images"), 1);
    assert_eq!(u(&a, "garbage_bytes"), 0);
    assert_eq!(u(&a, "stored_bytes"), env.pack_bytes());
    assert_eq!(store_figures(a), store_figures(json(&env, "fresh2", &["stats"])));
    // A damaged view is rebuilt, not trusted.
    std::fs::write(env.path("index-a").join("report").join("CURRENT"), b"garbage").unwrap();
    assert_eq!(
        store_figures(json(&env, "a", &["stats"])),
        store_figures(json(&env, "fresh2", &["stats"]))
    );
}

#[test]
fn html_and_prometheus_files() {
    let env = Env::new();
    let base = common::image(600_000, 7);
    env.put("lab/app:v1", &env.file("a", &base));
    env.put("lab/app:v2", &env.file("b", &common::edit(&base, 3, 8)));
    env.put("tools/cli:1", &env.file("c", &common::image(200_000, 9)));
    let out = env.path("out");
    std::fs::create_dir(&out).unwrap();
    let (html, prom) = (out.join("report.html"), out.join("imgstore.prom"));
    env.cmd()
        .arg("report")
        .arg("--html")
        .arg(&html)
        .arg("--prometheus")
        .arg(&prom)
        .assert()
        .success();
    let stats = json(&env, "a", &["stats"]);
    let du = json(&env, "a", &["du"]);

    // Only the two files: no temporary left behind.
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["imgstore.prom", "report.html"]);

    // HTML: one self-contained, balanced document with the figures and charts.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    for bad in [
        "http://", "https://", "<script", "src=", "<link", "@import", "url(",
    ] {
        assert!(!page.contains(bad), "page contains {bad}");
    }
    for tag in [
        "html", "head", "body", "table", "thead", "tbody", "tr", "svg", "style", "title",
    ] {
        let open = page.matches(&format!("<{tag}>")).count() + page.matches(&format!("<{tag} ")).count();
        let close = page.matches(&format!("</{tag}>")).count();
        assert_eq!(open, close, "<{tag}> opened {open} times, closed {close}");
    }
    assert!(page.matches("<svg").count() >= 4, "charts missing");
    assert!(page.contains("<path d=\"M"), "growth line missing");
    for name in ["lab/app", "tools/cli", "v1", "v2"] {
        assert!(page.contains(&format!("<td>{name}</td>")), "{name} missing");
    }
    let size = |n: u64| bytesize_iec(n);
    assert!(page.contains(&format!("<td>{}</td>", size(u(&stats, "stored_bytes")))));
    assert!(page.contains(&format!(
        "<td>{}</td>",
        size(u(row(&du, "lab/app"), "exclusive_stored_bytes"))
    )));

    // Prometheus: HELP and TYPE before every family, valid names and values,
    // every sample labelled with the store.
    let text = std::fs::read_to_string(&prom).unwrap();
    let store_label = format!("store=\"{}\"", env.store().display());
    let mut typed = HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(kind, "gauge");
            assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
            typed.insert(name.to_string());
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap();
            assert!(labels.starts_with(&store_label), "{series}");
            assert!(typed.contains(name), "{name} sampled before its TYPE");
            assert!(name.starts_with("imgstore_"));
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            let labels = labels.trim_end_matches('}').trim_start_matches(&store_label);
            samples.insert(format!("{name}{labels}"), value.parse::<f64>().unwrap());
        }
    }
    assert_eq!(samples["imgstore_stored_bytes"], u(&stats, "stored_bytes") as f64);
    assert_eq!(
        samples["imgstore_logical_bytes"],
        u(&stats, "logical_bytes") as f64
    );
    assert_eq!(samples["imgstore_images"], 3.0);
    assert_eq!(samples["imgstore_garbage_bytes"], 0.0);
    assert_eq!(
        samples["imgstore_last_put_timestamp_seconds"],
        u(&stats, "last_put") as f64
    );
    assert_eq!(
        samples["imgstore_name_exclusive_bytes,name=\"lab/app\""],
        u(row(&du, "lab/app"), "exclusive_stored_bytes") as f64
    );
}

/// The (chunks, bytes, stored) of a du row's set and of its exclusive part.
fn row_figures(r: &imgstore_store::stats::DuRow) -> [u64; 6] {
    [
        r.chunks,
        r.unique_bytes,
        r.unique_stored_bytes,
        r.exclusive_chunks,
        r.exclusive_bytes,
        r.exclusive_stored_bytes,
    ]
}

fn totals_figures(t: &imgstore_store::stats::view::SetTotals) -> [u64; 6] {
    let (a, e) = (&t.all, &t.exclusive);
    [a.chunks, a.bytes, a.stored, e.chunks, e.bytes, e.stored].map(|v| u64::try_from(v).unwrap())
}

/// Host a's view is kept up to date step by step through puts, tags, rms and
/// gcs from two hosts: its running totals must equal a count over the chunks,
/// and everything must equal what a new host builds from nothing.
#[test]
fn running_totals_match_a_count_through_random_puts_tags_rms_and_gcs() {
    use imgstore_store::stats::GroupBy;
    use imgstore_store::{NoProgress, Store};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    let env = Env::new();
    let mut rng = SmallRng::seed_from_u64(11);
    let base = common::image(400_000, 1);
    let names = ["lab/a", "lab/b", "other/c"];
    let mut refs: Vec<String> = Vec::new();
    let mut ops = Vec::new();
    for step in 0..18 {
        let host = ["a", "b"][step % 2];
        let op = if refs.len() < 2 {
            0
        } else {
            rng.random_range(0..10)
        };
        let name = names[rng.random_range(0..names.len())];
        match op {
            0..=3 => {
                let data = if rng.random_range(0..4) == 0 {
                    common::image(300_000, 100 + step as u64)
                } else {
                    common::edit(&base, rng.random_range(1..4), step as u64)
                };
                let r = format!("{name}:p{step}");
                env.cmd_host(host)
                    .args(["put", &r])
                    .arg(env.file("in", &data))
                    .assert()
                    .success();
                refs.push(r);
            }
            4..=5 => {
                let from = refs[rng.random_range(0..refs.len())].clone();
                let r = format!("{name}:t{step}");
                env.cmd_host(host).args(["tag", &from, &r]).assert().success();
                refs.push(r);
            }
            6..=7 => {
                let r = refs.swap_remove(rng.random_range(0..refs.len()));
                env.cmd_host(host).args(["rm", &r]).assert().success();
            }
            _ => {
                env.cmd_host(host)
                    .args(["gc", "--grace", "0s"])
                    .assert()
                    .success();
            }
        }
        ops.push(op);

        let store = Store::open(&env.store(), Some(env.path("index-a"))).unwrap();
        let snap = store.snapshot(&NoProgress).unwrap();
        assert!(
            !snap.rebuilt(),
            "step {step} (ops {ops:?}): the view went inconsistent"
        );
        let all: Vec<usize> = (0..snap.refs().len()).collect();
        let mut sets: Vec<Vec<usize>> = vec![all.clone()];
        for n in names {
            if let Ok(m) = snap.select(&[n.to_string()]) {
                sets.push(m);
            }
        }
        sets.extend(all.iter().map(|&i| vec![i]));
        for set in &sets {
            let row = snap.du(set, &GroupBy::Name).unwrap().total;
            assert_eq!(
                row_figures(&row),
                totals_figures(&snap.set_totals_exact(set).unwrap()),
                "step {step} (ops {ops:?}): set {set:?}"
            );
        }
        let fresh = Store::open(&env.store(), Some(env.path(&format!("index-new{step}")))).unwrap();
        let fresh = fresh.snapshot(&NoProgress).unwrap();
        let figures = |s: &imgstore_store::stats::Snapshot| {
            let mut v = serde_json::to_value(s.stats().unwrap()).unwrap();
            v.as_object_mut().unwrap().remove("index_bytes");
            let by_tag = s.du(&all, &GroupBy::Tag).unwrap();
            (
                v,
                serde_json::to_value(by_tag).unwrap(),
                serde_json::to_value(s.du_all().unwrap()).unwrap(),
            )
        };
        assert_eq!(figures(&snap), figures(&fresh), "step {step} (ops {ops:?})");
        // Host c, through the binary, applies each step in batches of a few
        // chunk references.
        let tiny = |args: &[&str]| -> Value {
            let mut cmd = env.cmd_host("c");
            cmd.env("IMGSTORE_TEST_REPORT_BATCH", "3");
            let mut v = common::json_of(cmd, args);
            v.as_object_mut().unwrap().remove("format_version");
            v
        };
        let (want_stats, want_tags, want_names) = figures(&fresh);
        // Ratios are left out: a float does not survive JSON text exactly.
        let ints = |v: Value| -> Value {
            let mut o = v.as_object().unwrap().clone();
            // The object census comes from a listing, not the counting model.
            o.retain(|k, v| {
                v.is_u64()
                    && !["format_version", "index_bytes", "objects", "mean_object_size"].contains(&k.as_str())
            });
            Value::Object(o)
        };
        assert_eq!(ints(tiny(&["stats"])), ints(want_stats), "step {step}");
        assert_eq!(tiny(&["du", "--by", "tag"]), want_tags, "step {step}");
        assert_eq!(tiny(&["du"]), want_names, "step {step}");
    }
    assert!(ops.iter().any(|o| *o >= 8), "a gc ran: {ops:?}");
    assert!(ops.iter().any(|o| (6..=7).contains(o)), "an rm ran: {ops:?}");
}

/// The CLI's size format (bytesize, IEC), for finding table cells.
fn bytesize_iec(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// Writes synthetic images straight into the store's files (a put per
/// image through the binary would take hours): 50 commits per name; each
/// image `chunks` chunks of 32 KiB (122,880 is a 4 GiB image); the first
/// commit of a name writes all of them, each later one replaces 1% of the
/// previous commit's chunks and writes those in a pack of its own, as a put
/// would. Chunk payloads are 8-byte stand-ins: reports read manifests and
/// pack footers only.
struct Synthetic {
    chunks: Vec<imgstore_store::Digest>,
    per_image: usize,
    seed: u64,
}

impl Synthetic {
    fn new(per_image: usize) -> Synthetic {
        Synthetic {
            chunks: Vec::new(),
            per_image,
            seed: 0,
        }
    }

    /// Writes image number `i` (name `lab/app{i / 50}`, tag `c{i % 50}`).
    fn add(&mut self, env: &Env, i: usize) {
        use imgstore_store::codec::Codec;
        use imgstore_store::pack::PackBuilder;
        use imgstore_store::refs::{Added, RefRecord, TagRef};
        use imgstore_store::Digest;
        const LEN: u32 = 32 << 10;
        let root = env.store();
        let write = |key: &str, data: &[u8]| {
            let p = root.join(key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        let (name, commit) = (format!("lab/app{}", i / 50), i % 50);
        let n = self.per_image;
        let step = (n / 100).max(1);
        let fresh = if commit == 0 {
            self.chunks = vec![Digest([0; 32]); n];
            0..n
        } else {
            let at = commit * step % (n - step + 1);
            at..at + step
        };
        let mut pack = PackBuilder::new();
        let mut added = 0u64;
        for slot in fresh {
            self.seed += 1;
            let payload = self.seed.to_le_bytes();
            self.chunks[slot] = Digest::of(&payload);
            pack.add(self.chunks[slot], LEN, Codec::Raw, &payload);
            added += 1;
        }
        let (pack_id, bytes, _) = pack.finish();
        write(&imgstore_store::pack::key(&pack_id), &bytes);
        let ids: Vec<u8> = self.chunks.iter().flat_map(|c| c.0).collect();
        let id = ImageId(Digest::of(&ids));
        let m = Manifest {
            size: n as u64 * u64::from(LEN),
            id,
            entries: self
                .chunks
                .iter()
                .map(|c| Entry::Chunk { id: *c, len: LEN })
                .collect(),
            meta: Default::default(),
        };
        write(&imgstore_store::manifest::key(&id), &m.encode());
        let record = RefRecord {
            format: "imgstore-ref".into(),
            version: 1,
            image: id,
            size: m.size,
            created: 1_700_000_000 + i as u64 * 60,
            user: "bench".into(),
            host: "bench".into(),
            message: None,
            labels: Default::default(),
            deffile: None,
            added: Added {
                chunks: added,
                raw_bytes: added * u64::from(LEN),
                stored_bytes: added * 8,
            },
        };
        let t = TagRef {
            name,
            tag: format!("c{commit}"),
        };
        write(&t.key(), &record.to_bytes());
    }
}

/// Times `stats`, `du` and `history` on 1,000 synthetic 4 GiB images
/// (IMGSTORE_SCALE_IMAGES, IMGSTORE_SCALE_CHUNKS per image): on a host with
/// no report view (it folds every image in), then with it, then after one
/// more image and after an `rm`. For benches/results/SCALE.md:
/// `cargo test --release --test tests reports::at_scale -- --ignored --nocapture`
#[test]
#[ignore]
fn at_scale() {
    let var = |k: &str, d: usize| std::env::var(k).map_or(d, |v| v.parse().unwrap());
    let n = var("IMGSTORE_SCALE_IMAGES", 1000);
    let per_image = var("IMGSTORE_SCALE_CHUNKS", 122_880);
    let env = Env::new();
    if std::env::var_os("IMGSTORE_SCALE_KEEP").is_some() {
        eprintln!("keeping the store in {}", env.dir.path().display());
    }
    let started = std::time::Instant::now();
    let mut synth = Synthetic::new(per_image);
    for i in 0..n {
        synth.add(&env, i);
    }
    eprintln!(
        "wrote {n} synthetic images of {per_image} chunks in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let peak = std::cell::Cell::new(0u64);
    // Wall time of the whole process; peak RSS through /usr/bin/time.
    let time = |args: &[&str]| {
        let t = std::time::Instant::now();
        let out = std::process::Command::new("/usr/bin/time")
            .args(["-f", "%M"])
            .arg(assert_cmd::cargo::cargo_bin("imgstore"))
            .arg("--json")
            .args(args)
            .env("IMGSTORE_STORE", env.store())
            .env("IMGSTORE_INDEX_DIR", env.path("index-a"))
            .output()
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let kib: u64 = String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        peak.set(peak.get().max(kib));
        (secs, serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    let (cold, s) = time(&["stats"]);
    let cold_peak = peak.replace(0);
    assert_eq!(u(&s, "images"), n as u64);
    let (warm, _) = time(&["stats"]);
    let (du, d) = time(&["du"]);
    assert_eq!(d["rows"].as_array().unwrap().len(), n.div_ceil(50));
    let (du_tag, _) = time(&["du", "--by", "tag"]);
    let (hist, _) = time(&["history", "lab/app0"]);
    synth.add(&env, n);
    let (one_more, s2) = time(&["stats"]);
    assert_eq!(u(&s2, "images"), n as u64 + 1);
    env.cmd_host("a").args(["rm", "lab/app0:c1"]).assert().success();
    let (after_rm, s3) = time(&["stats"]);
    assert_eq!(u(&s3, "images"), n as u64);
    let view = common::dir_bytes(&env.path("index-a").join("report"));
    eprintln!(
        "{n} images of {per_image} chunks ({} distinct, {} packs): stats {cold:.3}s on a new host, \
         {warm:.3}s after; du {du:.3}s; du --by tag {du_tag:.3}s; history {hist:.3}s; \
         stats after one more image {one_more:.3}s, after an rm {after_rm:.3}s; view {:.1} MiB; \
         peak RSS {} MiB building the view, {} MiB at most after",
        u(&s, "chunks"),
        u(&s, "packs"),
        view as f64 / (1 << 20) as f64,
        cold_peak / 1024,
        peak.get() / 1024
    );
    if std::env::var_os("IMGSTORE_SCALE_KEEP").is_some() {
        std::mem::forget(env);
    }
}
