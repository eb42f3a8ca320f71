//! The HTML report: one self-contained file, inline CSS and inline SVG
//! charts, no scripts and no external resources (it is mailed and archived).

use std::fmt::Write as _;

use imgstore_store::stats::{DuReport, GrowthPoint, HistoryReport, StatsReport};

use crate::output;

/// What the page shows.
pub struct Input<'a> {
    pub store: &'a str,
    pub stats: &'a StatsReport,
    pub stats_rows: &'a [(&'static str, String, &'static str)],
    pub du: &'a DuReport,
    pub histories: &'a [HistoryReport],
    pub growth: &'a [GrowthPoint],
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 720.0;
const H: f64 = 220.0;
const LEFT: f64 = 80.0;
const BOTTOM: f64 = 24.0;
/// Most bars a chart draws (the newest or the largest).
const MAX_BARS: usize = 60;

fn svg_open(out: &mut String, title: &str, height: f64) {
    let _ = write!(
        out,
        r#"<svg width="{W}" height="{height}" viewBox="0 0 {W} {height}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = esc(title)
    );
}

/// Horizontal bars: one labelled bar per (label, value).
fn hbars(title: &str, items: &[(String, u64)]) -> String {
    let mut out = String::new();
    let row = 22.0;
    let height = row * items.len().max(1) as f64 + 10.0;
    svg_open(&mut out, title, height);
    let max = items.iter().map(|i| i.1).max().unwrap_or(0).max(1) as f64;
    let left = 200.0;
    for (i, (label, v)) in items.iter().enumerate() {
        let y = 5.0 + i as f64 * row;
        let w = (W - left - 110.0) * *v as f64 / max;
        let _ = write!(
            out,
            r#"<text x="{x}" y="{ty}" text-anchor="end">{l}</text><rect x="{left}" y="{y}" width="{w:.1}" height="16" class="bar"/><text x="{vx:.1}" y="{ty}">{s}</text>"#,
            x = left - 6.0,
            ty = y + 12.0,
            l = esc(label),
            vx = left + w + 6.0,
            s = output::size(*v),
        );
    }
    out.push_str("</svg>");
    out
}

/// Vertical bars over a sequence (e.g. commits in order).
fn vbars(title: &str, items: &[(String, u64)]) -> String {
    let mut out = String::new();
    svg_open(&mut out, title, H);
    let max = items.iter().map(|i| i.1).max().unwrap_or(0).max(1);
    axis(&mut out, max);
    let n = items.len().max(1) as f64;
    let slot = (W - LEFT - 10.0) / n;
    for (i, (label, v)) in items.iter().enumerate() {
        let h = (H - BOTTOM - 10.0) * *v as f64 / max as f64;
        let _ = write!(
            out,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" class="bar"><title>{l}: {s}</title></rect>"#,
            x = LEFT + i as f64 * slot + slot * 0.1,
            y = H - BOTTOM - h,
            w = slot * 0.8,
            l = esc(label),
            s = output::size(*v),
        );
    }
    out.push_str("</svg>");
    out
}

/// Y axis with 0 and the maximum.
fn axis(out: &mut String, max: u64) {
    let _ = write!(
        out,
        r#"<line x1="{LEFT}" y1="10" x2="{LEFT}" y2="{b}" class="axis"/><line x1="{LEFT}" y1="{b}" x2="{W}" y2="{b}" class="axis"/><text x="{tx}" y="14" text-anchor="end">{m}</text><text x="{tx}" y="{b}" text-anchor="end">0</text>"#,
        b = H - BOTTOM,
        tx = LEFT - 4.0,
        m = output::size(max),
    );
}

