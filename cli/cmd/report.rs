//! Storage reports: stats, du, history, diff, and `report` (HTML file or
//! Prometheus textfile). The figures come from `imgstore_store::stats`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use imgstore_store::stats::{DuReport, DuRow, GroupBy, HistoryReport, Snapshot, StatsReport};
use imgstore_store::{ImageRef, Store};
use serde::Serialize;

use super::{html, UsageError};
use crate::args::{DiffArgs, DuArgs, Global, HistoryArgs, ReportArgs};
use crate::output;
use crate::progress::Bar;

/// The refs and this host's report view, brought up to date (a bar while
/// a new host folds in the images it has not seen).
fn snapshot<'s>(store: &'s Store, g: &Global) -> Result<Snapshot<'s>> {
    Ok(store.snapshot(&Bar::new(g.quiet || g.json))?)
}

pub fn stats(g: &Global) -> Result<()> {
    let store = super::open(g)?;
    let r = with_census(&store, snapshot(&store, g)?.stats()?)?;
    if g.json {
        return output::json(&r);
    }
    let mut t = output::table(&["FIGURE", "VALUE", "MEANING"]);
    for (k, v, m) in stats_rows(&r) {
        t.add_row(vec![k.to_string(), v, m.to_string()]);
    }
    crate::out!("{t}");
    Ok(())
}

/// `r` with the store's object count and mean object size.
fn with_census(store: &imgstore_store::Store, mut r: StatsReport) -> Result<StatsReport> {
    let (objects, bytes) = store.object_census()?;
    r.objects = objects;
    r.mean_object_size = bytes.checked_div(objects).unwrap_or(0);
    Ok(r)
}

/// (figure, value, one-line meaning) for the table and the HTML report.
pub fn stats_rows(r: &StatsReport) -> Vec<(&'static str, String, &'static str)> {
    let s = output::size;
    vec![
        (
            "logical",
            s(r.logical_bytes),
            "sum of the sizes of all refs' images (and untagged pinned ones)",
        ),
        (
            "unique",
            s(r.unique_bytes),
            "raw bytes of distinct chunks (after dedup)",
        ),
        (
            "stored (live chunks)",
            s(r.live_stored_bytes),
            "those chunks compressed, one copy each",
        ),
        ("stored (on disk)", s(r.stored_bytes), "all pack files"),
        ("dedup ratio", format!("{:.2}", r.dedup_ratio), "logical / unique"),
        (
            "compression ratio",
            format!("{:.2}", r.compression_ratio),
            "unique / stored live chunks",
        ),
        (
            "total ratio",
            format!("{:.2}", r.total_ratio),
            "logical / stored on disk",
        ),
        ("refs", r.refs.to_string(), "name:tag"),
        (
            "images",
            r.images.to_string(),
            "distinct images (tagged or pinned)",
        ),
        ("pins", r.pins.to_string(), "pinned images (`imgstore ls --pins`)"),
        (
            "held only by pins",
            s(r.pinned_only_stored_bytes),
            "stored bytes only pinned images use",
        ),
        (
            "archived",
            format!("{} ({})", r.archived_images, s(r.archived_logical_bytes)),
            "images in the archive tier (`imgstore archive`): rebuilt at get",
        ),
        ("names", r.names.to_string(), "distinct names"),
        ("chunks", r.chunks.to_string(), "distinct chunks live images use"),
        ("packs", r.packs.to_string(), "pack files"),
        (
            "pack fill",
            format!("{:.1}%", r.pack_fill * 100.0),
            "pack bytes / (packs x pack size)",
        ),
        (
            "garbage",
            s(r.garbage_bytes),
            "waiting for gc: condemned + unreferenced",
        ),
        (
            "  condemned",
            s(r.condemned_bytes),
            "packs the pending gc plan deletes after its grace period",
        ),
        (
            "  unreferenced",
            s(r.unreferenced_bytes),
            "chunks no image uses, not yet condemned",
        ),
        (
            "duplicates",
            s(r.duplicate_bytes),
            "second copies of live chunks (concurrent puts)",
        ),
        (
            "pack overhead",
            s(r.overhead_bytes),
            "56 B per chunk (footer entry), 80 B per pack",
        ),
        (
            "index",
            s(r.index_bytes),
            "this host's local index and report view",
        ),
        ("last put", output::date(r.last_put), "newest ref's creation time"),
        (
            "objects",
            r.objects.to_string(),
            "objects (files) of every kind in the store",
        ),
        (
            "mean object size",
            s(r.mean_object_size),
            "their mean size: object storage bills each request on one",
        ),
    ]
}

/// Splits `--by label KEY` from `--by name lab/app`: clap takes up to two
/// values for --by, and a second value after `name` or `tag` is a ref.
fn group_by(a: &DuArgs) -> Result<(GroupBy, Vec<String>)> {
    let mut refs = a.refs.clone();
    let by = match a.by.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["name"] => GroupBy::Name,
        ["tag"] => GroupBy::Tag,
        ["name", r] => {
            refs.push(r.to_string());
            GroupBy::Name
        }
        ["tag", r] => {
            refs.push(r.to_string());
            GroupBy::Tag
        }
        ["label", k] => GroupBy::Label(k.to_string()),
        ["label"] => return Err(UsageError("--by label needs a KEY: --by label owner".into()).into()),
        [other, ..] => {
            return Err(UsageError(format!("--by {other}: expected name, tag or label KEY")).into())
        }
    };
    Ok((by, refs))
}

