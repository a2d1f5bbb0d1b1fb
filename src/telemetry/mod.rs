//! Telemetry: logging set-up (structured `tracing` output to stderr, human-readable or JSON
//! lines, written off the request path by [`log_writer`], access lines formatted by
//! [`format`]), Prometheus metrics, process figures and the live status-page samples.

pub mod format;
pub mod live;
pub mod log_writer;
pub mod metrics;
pub mod process;

use std::io::IsTerminal;

use crate::config::LogFormat;

/// Installs the global subscriber. Later calls (tests building several apps) are no-ops.
pub fn init(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let writer = match log_writer::NonBlocking::stderr() {
        Ok(writer) => writer,
        Err(error) => {
            // No thread for the writer: log straight to stderr rather than not at all.
            eprintln!("sessiond: cannot start the log writer ({error}); logging synchronously");
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr);
            let _ = match format {
                LogFormat::Pretty => builder.try_init(),
                LogFormat::Json => builder.json().flatten_event(true).try_init(),
            };
            return;
        }
    };
    // Colours only for a terminal: escape codes in a file or a pipe are noise to every reader
    // and cost formatting on every line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Pretty => builder.event_format(format::Format::default()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
