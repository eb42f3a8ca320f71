//! Storage reports against a store with known sharing. The expected figures
//! are counted here, independently, from the manifest and pack files.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use imgstore_store::manifest::{Entry, Manifest};
use imgstore_store::{Backend, ImageId, LocalBackend};
use serde_json::Value;

use crate::common::{self, Env};

/// Per-chunk overhead in a pack (frame header + footer entry) and per pack.
const CHUNK_OVERHEAD: u64 = 104;
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
            let key = imgstore_store::manifest::key(id);
            let m = Manifest::decode(&backend.read(&key).unwrap().unwrap(), &key).unwrap();
            let set = m
                .entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Chunk { id, len } => Some((id.0, u64::from(*len))),
                    Entry::Zero { .. } => None,
                })
                .collect();
            chunks.insert(*id, set);
        }
        let (mut stored, mut packs, mut entries) = (HashMap::new(), 0, 0);
        for shard in backend.list("packs").unwrap() {
            for name in backend.list(&format!("packs/{shard}")).unwrap() {
                let key = format!("packs/{shard}/{name}");
                let f = backend.open(&key).unwrap();
                for e in imgstore_store::pack::read_footer(f.as_ref(), &key).unwrap() {
                    stored.insert(e.id.0, u64::from(e.stored_len));
                    entries += 1;
                }
                packs += 1;
            }
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

#[test]
fn cached_figures_follow_other_hosts_puts_rm_and_gc() {
    let env = Env::new();
    env.put("lab/app:v1", &env.file("a", &common::image(900_000, 5)));
    let before = json(&env, "a", &["stats"]);
    assert!(env.path("index-a").join("report-cache.bin").exists());
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
    // A damaged cache is rebuilt, not trusted.
    std::fs::write(env.path("index-a").join("report-cache.bin"), b"garbage").unwrap();
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

    // Prometheus: HELP and TYPE before every family, valid names and values.
    let text = std::fs::read_to_string(&prom).unwrap();
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
            let name = series.split('{').next().unwrap();
            assert!(typed.contains(name), "{name} sampled before its TYPE");
            assert!(name.starts_with("imgstore_"));
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            samples.insert(series.to_string(), value.parse::<f64>().unwrap());
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
        samples["imgstore_name_exclusive_bytes{name=\"lab/app\"}"],
        u(row(&du, "lab/app"), "exclusive_stored_bytes") as f64
    );
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

/// Writes a store of `n` synthetic images straight into the store's files
/// (a put per image through the binary would take hours): 50 commits per
/// name, each image 64 chunks of 4 KiB, each commit replacing 6 chunks of
/// the previous one and writing them in a pack of its own, as a put would.
fn synthetic_store(env: &Env, n: usize) {
    use imgstore_store::codec::Codec;
    use imgstore_store::pack::PackBuilder;
    use imgstore_store::refs::{Added, RefRecord, TagRef};
    use imgstore_store::Digest;
    let root = env.store();
    let write = |key: &str, data: &[u8]| {
        let p = root.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    let mut seed = 0u64;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 0..n {
        let (name, commit) = (format!("lab/app{}", i / 50), i % 50);
        let mut pack = PackBuilder::new();
        let fresh = if commit == 0 {
            0..64
        } else {
            (commit * 6 % 58)..(commit * 6 % 58 + 6)
        };
        if commit == 0 {
            chunks = vec![Vec::new(); 64];
        }
        for slot in fresh {
            seed += 1;
            chunks[slot] = common::random(4096, seed);
            pack.add(Digest::of(&chunks[slot]), 4096, Codec::Raw, &chunks[slot]);
        }
        let added = pack.len() as u64;
        let (pack_id, bytes, _) = pack.finish();
        write(&imgstore_store::pack::key(&pack_id), &bytes);
        let id = ImageId(Digest::of(&chunks.concat()));
        let m = Manifest {
            size: 64 * 4096,
            id,
            entries: chunks
                .iter()
                .map(|c| Entry::Chunk {
                    id: Digest::of(c),
                    len: 4096,
                })
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
                raw_bytes: added * 4096,
                stored_bytes: added * 4096,
            },
        };
        let t = TagRef {
            name,
            tag: format!("c{commit}"),
        };
        write(&t.key(), &record.to_bytes());
    }
}

/// Times `stats` and `du` on 1,000 (or IMGSTORE_SCALE_IMAGES) synthetic
/// images, first with no report cache, then with it. For docs/PERFORMANCE.md:
/// `IMGSTORE_SCALE_IMAGES=10000 cargo test -j1 --test tests reports::at_scale -- --ignored --nocapture`
#[test]
#[ignore]
fn at_scale() {
    let n: usize = std::env::var("IMGSTORE_SCALE_IMAGES").map_or(1000, |v| v.parse().unwrap());
    let env = Env::new();
    let started = std::time::Instant::now();
    synthetic_store(&env, n);
    eprintln!(
        "wrote {n} synthetic images in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let time = |args: &[&str]| {
        let t = std::time::Instant::now();
        let v = json(&env, "a", args);
        (t.elapsed().as_secs_f64(), v)
    };
    let (cold, s) = time(&["stats"]);
    assert_eq!(u(&s, "images"), n as u64);
    let (warm, _) = time(&["stats"]);
    let (du, d) = time(&["du"]);
    assert_eq!(d["rows"].as_array().unwrap().len(), n.div_ceil(50));
    let (du_tag, _) = time(&["du", "--by", "tag"]);
    let (hist, _) = time(&["history", "lab/app0"]);
    eprintln!(
        "{n} images, {} chunks, {} packs: stats {cold:.3}s without cache, {warm:.3}s with; \
         du {du:.3}s; du --by tag {du_tag:.3}s; history {hist:.3}s",
        u(&s, "chunks"),
        u(&s, "packs")
    );
}