pub fn du(g: &Global, a: &DuArgs) -> Result<()> {
    let (by, selectors) = group_by(a)?;
    let store = super::open(g)?;
    let snap = snapshot(&store, g)?;
    let selected = snap.select(&selectors)?;
    let r = snap.du(&selected, &by)?;
    if g.json {
        return output::json(&r);
    }
    crate::out!("{}", du_table(&r));
    Ok(())
}

/// The cells of a `du` row, for the table and the HTML report.
pub fn du_cells(d: &DuRow) -> Vec<String> {
    vec![
        d.group.clone(),
        d.refs.to_string(),
        output::size(d.logical_bytes),
        output::size(d.unique_stored_bytes),
        output::size(d.shared_stored_bytes),
        output::size(d.exclusive_stored_bytes),
        output::size(d.frees_bytes),
    ]
}

fn du_table(r: &DuReport) -> comfy_table::Table {
    let mut t = output::table(&[
        "GROUP",
        "REFS",
        "LOGICAL",
        "STORED",
        "SHARED",
        "EXCLUSIVE",
        "FREES",
    ]);
    let row = du_cells;
    for d in &r.rows {
        t.add_row(row(d));
    }
    if r.rows.len() > 1 {
        t.add_row(row(&r.total));
    }
    // EXCLUSIVE of this row: bytes held only by pins.
    if let Some(p) = &r.pinned {
        t.add_row(row(p));
    }
    t
}

pub fn history(g: &Global, a: &HistoryArgs) -> Result<()> {
    imgstore_store::refs::check_name(&a.name)?;
    let store = super::open(g)?;
    let r = snapshot(&store, g)?.history(&a.name)?;
    if g.json {
        return output::json(&r);
    }
    crate::out!("{}", history_table(&r));
    Ok(())
}

fn history_table(r: &HistoryReport) -> comfy_table::Table {
    // The tier column only where some commit is archived.
    let tiers = r.commits.iter().any(|c| c.tier != "bytes");
    let mut head = vec!["DATE", "TAG", "IMAGE", "SIZE", "ADDED", "EXCLUSIVE NOW"];
    if tiers {
        head.push("TIER");
    }
    let mut t = output::table(&head);
    for c in &r.commits {
        let mut row = vec![
            output::date(c.created),
            c.tag.clone(),
            output::short_id(&c.image),
            output::size(c.size),
            output::size(c.added_stored_bytes),
            output::size(c.exclusive_stored_bytes),
        ];
        if tiers {
            row.push(c.tier.to_string());
        }
        t.add_row(row);
    }
    t
}

pub fn diff(g: &Global, a: &DiffArgs) -> Result<()> {
    let ra = ImageRef::parse(&a.a)?;
    let rb = ImageRef::parse(&a.b)?;
    let store = super::open(g)?;
    let (ra, rb) = (store.resolve(&ra)?, store.resolve(&rb)?);
    let (ia, ib) = (ra.id, rb.id);
    let defs = a
        .deffile
        .then(|| super::find::deffile_diff(&store, (&ra, &a.a), (&rb, &a.b)))
        .transpose()?;
    let snap = snapshot(&store, g)?;
    let mut r = store.diff(&ia, &ib, &snap)?;
    r.a = a.a.clone();
    r.b = a.b.clone();
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        if let (Some(d), serde_json::Value::Object(m)) = (&defs, &mut v) {
            m.insert("deffile".into(), serde_json::to_value(d)?);
        }
        return output::json(&v);
    }
    let mut t = output::table(&["", "CHUNKS", "BYTES", "STORED"]);
    for (k, c, b, s) in [
        (
            "in common",
            r.common_chunks,
            r.common_bytes,
            r.common_stored_bytes,
        ),
        (
            &format!("only in {}", a.a)[..],
            r.only_a_chunks,
            r.only_a_bytes,
            r.only_a_stored_bytes,
        ),
        (
            &format!("only in {}", a.b)[..],
            r.only_b_chunks,
            r.only_b_bytes,
            r.only_b_stored_bytes,
        ),
    ] {
        t.add_row(vec![
            k.to_string(),
            c.to_string(),
            output::size(b),
            output::size(s),
        ]);
    }
    crate::out!("{t}");
    if let Some(d) = &defs {
        super::find::print_deffile_diff(d, &a.a, &a.b)?;
    }
    Ok(())
}

/// What `report --json` prints: where the files went and the figures.
#[derive(Serialize)]
struct ReportDone {
    html: Option<String>,
    prometheus: Option<String>,
    stats: StatsReport,
}

