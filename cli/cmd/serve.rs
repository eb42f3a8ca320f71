//! `imgstore serve`: opens the store and hands it to the server (cli/serve/).

use anyhow::{Context, Result};

use crate::args::{Global, ServeArgs};

pub fn run(g: &Global, a: &ServeArgs) -> Result<()> {
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
    };
    crate::serve::run(store, opts, |addr| {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    })
}
