//! Logging flags and the tracing subscriber: plain text or JSON on stderr, at `--log-level`
//! unless `RUST_LOG` is set (an operator debugging one module sets `RUST_LOG` and keeps the
//! manifest's level).

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// `--log-format` and `--log-level`, for `#[command(flatten)]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "WIMSEY_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// Log level or filter directives (`debug`, `info,wimsey_csi=debug`); `RUST_LOG`, when set,
    /// wins.
    #[arg(long, env = "WIMSEY_LOG_LEVEL", default_value = "info", value_parser = parse_filter)]
    pub log_level: String,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Plain,
            log_level: "info".to_owned(),
        }
    }
}

fn parse_filter(value: &str) -> Result<String, String> {
    EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("{value:?} is not a log level or filter: {e}"))
}

/// The filter directives in effect: `RUST_LOG` when it is set and not empty, else `level`.
pub fn effective_filter(rust_log: Option<&str>, level: &str) -> String {
    match rust_log.map(str::trim) {
        Some(directives) if !directives.is_empty() => directives.to_owned(),
        _ => level.to_owned(),
    }
}

/// Logs to stderr as `args` say. A second call (tests) keeps the first subscriber.
pub fn init_logging(args: &LogArgs) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let directives = effective_filter(rust_log.as_deref(), &args.log_level);
    // A RUST_LOG that does not parse must not stop the process: fall back to the flag.
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|error| {
        eprintln!("RUST_LOG {directives:?} ignored: {error}");
        EnvFilter::new(&args.log_level)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn flags_default_to_plain_info_and_parse() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.log, LogArgs::default());
        let cli = Cli::try_parse_from([
            "x",
            "--log-format",
            "json",
            "--log-level",
            "warn,wimsey_csi=debug",
        ])
        .unwrap();
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert_eq!(cli.log.log_level, "warn,wimsey_csi=debug");
    }

    #[test]
    fn bad_values_are_refused() {
        let err = Cli::try_parse_from(["x", "--log-format", "yaml"]).unwrap_err();
        assert!(err.to_string().contains("yaml"), "{err}");
        let err = Cli::try_parse_from(["x", "--log-level", "wimsey=loud"]).unwrap_err();
        assert!(err.to_string().contains("not a log level"), "{err}");
    }

    #[test]
    fn rust_log_wins_when_set() {
        assert_eq!(effective_filter(None, "info"), "info");
        assert_eq!(effective_filter(Some(""), "info"), "info");
        assert_eq!(effective_filter(Some("  "), "warn"), "warn");
        assert_eq!(effective_filter(Some("debug"), "info"), "debug");
    }
}