pub fn report(g: &Global, a: &ReportArgs) -> Result<()> {
    let store = super::open(g)?;
    let snap = snapshot(&store, g)?;
    let stats = with_census(&store, snap.stats()?)?;
    let du = snap.du_all()?;
    if let Some(path) = &a.prometheus {
        write_atomic(path, prometheus(&store.location(), &stats, &du).as_bytes())?;
    }
    if let Some(path) = &a.html {
        let events = store.events(None)?;
        let mut names: Vec<&str> = snap.refs().iter().map(|(t, _)| t.name.as_str()).collect();
        names.dedup();
        let mut histories = Vec::new();
        for n in names {
            histories.push(snap.history(n)?);
        }
        let page = html::page(&html::Input {
            store: &store.location(),
            stats: &stats,
            stats_rows: &stats_rows(&stats),
            du: &du,
            histories: &histories,
            growth: &imgstore_store::stats::growth(&events),
        });
        write_atomic(path, page.as_bytes())?;
    }
    if g.json {
        return output::json(&ReportDone {
            html: a.html.as_ref().map(|p| p.display().to_string()),
            prometheus: a.prometheus.as_ref().map(|p| p.display().to_string()),
            stats,
        });
    }
    if !g.quiet {
        for p in a.html.iter().chain(&a.prometheus) {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

/// Writes `data` to a temporary file beside `path`, readable by all (a
/// node_exporter runs as another user), then renames it into place, so a
/// reader never sees half a file. The temporary name does not end in
/// `.prom`, so the textfile collector ignores it.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".imgstore-report-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(data)
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
        })
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A per-name metric: name suffix, help, the figure of a du row.
type NameMetric = (&'static str, &'static str, fn(&DuRow) -> u64);

/// The node_exporter textfile: HELP and TYPE before each metric family,
/// base units (bytes, seconds), gauges.
/// Every sample carries the store's path as label `store`, so one
/// node_exporter can collect the files of several stores.
pub fn prometheus(root: &str, s: &StatsReport, du: &DuReport) -> String {
    let store_label = format!("store=\"{}\"", label(root));
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let store: [(&str, &str, f64); 17] = [
        (
            "logical_bytes",
            "Sum of the sizes of all refs' images.",
            s.logical_bytes as f64,
        ),
        (
            "unique_bytes",
            "Raw bytes of the distinct chunks live images use.",
            s.unique_bytes as f64,
        ),
        (
            "live_stored_bytes",
            "Compressed bytes of the live chunks, one copy each.",
            s.live_stored_bytes as f64,
        ),
        (
            "stored_bytes",
            "Bytes of all pack files on disk.",
            s.stored_bytes as f64,
        ),
        (
            "garbage_bytes",
            "Bytes waiting for gc: condemned packs plus unreferenced chunks.",
            s.garbage_bytes as f64,
        ),
        (
            "condemned_bytes",
            "Bytes of packs the pending gc plan will delete.",
            s.condemned_bytes as f64,
        ),
        (
            "duplicate_bytes",
            "Bytes of second copies of live chunks.",
            s.duplicate_bytes as f64,
        ),
        (
            "pack_overhead_bytes",
            "Pack framing bytes of live chunks and packs.",
            s.overhead_bytes as f64,
        ),
        (
            "index_bytes",
            "Bytes of this host's local index.",
            s.index_bytes as f64,
        ),
        ("refs", "Number of refs (name:tag).", s.refs as f64),
        ("images", "Number of distinct images.", s.images as f64),
        ("names", "Number of distinct names.", s.names as f64),
        ("chunks", "Number of distinct live chunks.", s.chunks as f64),
        ("packs", "Number of pack files.", s.packs as f64),
        ("dedup_ratio", "Logical bytes / unique bytes.", s.dedup_ratio),
        (
            "compression_ratio",
            "Unique bytes / live stored bytes.",
            s.compression_ratio,
        ),
        (
            "last_put_timestamp_seconds",
            "Creation time of the newest ref, seconds since the epoch.",
            s.last_put as f64,
        ),
    ];
    for (name, help, v) in store {
        gauge(
            &format!("imgstore_{name}"),
            help,
            &[(format!("{{{store_label}}}"), v)],
        );
    }
    let per = |f: fn(&DuRow) -> u64| -> Vec<(String, f64)> {
        du.rows
            .iter()
            .map(|r| {
                let series = format!("{{{store_label},name=\"{}\"}}", label(&r.group));
                (series, f(r) as f64)
            })
            .collect()
    };
    let names: [NameMetric; 5] = [
        ("refs", "Number of refs of this name.", |r| r.refs),
        (
            "logical_bytes",
            "Sum of the sizes of this name's refs' images.",
            |r| r.logical_bytes,
        ),
        (
            "stored_bytes",
            "Stored bytes of the distinct chunks this name's images use.",
            |r| r.unique_stored_bytes,
        ),
        (
            "shared_bytes",
            "Stored bytes this name's images share with other names.",
            |r| r.shared_stored_bytes,
        ),
        (
            "exclusive_bytes",
            "Stored bytes only this name's images use: what deleting the name frees.",
            |r| r.exclusive_stored_bytes,
        ),
    ];
    for (name, help, f) in names {
        gauge(&format!("imgstore_name_{name}"), help, &per(f));
    }
    out
}
