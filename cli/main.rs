//! The `imgstore` command: parse, run, map errors to documented exit codes.
//! All storage logic lives in the `imgstore_store` library.

mod args;
mod cmd;
mod exit;
mod mount;
mod output;
mod progress;
mod serve;

use std::io::ErrorKind as IoKind;
use std::process::ExitCode;

use clap::Parser;
use imgstore_store::Error as StoreError;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if matches!(
        cli.command,
        args::Command::Copy(_)
            | args::Command::Serve(_)
            | args::Command::Mount(_)
            | args::Command::Archive(_)
    ) {
        keep_large_buffers_out_of_the_heap();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMGSTORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a terminal: a log captured to a file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    match cmd::run(cli) {
        Ok(()) => ExitCode::from(exit::OK as u8),
        Err(err) => ExitCode::from(report(&err) as u8),
    }
}

/// Buffers of 1 MiB and more (read blocks, get batches, packs) are mapped
/// and unmapped, never kept in glibc's heap. By default glibc raises its
/// mmap threshold after the first large free, so later large buffers come
/// from per-thread arenas that keep what is freed, and a process that runs
/// many puts or gets grows: `benches/copy_to_s3.sh` (a `copy` of the 10
/// corpus images into S3 in one process) peaked at 780 MiB RSS, 459 MiB
/// with the threshold fixed. Only for commands that run many reads or
/// writes in one process: for a single put the fixed threshold cost ~1 s of
/// system time (page faults) on a new 3.1 GiB image (`benches/ab.sh`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_buffers_out_of_the_heap() {
    // SAFETY: only sets a malloc tunable, before any other thread starts.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
}

/// Prints `imgstore: <error chain>` and a hint on stderr; returns the exit code.
fn report(err: &anyhow::Error) -> i32 {
    // A reader that went away (`imgstore get -o - x | head`) is not a failure.
    let broken_pipe = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == IoKind::BrokenPipe)
            || matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Io { source, .. }) if source.kind() == IoKind::BrokenPipe)
    });
    if broken_pipe {
        return exit::OK;
    }
    if let Some(f) = err.downcast_ref::<cmd::Failed>() {
        eprintln!("imgstore: {}", f.message);
        return f.code;
    }
    let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    let mut line = chain.join(": ");
    // thiserror variants often repeat their source in the message.
    for part in chain.iter().skip(1) {
        let doubled = format!("{part}: {part}");
        line = line.replace(&doubled, part);
    }
    // A server's error body (S3's XML) may span lines; the error is one.
    let line = line
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("imgstore: {line}");
    let store_err = err.chain().find_map(|e| e.downcast_ref::<StoreError>());
    if let Some(hint) = store_err.and_then(StoreError::hint) {
        eprintln!("hint: {hint}");
    }
    if let Some(code) = err
        .chain()
        .find_map(|e| e.downcast_ref::<cmd::UsageError>())
        .map(|_| exit::USAGE)
    {
        return code;
    }
    store_err.map_or(exit::OTHER, |e| exit::code(e.kind()))
}
