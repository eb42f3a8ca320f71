//! Output for people (text, tables, IEC sizes) and for scripts (`--json`
//! with a `format_version`). Data goes to stdout, everything else to stderr.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use bytesize::ByteSize;
use comfy_table::{presets, Table};
use serde::Serialize;

/// `println!` that returns the write error instead of panicking, so that a
/// reader going away (`imgstore ls | head`) ends the command quietly.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

/// Version of the JSON documents `--json` prints.
pub const JSON_FORMAT_VERSION: u32 = 1;

/// Prints `value` as one JSON document with a `format_version` field.
pub fn json<T: Serialize>(value: &T) -> Result<()> {
    let mut v = serde_json::to_value(value)?;
    if let serde_json::Value::Object(map) = &mut v {
        map.insert("format_version".into(), JSON_FORMAT_VERSION.into());
    }
    crate::out!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// IEC size, e.g. `3.8 GiB`.
pub fn size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

/// Seconds since the epoch as an RFC 3339 UTC time.
pub fn date(unix: u64) -> String {
    if unix == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// A table with a header row, no borders: easy on the eye and on `awk`.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    t
}

/// Short form of an image id for tables.
pub fn short_id(id: &imgstore_store::ImageId) -> String {
    let s = id.to_string();
    s[..7 + 12].to_string()
}
