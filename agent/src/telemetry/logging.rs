//! Structured logging through `tracing-subscriber`: human-readable text by default,
//! one JSON object per line with `--log-format json` (what log collectors on OKE ingest).

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--log-level {0:?}: {1}")]
    Filter(String, #[source] tracing_subscriber::filter::ParseError),
    #[error("logging is already initialised")]
    AlreadyInitialised,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
#[group(skip)]
#[command(next_help_heading = "Logging")]
pub struct Options {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text, env = "GITOPS_AGENT_LOG_FORMAT")]
    pub log_format: Format,
    /// Log filter, in `tracing` EnvFilter syntax (for example `info,gitops_agent=debug`).
    #[arg(long, global = true, default_value = "info", env = "GITOPS_AGENT_LOG")]
    pub log_level: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            log_format: Format::Text,
            log_level: "info".into(),
        }
    }
}

/// Builds the filter; kept apart from `init` so that a bad filter is reported before anything logs.
pub fn filter(level: &str) -> Result<EnvFilter> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| Error::Filter(level.to_string(), e))
}

/// Installs the global subscriber. Logs go to stderr so that command output on stdout stays clean.
pub fn init(opts: &Options) -> Result<()> {
    let filter = filter(&opts.log_level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let res = match opts.log_format {
        Format::Text => builder.try_init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    res.map_err(|_| Error::AlreadyInitialised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filter_names_the_flag_value() {
        let err = filter("info,=[").unwrap_err();
        assert!(
            err.to_string().starts_with("--log-level \"info,=[\""),
            "{err}"
        );
    }

    #[test]
    fn good_filters_parse() {
        for f in [
            "info",
            "warn,gitops_agent=debug",
            "gitops_agent::apply=trace",
        ] {
            filter(f).unwrap();
        }
    }
}
