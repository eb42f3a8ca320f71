//! Chunk-size study: how much a history of container images dedups at
//! different average chunk sizes, and what the chunk metadata costs.
//!
//! ```text
//! cargo bench --bench chunksize -- [--sizes 16,32,64,128] [--seed N] [--zstd LEVEL] IMAGE...
//! ```
//!
//! IMAGEs are given in commit order (oldest first). Each one is read whole
//! into memory, cut with [`imgstore_store::chunker::Chunker`] at every
//! requested average size (KiB), and every chunk is hashed with BLAKE3. Images
//! are grouped by format (squashfs / ext2-3-4 / other, from their magic
//! bytes), and each group is its own history: a chunk counts as "added" by a
//! commit when no earlier image of the same format, nor an earlier place in
//! the same image, had it. Output is markdown on stdout; progress on stderr.
//!
//! Metadata is modelled, not measured: a manifest entry costs
//! [`MANIFEST_ENTRY_BYTES`] per chunk of every image, an index entry
//! [`INDEX_ENTRY_BYTES`] per unique chunk. Each unique chunk is also
//! compressed on its own with zstd (`--zstd LEVEL`, default 3, 0 = skip), as
//! a store that compresses chunks one by one would keep it (never larger than
//! the raw chunk).
//!
//! With no IMAGE (as under `cargo test --benches`) it prints its usage and
//! exits 0.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use imgstore_store::chunker::{Chunker, ChunkerParams};

/// Modelled manifest cost of one chunk reference (hash, length, offset).
const MANIFEST_ENTRY_BYTES: u64 = 41;
/// Modelled index cost of one unique chunk (hash -> pack, offset, length).
const INDEX_ENTRY_BYTES: u64 = 60;
/// Average chunk sizes studied when `--sizes` is not given, in KiB.
const DEFAULT_SIZES_KIB: [u32; 4] = [16, 32, 64, 128];

const USAGE: &str = "usage: chunksize [--sizes 16,32,64,128] [--seed N] [--zstd LEVEL] IMAGE... \
                     (images in commit order, oldest first)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Format {
    Squashfs,
    Ext,
    Other,
}

impl Format {
    fn detect(data: &[u8]) -> Format {
        if data.len() >= 4 && &data[..4] == b"hsqs" {
            Format::Squashfs
        } else if data.len() >= 1082 && data[1080..1082] == [0x53, 0xEF] {
            Format::Ext
        } else {
            Format::Other
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Squashfs => "squashfs (SIF payload)",
            Format::Ext => "ext2/3/4",
            Format::Other => "other (unrecognised)",
        }
    }
}

/// What one image added to one format's history at one chunk size.
struct CommitStat {
    name: String,
    size: u64,
    chunks: u64,
    added_bytes: u64,
    added_chunks: u64,
    /// Sum over the added chunks of min(zstd size, raw size).
    added_zstd: u64,
}

/// One format's history cut at one average chunk size.
struct Series {
    avg: u32,
    chunker: Chunker,
    seen: HashSet<[u8; 32]>,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    commits: Vec<CommitStat>,
    secs: f64,
}

impl Series {
    fn add_image(&mut self, name: &str, data: &[u8]) {
        let start = Instant::now();
        let mut stat = CommitStat {
            name: name.to_string(),
            size: data.len() as u64,
            chunks: 0,
            added_bytes: 0,
            added_chunks: 0,
            added_zstd: 0,
        };
        for range in self.chunker.chunks(data) {
            let len = range.len() as u64;
            let chunk = &data[range];
            let hash = blake3::hash(chunk);
            stat.chunks += 1;
            if self.seen.insert(*hash.as_bytes()) {
                stat.added_bytes += len;
                stat.added_chunks += 1;
                if let Some(c) = self.compressor.as_mut() {
                    let z = c.compress(chunk).map_or(len, |v| v.len() as u64);
                    stat.added_zstd += z.min(len);
                }
            }
        }
        self.secs += start.elapsed().as_secs_f64();
        self.commits.push(stat);
    }

