//! `imgstore serve`: opens the store and hands it to the server (cli/serve/).

use anyhow::{Context, Result};

use crate::args::{Global, ServeArgs};

pub fn run(g: &Global, a: &ServeArgs) -> Result<()> {
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        _ => None,
    };
    // Plain HTTP off loopback only when asked for (behind a TLS proxy):
    // Basic passwords and private images would cross the network in clear.
    if tls.is_none() && !a.plain_http && !a.listen.ip().is_loopback() {
        return Err(super::UsageError(format!(
            "{} is not a loopback address: give --tls-cert and --tls-key, or --plain-http behind a TLS proxy",
            a.listen
        ))
        .into());
    }
    let store = super::open(g)?;
    // The default spool is this process's own, removed when it exits.
    let temp;
    let spool = match &a.spool {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("imgstore-serve-")
                .tempdir()
                .context("creating the upload spool under $TMPDIR (or give --spool DIR)")?;
            temp.path().to_path_buf()
        }
    };
    let opts = crate::serve::Options {
        listen: a.listen,
        spool,
        htpasswd: a.htpasswd.clone(),
        access: a.access.clone(),
        tls,
    };
    crate::serve::run(store, opts, |addr, tls| {
        use std::io::Write;
        let mut out = std::io::stdout();
        let scheme = if tls { "https" } else { "http" };
        let _ = writeln!(out, "listening on {scheme}://{addr}");
        let _ = out.flush();
    })
}
