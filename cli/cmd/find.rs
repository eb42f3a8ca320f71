//! `imgstore find` (search refs by definition file, labels, name and date)
//! and the definition-file part of `imgstore diff --deffile`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use imgstore_store::search::{DeffileSource, Query};
use imgstore_store::{Resolved, Store};
use serde::Serialize;

use super::UsageError;
use crate::args::{FindArgs, Global};
use crate::output;

pub fn find(g: &Global, a: &FindArgs) -> Result<()> {
    let query = query(a)?;
    let store = super::open(g)?;
    let report = store.find(&query)?;
    if g.json {
        return output::json(&report);
    }
    if report.images.is_empty() {
        if !g.quiet {
            eprintln!("no image matches (searched {} refs)", report.searched);
        }
        return Ok(());
    }
    let mut header = vec!["REF", "IMAGE", "PUT", "SIZE"];
    if query.deffile.is_some() {
        header.push("MATCHING LINES");
    }
    let mut t = output::table(&header);
    for f in &report.images {
        let mut row = vec![
            f.reference.clone(),
            output::short_id(&f.image),
            output::date(f.created),
            output::size(f.size),
        ];
        if query.deffile.is_some() {
            let lines: Vec<String> = f
                .matches
                .iter()
                .map(|m| format!("{}: {}", m.line, m.text))
                .collect();
            row.push(lines.join("\n"));
        }
        t.add_row(row);
    }
    crate::out!("{t}");
    Ok(())
}

/// The query the arguments ask for; a bad regex, label or date is a usage error.
fn query(a: &FindArgs) -> Result<Query> {
    let usage = |what: String| anyhow::Error::new(UsageError(what));
    let deffile = a
        .deffile
        .as_deref()
        .map(|r| {
            regex::Regex::new(r).map_err(|e| {
                // The regex crate's message spans lines (a caret under the
                // error); its last line says what is wrong.
                let why = e.to_string();
                let why = why
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                let why = why.strip_prefix("error: ").unwrap_or(why);
                usage(format!(
                    "--deffile {r:?} is not a valid regular expression: {why}"
                ))
            })
        })
        .transpose()?;
    let labels = a
        .labels
        .iter()
        .map(|l| Query::parse_label(l).map_err(|e| usage(e.to_string())))
        .collect::<Result<_>>()?;
    let name = a
        .name
        .as_deref()
        .map(|p| glob::Pattern::new(p).map_err(|e| usage(format!("--name {p:?}: {e}"))))
        .transpose()?;
    let since = a.since.as_deref().map(since).transpose()?;
    Ok(Query {
        deffile,
        labels,
        name,
        since,
    })
}

/// `2026-12-01` (midnight UTC), an RFC 3339 time, or a duration back from now (`30d`).
fn since(s: &str) -> Result<u64> {
    let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")) {
        return Ok(unix(t));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(unix(t));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(unix(SystemTime::now().checked_sub(d).unwrap_or(UNIX_EPOCH))),
        Err(_) => Err(UsageError(format!(
            "--since {s:?}: expected a date (2026-12-01) or a duration (30d, 12h)"
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_and_durations() {
        assert_eq!(since("2026-12-01").unwrap(), 1_796_083_200);
        assert_eq!(since("2026-12-01T12:00:00Z").unwrap(), 1_796_083_200 + 43_200);
        let now = unix_now();
        let d = since("30d").unwrap();
        assert!(now - d >= 30 * 86_400 && now - d < 30 * 86_400 + 5);
        assert!(since("yesterday").is_err());
    }

    fn unix_now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }
}

/// The definition-file part of `diff --deffile`.
#[derive(Serialize)]
pub struct DeffileDiff {
    /// Where REF1's definition file comes from (`null`: it has none).
    a: Option<DeffileSource>,
    /// Where REF2's comes from.
    b: Option<DeffileSource>,
    /// Both have one and they are the same text.
    identical: bool,
    /// Unified diff from REF1's to REF2's (`null` unless both have one).
    unified: Option<String>,
}

/// Compares the definition files of two resolved images, named as given.
pub fn deffile_diff(store: &Store, a: (&Resolved, &str), b: (&Resolved, &str)) -> Result<DeffileDiff> {
    let da = store.deffile(a.0)?;
    let db = store.deffile(b.0)?;
    let unified = match (&da, &db) {
        (Some((ta, _)), Some((tb, _))) => Some(
            similar::TextDiff::from_lines(ta, tb)
                .unified_diff()
                .header(a.1, b.1)
                .to_string(),
        ),
        _ => None,
    };
    Ok(DeffileDiff {
        identical: matches!((&da, &db), (Some((ta, _)), Some((tb, _))) if ta == tb),
        a: da.map(|(_, s)| s),
        b: db.map(|(_, s)| s),
        unified,
    })
}

/// Prints the definition-file part of `diff --deffile` after the chunk table.
pub fn print_deffile_diff(d: &DeffileDiff, a: &str, b: &str) -> Result<()> {
    crate::out!();
    match (d.a, d.b) {
        (None, None) => crate::out!("definition files: neither {a} nor {b} has one"),
        (None, Some(_)) => crate::out!("definition files: {a} has none ({b} has one)"),
        (Some(_), None) => crate::out!("definition files: {b} has none ({a} has one)"),
        _ if d.identical => crate::out!("definition files: identical"),
        _ => {
            crate::out!("definition files:");
            let text = d.unified.as_deref().unwrap_or_default();
            std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())?;
            if !text.ends_with('\n') {
                crate::out!();
            }
        }
    }
    Ok(())
}
