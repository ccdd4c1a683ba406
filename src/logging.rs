//! Logging: `tracing` lines to stderr as text or as JSON objects (`log.format`), under a filter
//! (`log.level`, or `RUST_LOG`) that SIGHUP reloads from the configuration file without a
//! restart.

use std::io::IsTerminal;

use tracing::{info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{Config, ConfigError, LogConfig, LogFormat};

/// The environment variable whose filter, when set, overrides `log.level`.
const FILTER_ENV: &str = "RUST_LOG";

/// Changes the running filter.
#[derive(Debug, Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

/// Installs the process's logger as `log` says; call once.
pub fn init(log: &LogConfig) -> LogHandle {
    let (filter, handle) = reload::Layer::new(filter(&log.level));
    let registry = tracing_subscriber::registry().with(filter);
    match log.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    LogHandle(handle)
}

/// `RUST_LOG` when set and valid, else `level` (validated with the configuration).
fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new(level))
}

impl LogHandle {
    /// Applies `log.level` from a configuration read again (`RUST_LOG` still wins); says what
    /// the filter now is.
    pub fn reload(&self, reread: Result<Config, ConfigError>) {
        let level = match reread {
            Ok(config) => config.log.level,
            Err(e) => {
                warn!("SIGHUP: the log filter is unchanged: {e}");
                return;
            }
        };
        let new = filter(&level);
        let shown = new.to_string();
        match self.0.reload(new) {
            Ok(()) => info!(filter = %shown, "SIGHUP: log filter reloaded"),
            Err(e) => warn!("SIGHUP: cannot change the log filter: {e}"),
        }
    }
}

/// Reloads the log filter on every SIGHUP, with the configuration `reread` gives each time,
/// until the process ends. A task of its own, beside any other SIGHUP listener.
pub fn reload_on_hangup(
    handle: LogHandle,
    reread: impl Fn() -> Result<Config, ConfigError> + Send + 'static,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            warn!("cannot listen for SIGHUP: {e}; the log filter cannot be reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            handle.reload(reread());
        }
    });
}