/// A line over time: stored bytes after each put and gc run.
fn growth_chart(points: &[GrowthPoint]) -> String {
    let mut out = String::new();
    svg_open(
        &mut out,
        "store growth: stored bytes over time (puts add, gc frees)",
        H,
    );
    let max = points
        .iter()
        .map(|p| p.cumulative_stored_bytes)
        .max()
        .unwrap_or(0)
        .max(1);
    axis(&mut out, max);
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let span = (last.time - first.time).max(1) as f64;
        let mut path = String::new();
        for p in points {
            let x = LEFT + (W - LEFT - 10.0) * (p.time - first.time) as f64 / span;
            let y = H - BOTTOM - (H - BOTTOM - 10.0) * p.cumulative_stored_bytes as f64 / max as f64;
            let _ = write!(path, "{}{x:.1},{y:.1} ", if path.is_empty() { "M" } else { "L" });
        }
        let _ = write!(
            out,
            r#"<path d="{path}" class="line"/><text x="{LEFT}" y="{b}">{f}</text><text x="{W}" y="{b}" text-anchor="end">{l}</text>"#,
            b = H - 6.0,
            f = output::date(first.time),
            l = output::date(last.time),
        );
    }
    out.push_str("</svg>");
    out
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

const CSS: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}\
th:first-child,td:first-child{text-align:left}\
.summary th:last-child,.summary td:last-child{text-align:left}\
svg{display:block;margin:1em 0;font-size:11px}.bar{fill:#4a7ab5}.line{fill:none;stroke:#4a7ab5;stroke-width:2}\
.axis{stroke:#888}";

/// The whole page.
pub fn page(i: &Input) -> String {
    let s = i.stats;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>imgstore report: {st}</title><style>{CSS}</style></head><body><h1>imgstore report</h1><p>Store <code>{st}</code>.</p>",
        st = esc(i.store)
    );
    out.push_str("<h2>Summary</h2>");
    let rows: Vec<Vec<String>> = i
        .stats_rows
        .iter()
        .map(|(k, v, m)| vec![k.to_string(), v.clone(), m.to_string()])
        .collect();
    // Its last column is prose: left-aligned.
    out.push_str("<div class=\"summary\">");
    table(&mut out, &["figure", "value", "meaning"], &rows);
    out.push_str("</div>");

    out.push_str("<h2>Stored vs logical</h2>");
    out.push_str(&hbars(
        "stored vs logical",
        &[
            ("logical".into(), s.logical_bytes),
            ("unique (after dedup)".into(), s.unique_bytes),
            ("stored live chunks".into(), s.live_stored_bytes),
            ("stored on disk".into(), s.stored_bytes),
            ("garbage".into(), s.garbage_bytes),
        ],
    ));

    out.push_str("<h2>Store growth</h2>");
    out.push_str(&growth_chart(i.growth));

    out.push_str(
        "<h2>Cost per name</h2><p>Exclusive: what deleting every tag of the name (and a gc) would free.</p>",
    );
    let mut by_cost: Vec<(String, u64)> =
        i.du.rows
            .iter()
            .map(|r| (r.group.clone(), r.exclusive_stored_bytes))
            .collect();
    by_cost.sort_by_key(|b| std::cmp::Reverse(b.1));
    by_cost.truncate(MAX_BARS);
    out.push_str(&hbars("exclusive stored bytes per name", &by_cost));
    let mut rows: Vec<Vec<String>> =
        i.du.rows
            .iter()
            .chain([&i.du.total])
            .map(super::report::du_cells)
            .collect();
    if i.du.rows.len() <= 1 {
        rows.pop();
    }
    table(
        &mut out,
        &[
            "name",
            "refs",
            "logical",
            "stored",
            "shared",
            "exclusive",
            "frees",
        ],
        &rows,
    );

    out.push_str("<h2>History</h2>");
    for h in i.histories {
        let _ = write!(out, "<h3>{}</h3>", esc(&h.name));
        let bars: Vec<(String, u64)> = h
            .commits
            .iter()
            .rev()
            .take(MAX_BARS)
            .rev()
            .map(|c| (c.tag.clone(), c.added_stored_bytes))
            .collect();
        out.push_str(&vbars(
            &format!("stored bytes each put of {} added", h.name),
            &bars,
        ));
        let rows: Vec<Vec<String>> = h
            .commits
            .iter()
            .map(|c| {
                vec![
                    output::date(c.created),
                    c.tag.clone(),
                    output::size(c.size),
                    output::size(c.added_stored_bytes),
                    output::size(c.exclusive_stored_bytes),
                ]
            })
            .collect();
        table(
            &mut out,
            &["date", "tag", "size", "added", "exclusive now"],
            &rows,
        );
    }
    out.push_str("</body></html>\n");
    out
}