    fn logical(&self) -> u64 {
        self.commits.iter().map(|c| c.size).sum()
    }
    fn unique(&self) -> u64 {
        self.commits.iter().map(|c| c.added_bytes).sum()
    }
    fn unique_zstd(&self) -> u64 {
        self.commits.iter().map(|c| c.added_zstd).sum()
    }
    fn chunks(&self) -> u64 {
        self.commits.iter().map(|c| c.chunks).sum()
    }
    fn unique_chunks(&self) -> u64 {
        self.commits.iter().map(|c| c.added_chunks).sum()
    }
    fn manifest_bytes(&self) -> u64 {
        self.chunks() * MANIFEST_ENTRY_BYTES
    }
    fn index_bytes(&self) -> u64 {
        self.unique_chunks() * INDEX_ENTRY_BYTES
    }
}

struct History {
    format: Format,
    series: Vec<Series>,
    zstd_level: i32,
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1024.0 * 1024.0);
    if m >= 10240.0 {
        format!("{:.2} GiB", m / 1024.0)
    } else {
        format!("{m:.1} MiB")
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn report(history: &History) -> String {
    let mut out = String::new();
    let first = &history.series[0];
    let _ = writeln!(
        out,
        "### {} — {} images, {} logical\n",
        history.format.name(),
        first.commits.len(),
        mib(first.logical())
    );
    let _ = writeln!(
        out,
        "| avg chunk | chunks (all images) | unique chunks | mean chunk | unique bytes | dedup | \
         median added per later commit | manifests | index | metadata % of unique | dedup incl. metadata | \
         unique after zstd-{z} | logical / (zstd unique + metadata) | MB/s (chunk+hash+zstd) |",
        z = history.zstd_level
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for s in &history.series {
        let later = &s.commits[1.min(s.commits.len())..];
        let mut added: Vec<f64> = later.iter().map(|c| c.added_bytes as f64).collect();
        let mut added_pct: Vec<f64> = later.iter().map(|c| pct(c.added_bytes, c.size)).collect();
        let median_added = match (median(&mut added), median(&mut added_pct)) {
            (Some(b), Some(p)) => format!("{} ({p:.1}%)", mib(b as u64)),
            _ => "—".to_string(),
        };
        let meta = s.manifest_bytes() + s.index_bytes();
        let unique = s.unique();
        let (zstd_unique, stored_ratio) = if history.zstd_level == 0 {
            ("—".to_string(), "—".to_string())
        } else {
            let z = s.unique_zstd();
            (
                format!("{} ({:.0}%)", mib(z), pct(z, unique)),
                format!("{:.2}x", s.logical() as f64 / (z + meta).max(1) as f64),
            )
        };
        let _ = writeln!(
            out,
            "| {} KiB | {} | {} | {:.1} KiB | {} | {:.2}x | {} | {} | {} | {:.3}% | {:.2}x | {} | {} | {:.0} |",
            s.avg / 1024,
            s.chunks(),
            s.unique_chunks(),
            s.logical() as f64 / s.chunks().max(1) as f64 / 1024.0,
            mib(unique),
            s.logical() as f64 / unique.max(1) as f64,
            median_added,
            mib(s.manifest_bytes()),
            mib(s.index_bytes()),
            pct(meta, unique),
            s.logical() as f64 / (unique + meta).max(1) as f64,
            zstd_unique,
            stored_ratio,
            s.logical() as f64 / 1e6 / s.secs.max(1e-9),
        );
    }
    let _ = writeln!(out);

    let _ = write!(out, "| commit | image size |");
    for s in &history.series {
        let _ = write!(out, " added @{} KiB |", s.avg / 1024);
    }
    let _ = write!(out, "\n|---|---:|");
    for _ in &history.series {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
    for (i, c) in first.commits.iter().enumerate() {
        let _ = write!(out, "| {} | {} |", c.name, mib(c.size));
        for s in &history.series {
            let ci = &s.commits[i];
            let _ = write!(
                out,
                " {} ({:.1}%) |",
                mib(ci.added_bytes),
                pct(ci.added_bytes, ci.size)
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
    out
}

struct Args {
    sizes_kib: Vec<u32>,
    seed: u64,
    zstd_level: i32,
    images: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sizes_kib: DEFAULT_SIZES_KIB.to_vec(),
        seed: 0,
        zstd_level: 3,
        images: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo appends --bench when it runs a harness = false bench.
            "--bench" | "--" => {}
            "-h" | "--help" => return Err(String::new()),
            "--sizes" => {
                let v = it.next().ok_or("--sizes needs a value")?;
                args.sizes_kib = v
                    .split(',')
                    .map(|s| s.trim().parse::<u32>().map_err(|e| format!("--sizes {s:?}: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--seed" => {
                let v = it.next().ok_or("--seed needs a value")?;
                args.seed = v.parse().map_err(|e| format!("--seed {v:?}: {e}"))?;
            }
            "--zstd" => {
                let v = it.next().ok_or("--zstd needs a value")?;
                args.zstd_level = v.parse().map_err(|e| format!("--zstd {v:?}: {e}"))?;
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => args.images.push(arg),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("chunksize: {msg}");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    if args.images.is_empty() {
        eprintln!("{USAGE}\nchunksize: no images given, nothing to measure");
        return ExitCode::SUCCESS;
    }
    let mut chunkers = Vec::new();
    for &kib in &args.sizes_kib {
        let params = ChunkerParams::with_avg(kib * 1024, args.seed);
        match Chunker::new(params) {
            Ok(c) => chunkers.push(c),
            Err(e) => {
                eprintln!("chunksize: average {kib} KiB: {e}");
                return ExitCode::from(2);
            }
        }
    }

    let mut histories: Vec<History> = Vec::new();
    let total_start = Instant::now();
    for path in &args.images {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("chunksize: {path}: {e}");
                return ExitCode::from(1);
            }
        };
        let format = Format::detect(&data);
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.clone());
        let history = match histories.iter().position(|h| h.format == format) {
            Some(i) => &mut histories[i],
            None => {
                let mut series = Vec::new();
                for c in &chunkers {
                    let compressor = match args.zstd_level {
                        0 => None,
                        level => match zstd::bulk::Compressor::new(level) {
                            Ok(z) => Some(z),
                            Err(e) => {
                                eprintln!("chunksize: zstd level {level}: {e}");
                                return ExitCode::from(2);
                            }
                        },
                    };
                    series.push(Series {
                        avg: c.params().avg,
                        chunker: c.clone(),
                        seen: HashSet::new(),
                        compressor,
                        commits: Vec::new(),
                        secs: 0.0,
                    });
                }
                histories.push(History {
                    format,
                    zstd_level: args.zstd_level,
                    series,
                });
                histories.last_mut().expect("just pushed")
            }
        };
        for s in &mut history.series {
            s.add_image(&name, &data);
        }
        eprintln!(
            "chunksize: {name}: {} as {:?} done ({:.0}s elapsed)",
            mib(data.len() as u64),
            format,
            total_start.elapsed().as_secs_f64()
        );
    }
    histories.sort_by_key(|h| h.format);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Chunker: FastCDC v2020 via imgstore_store::chunker, min/avg/max = avg/4, avg, 4*avg, seed {}; \
         BLAKE3 per chunk. Metadata model: {MANIFEST_ENTRY_BYTES} B per manifest entry (every chunk of \
         every image), {INDEX_ENTRY_BYTES} B per index entry (unique chunk). \"added\" = bytes of chunks \
         not seen in any earlier image of the same format (nor earlier in the same image). \
         zstd: {} (each unique chunk compressed alone, kept raw when that is smaller).\n",
        args.seed,
        if args.zstd_level == 0 {
            "off".to_string()
        } else {
            format!("level {}", args.zstd_level)
        }
    );
    for h in &histories {
        out.push_str(&report(h));
    }
    print!("{out}");
    ExitCode::SUCCESS
}
