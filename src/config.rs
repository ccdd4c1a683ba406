//! Declarative configuration: one struct per `config.toml` section, named defaults, units in key
//! names, unknown keys rejected, validated once at load. `config.toml` at the repository root
//! documents every key.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most masters a deployment may name; Redlock's fan-out is meant for a handful.
pub const MAX_MASTERS: usize = 7;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file named.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown key.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A value out of its range, or values that contradict each other.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Client-facing listener and per-connection limits.
    pub server: ServerConfig,
    /// The lock algorithm.
    pub redlock: RedlockConfig,
    /// Connections to the Redis masters.
    pub backend: BackendConfig,
    /// Local masters started when no backend address is configured.
    pub embedded: EmbeddedConfig,
    /// Logging.
    pub log: LogConfig,
    /// The Prometheus metrics, health and readiness listener.
    pub metrics: MetricsConfig,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the plain (cleartext) listener; `""` (or `"none"`) turns it off, leaving
    /// only `tls_listen`.
    pub listen: Listen,
    /// Address of the TLS listener (Redis's `tls-port`); `""`: none.
    pub tls_listen: Listen,
    /// PEM certificate chain the TLS listener presents (Redis's `tls-cert-file`); re-read on
    /// SIGHUP.
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`; re-read on SIGHUP.
    pub tls_key_file: String,
    /// PEM certificate authorities that client certificates must chain to (Redis's
    /// `tls-ca-cert-file`); re-read on SIGHUP.
    pub tls_ca_cert_file: String,
    /// Whether TLS clients must present a certificate signed by `tls_ca_cert_file`: `yes`,
    /// `optional` (checked when given) or `no`. Unset: `yes` when a CA file is given, as Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_auth_clients: Option<ClientAuth>,
    /// Refuse to start on a non-loopback address without `requirepass`: anyone who can reach
    /// the port could read any holder's token and release any lock.
    pub protected_mode: bool,
    /// When non-empty, clients must `AUTH` (or `HELLO ... AUTH`) with it.
    pub requirepass: Secret,
    /// A file holding `requirepass` (one line), so the password need not be in this file nor
    /// on the command line.
    pub requirepass_file: String,
    /// A connection that has not authenticated this long after connecting is closed, in ms
    /// (with `requirepass` only; 0: never).
    pub auth_timeout_ms: u64,
    /// Failed `AUTH`s after which a connection is closed.
    pub max_auth_failures: u32,
    /// A connection with nothing in flight that sends nothing this long is closed, in ms
    /// (Redis's `timeout`; 0: never).
    pub idle_timeout_ms: u64,
    /// TCP keepalive on client connections: the first probe after this many idle seconds, the
    /// next a third of it apart; a peer that leaves three unanswered is declared dead (Redis's
    /// `tcp-keepalive`; 0: off).
    pub tcp_keepalive_secs: u64,
    /// Connections beyond this are refused with an error reply.
    pub max_clients: usize,
    /// Commands one connection may have in flight before the proxy stops reading from it.
    pub max_pipeline: usize,
    /// `LOCK ... SESSION` locks one connection may hold (or be taking) at once; past it a
    /// `LOCK ... SESSION` is refused with an error. Each costs the masters an extension every
    /// third of its TTL for as long as the connection lives.
    pub max_session_locks_per_client: usize,
    /// `LOCK ... WAIT`s one connection may have waiting at once; past it a `LOCK ... WAIT` is
    /// refused with an error. Each holds a place in a queue and a marker on every master.
    pub max_waits_per_client: usize,
    /// Bytes one connection may have queued for its client (replies not yet written, and the
    /// requests still awaiting theirs) before the proxy stops reading from it.
    pub client_output_soft_bytes: usize,
    /// Queued bytes past which the connection is closed (one reply larger than the rest).
    pub client_output_hard_bytes: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest single argument, in bytes.
    pub max_arg_bytes: usize,
    /// Longest inline (non-RESP) command line, in bytes.
    pub max_inline_bytes: usize,
    /// Largest single request, all arguments together, in bytes.
    pub max_request_bytes: usize,
    /// On SIGINT/SIGTERM, how long in-flight commands get to finish.
    pub shutdown_grace_ms: u64,
    /// Threads serving clients and masters: 1 runs everything on one thread (least CPU per
    /// lock), 0 one per CPU.
    pub threads: usize,
}

/// `[redlock]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedlockConfig {
    /// The longest TTL a client may ask for; longer is refused.
    pub max_ttl_ms: u64,
    /// TTL of a lock taken by `SET key token NX` without PX/EX (a lock must expire). Unset:
    /// 30000, or `max_ttl_ms` when that is smaller; see [`RedlockConfig::default_ttl_ms`].
    #[serde(rename = "default_ttl_ms", skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<u64>,
    /// How long one master's answer is waited for; a later answer never counts as a vote.
    pub master_deadline_ms: u64,
    /// The shortest TTL a `LOCK ... SESSION` may ask for (or `max_ttl_ms` when that is
    /// smaller; see [`RedlockConfig::session_min_ttl_ms`]): the proxy extends a session lock
    /// every third of its TTL, so a short one costs the masters many requests a second.
    #[serde(rename = "session_min_ttl_ms")]
    pub session_min_ttl: u64,
    /// A fence counter unused this long, in ms, is removed from the masters (0: never): a sweep
    /// every half of it raises each master's fence floor to its highest counter and gives the
    /// counters unused since the last sweep an expiry of the other half. Fences stay increasing
    /// per key; after a sweep a key's next fence may jump above the floor.
    pub fence_idle_ms: u64,
    /// Every lock key on the masters starts with this, so locks never collide with application keys.
    pub key_prefix: String,
}

impl RedlockConfig {
    /// The shortest TTL a `LOCK ... SESSION` may ask for.
    pub fn session_min_ttl_ms(&self) -> u64 {
        self.session_min_ttl.min(self.max_ttl_ms)
    }

    /// The TTL for `SET key token NX` without PX/EX.
    pub fn default_ttl_ms(&self) -> u64 {
        self.default_ttl
            .unwrap_or(DEFAULT_TTL_MS.min(self.max_ttl_ms))
    }
}

/// `default_ttl_ms` when the file leaves it unset (and `max_ttl_ms` allows it).
pub const DEFAULT_TTL_MS: u64 = 30_000;

/// `[backend]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// The independent Redis masters: `HOST:PORT`, `redis://[user:pass@]HOST:PORT[/db]`, or
    /// `rediss://...` for TLS. Empty: start local masters (see `[embedded]`).
    pub masters: Vec<MasterAddr>,
    /// Multiplexed connections kept open to each master.
    pub connections_per_master: usize,
    /// Requests one connection may have queued or awaiting a reply; beyond it requests fail at once.
    pub max_pending_per_connection: usize,
    /// A file holding the password for every master whose address carries none, so it need
    /// not be in this file nor on the command line.
    pub password_file: String,
    /// PEM file of the certificate authorities that `rediss://` masters' certificates must
    /// chain to. Empty: the system's trusted roots.
    pub tls_ca_cert_file: String,
    /// PEM certificate (chain) the proxy shows to `rediss://` masters that ask for one; with
    /// `tls_key_file`.
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// The name sent (SNI) to `rediss://` masters and checked against their certificates.
    /// Empty: each master's host from its address.
    pub tls_server_name: String,
    /// Accept any certificate a `rediss://` master presents: the traffic is encrypted but
    /// anyone on the path can pose as a master. For tests and self-signed masters only; logged
    /// as a warning at every start.
    pub tls_insecure: bool,
    /// Deadline for opening a connection and its handshake.
    pub connect_timeout_ms: u64,
    /// First delay before reconnecting to a master that went away; doubles up to the maximum.
    pub reconnect_min_ms: u64,
    /// Largest delay between reconnect attempts.
    pub reconnect_max_ms: u64,
    /// The operator asserts every master persists every write before answering
    /// (`appendfsync always`), so a restarted master lost no lock: no restart quarantine.
    pub persistent_masters: bool,
    /// How often each master's run, role, eviction policy and lineage are checked, in ms.
    pub health_check_ms: u64,
    /// A master that leaves a health check unanswered this long, in ms, has its connections
    /// dropped and dialled again (resolving its host name again).
    pub health_timeout_ms: u64,
    /// The operator accepts masters that may evict keys (`maxmemory` with a policy other than
    /// `noeviction`): they vote, with a warning. Off: such a master does not vote.
    pub allow_evicting_masters: bool,
    /// Set by the proxy itself (never from the file) when it started the masters, or by
    /// `--new-deployment`: they are known empty, so their first run needs no quarantine, and a
    /// master with no run marker is marked rather than quarantined.
    #[serde(skip)]
    pub fresh_at_start: bool,
}

impl BackendConfig {
    /// Gives `password` to every master whose address carries none.
    pub fn default_password(&mut self, password: &Secret) {
        for m in &mut self.masters {
            if m.password.is_none() {
                m.password = Some(password.expose().to_owned());
            }
        }
    }
}

/// The largest `tcp_keepalive_secs`: Linux refuses a longer keepalive idle time.
pub const MAX_TCP_KEEPALIVE_SECS: u64 = 32_767;

/// A password. `Debug`, `Display` and serialization show `***`, so no configuration dump or
/// log line carries it; [`Secret::expose`] is the one way to read it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The password itself, for comparing and sending; never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// No password.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::from(s))
    }
}

/// For tests and the shown configuration: compares the stored text.
impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// A secret from a file: its first line, without the line ending (`echo pw > file` works).
fn read_secret(path: &str) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{path} is empty: it must hold the password on its first line"
        )));
    }
    Ok(Secret(line.to_owned()))
}

/// `[embedded]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// How many local masters to start when no backend is configured.
    pub masters: usize,
    /// The `redis-server` executable to run.
    pub redis_server: String,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `redlock_proxy=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// How each log line is written.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected text or json, got {s:?}")),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where the HTTP listener serves `/metrics`, `/healthz` and `/readyz`; none when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Listen(Some(SocketAddr::from(([127, 0, 0, 1], 7379)))),
            tls_listen: Listen(None),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_cert_file: String::new(),
            tls_auth_clients: None,
            protected_mode: true,
            requirepass: Secret::default(),
            requirepass_file: String::new(),
            auth_timeout_ms: 10_000,
            max_auth_failures: 10,
            idle_timeout_ms: 0,
            tcp_keepalive_secs: 300,
            max_clients: 10_000,
            max_pipeline: 1024,
            max_session_locks_per_client: 1000,
            max_waits_per_client: 100,
            client_output_soft_bytes: 1024 * 1024,
            client_output_hard_bytes: 8 * 1024 * 1024,
            max_args: 1024,
            max_arg_bytes: 512 * 1024,
            max_inline_bytes: 64 * 1024,
            max_request_bytes: 1024 * 1024,
            shutdown_grace_ms: 5_000,
            threads: 1,
        }
    }
}

impl Default for RedlockConfig {
    fn default() -> Self {
        RedlockConfig {
            max_ttl_ms: 60_000,
            default_ttl: None,
            master_deadline_ms: 50,
            session_min_ttl: 1000,
            fence_idle_ms: 7 * 24 * 3_600_000,
            key_prefix: "redlock:".to_owned(),
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            masters: Vec::new(),
            connections_per_master: 1,
            max_pending_per_connection: 4096,
            password_file: String::new(),
            tls_ca_cert_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_server_name: String::new(),
            tls_insecure: false,
            connect_timeout_ms: 1_000,
            reconnect_min_ms: 50,
            reconnect_max_ms: 2_000,
            persistent_masters: false,
            health_check_ms: 500,
            health_timeout_ms: 2000,
            allow_evicting_masters: false,
            fresh_at_start: false,
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            masters: 3,
            redis_server: "redis-server".to_owned(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Reads and parses a TOML file; call [`Config::validate`] after applying overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Checks ranges and the relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        let s = &self.server;
        let r = &self.redlock;
        let b = &self.backend;
        if !(10..=60_000).contains(&b.health_check_ms) {
            return bad("backend.health_check_ms must be between 10 and 60000".into());
        }
        if !(10..=600_000).contains(&b.health_timeout_ms) {
            return bad("backend.health_timeout_ms must be between 10 and 600000".into());
        }
        let password = !s.requirepass.is_empty() || !s.requirepass_file.is_empty();
        // A TLS listener that requires client certificates keeps strangers out by itself.
        let certified = s.tls_auth_clients() == ClientAuth::Yes;
        let exposed = [(s.listen, false), (s.tls_listen, certified)]
            .into_iter()
            .filter_map(|(listen, certified)| listen.0.filter(|_| !certified))
            .find(|addr| !addr.ip().is_loopback());
        if let Some(addr) = exposed
            && s.protected_mode
            && !password
        {
            return bad(format!(
                "protected mode: listening on {addr} (not a loopback address) without a password \
                 would let anyone who reaches the port read any lock's token and release any \
                 lock. Either set a password (requirepass, requirepass_file, \
                 REDLOCK_PROXY_REQUIREPASS or --requirepass-file), require client certificates \
                 on a TLS listener (tls_auth_clients = \"yes\"), or, if the network itself \
                 keeps strangers out, start with --protected-mode no (protected_mode = false in \
                 [server])"
            ));
        }
        if s.listen.0.is_none() && s.tls_listen.0.is_none() {
            return bad(
                "server.listen and server.tls_listen are both off: nothing to serve".into(),
            );
        }
        if s.listen.0.is_some() && s.listen == s.tls_listen {
            return bad(format!(
                "server.listen and server.tls_listen are the same address ({})",
                s.listen
            ));
        }
        let tls_files = [&s.tls_cert_file, &s.tls_key_file, &s.tls_ca_cert_file];
        if s.tls_listen.0.is_some() {
            if s.tls_cert_file.is_empty() || s.tls_key_file.is_empty() {
                return bad(
                    "server.tls_listen needs tls_cert_file and tls_key_file (the certificate \
                     and key the listener presents)"
                        .into(),
                );
            }
        } else if tls_files.iter().any(|f| !f.is_empty()) || s.tls_auth_clients.is_some() {
            return bad(
                "server.tls_* is set but tls_listen is not: name the TLS listener's address \
                 (--tls-listen HOST:PORT)"
                    .into(),
            );
        }
        if s.tls_auth_clients() != ClientAuth::No && s.tls_ca_cert_file.is_empty() {
            return bad(
                "server.tls_auth_clients needs tls_ca_cert_file: the CA that client \
                 certificates must chain to"
                    .into(),
            );
        }
        if s.max_auth_failures == 0 {
            return bad("server.max_auth_failures must be at least 1".into());
        }
        if s.tcp_keepalive_secs > MAX_TCP_KEEPALIVE_SECS {
            return bad(format!(
                "server.tcp_keepalive_secs must be at most {MAX_TCP_KEEPALIVE_SECS} (0: off)"
            ));
        }
        if s.max_clients == 0 {
            return bad("server.max_clients must be at least 1".into());
        }
        if s.max_pipeline == 0 {
            return bad("server.max_pipeline must be at least 1".into());
        }
        if s.max_session_locks_per_client == 0 || s.max_waits_per_client == 0 {
            return bad(
                "server.max_session_locks_per_client and max_waits_per_client must be at least 1"
                    .into(),
            );
        }
        if s.client_output_soft_bytes < 1024
            || s.client_output_hard_bytes < s.client_output_soft_bytes
        {
            return bad(
                "server.client_output_soft_bytes must be at least 1024 and client_output_hard_bytes at least as large"
                    .into(),
            );
        }
        if s.threads > 1024 {
            return bad("server.threads must be at most 1024 (0: one per CPU)".into());
        }
        if s.max_args < 4 || s.max_arg_bytes < 64 || s.max_inline_bytes < 64 {
            return bad(
                "server.max_args must be at least 4 and max_arg_bytes, max_inline_bytes at least 64"
                    .into(),
            );
        }
        if s.max_request_bytes < s.max_arg_bytes.max(s.max_inline_bytes) {
            return bad(
                "server.max_request_bytes must be at least max_arg_bytes and max_inline_bytes"
                    .into(),
            );
        }
        if r.max_ttl_ms < crate::redlock::quorum::MIN_TTL_MS {
            return bad(format!(
                "redlock.max_ttl_ms must be at least {} ms",
                crate::redlock::quorum::MIN_TTL_MS
            ));
        }
        if let Some(ttl) = r.default_ttl
            && !(crate::redlock::quorum::MIN_TTL_MS..=r.max_ttl_ms).contains(&ttl)
        {
            return bad(format!(
                "redlock.default_ttl_ms must be between {} and max_ttl_ms ({}), got {ttl}",
                crate::redlock::quorum::MIN_TTL_MS,
                r.max_ttl_ms,
            ));
        }
        if r.session_min_ttl < crate::redlock::quorum::MIN_TTL_MS {
            return bad(format!(
                "redlock.session_min_ttl_ms must be at least {} ms",
                crate::redlock::quorum::MIN_TTL_MS
            ));
        }
        if r.fence_idle_ms != 0 && !(100..=i64::MAX as u64 / 2).contains(&r.fence_idle_ms) {
            return bad("redlock.fence_idle_ms must be 0 (never) or at least 100".into());
        }
        if r.max_ttl_ms > i64::MAX as u64 / 2 {
            return bad("redlock.max_ttl_ms is too large".into());
        }
        if r.master_deadline_ms == 0 || r.master_deadline_ms >= r.max_ttl_ms {
            return bad(format!(
                "redlock.master_deadline_ms must be between 1 and max_ttl_ms ({}), got {}",
                r.max_ttl_ms, r.master_deadline_ms
            ));
        }
        if r.key_prefix.is_empty() {
            return bad("redlock.key_prefix must not be empty: lock keys would collide with application keys".into());
        }
        if r.key_prefix.contains(['{', '}']) {
            return bad("redlock.key_prefix must not hold { or }: the proxy puts its own hash tag after it, so each lock stays in one cluster slot".into());
        }
        if b.masters.len() > MAX_MASTERS {
            return bad(format!(
                "at most {MAX_MASTERS} masters are supported, got {}",
                b.masters.len()
            ));
        }
        if b.connections_per_master == 0 || b.connections_per_master > 64 {
            return bad("backend.connections_per_master must be between 1 and 64".into());
        }
        if b.max_pending_per_connection == 0 {
            return bad("backend.max_pending_per_connection must be at least 1".into());
        }
        if b.connect_timeout_ms == 0
            || b.reconnect_min_ms == 0
            || b.reconnect_max_ms < b.reconnect_min_ms
        {
            return bad("backend.connect_timeout_ms and reconnect_min_ms must be positive and reconnect_max_ms >= reconnect_min_ms".into());
        }
        if b.masters.is_empty() && !(1..=MAX_MASTERS).contains(&self.embedded.masters) {
            return bad(format!(
                "embedded.masters must be between 1 and {MAX_MASTERS}"
            ));
        }
        if b.tls_cert_file.is_empty() != b.tls_key_file.is_empty() {
            return bad(
                "backend.tls_cert_file and backend.tls_key_file go together: set both or neither"
                    .into(),
            );
        }
        let tls_set = [
            &b.tls_ca_cert_file,
            &b.tls_cert_file,
            &b.tls_key_file,
            &b.tls_server_name,
        ]
        .iter()
        .any(|v| !v.is_empty())
            || b.tls_insecure;
        if tls_set && !b.masters.iter().any(|m| m.tls) {
            return bad(
                "backend.tls_* is set but no master uses TLS: name them as rediss://HOST:PORT"
                    .into(),
            );
        }
        if b.tls_insecure && !b.tls_ca_cert_file.is_empty() {
            return bad(
                "backend.tls_insecure and backend.tls_ca_cert_file contradict each other: with \
                 the masters' CA, leave tls_insecure off"
                    .into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for m in &b.masters {
            if !seen.insert((m.host.as_str(), m.port, m.db)) {
                return bad(format!("master {m} is listed twice: it would vote twice"));
            }
        }
        if let Some(metrics) = self.metrics.listen
            && [s.listen.0, s.tls_listen.0].contains(&Some(metrics))
        {
            return bad(format!(
                "metrics.listen is {metrics}, as a client listener is: the metrics listener \
                 needs an address of its own"
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad(format!(
                "log.level {:?} is not a valid filter",
                self.log.level
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, passwords masked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.server.requirepass_file.is_empty() {
            // Read from the file named: the file is what the configuration says.
            shown.server.requirepass = Secret::default();
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Reads `requirepass_file` into `requirepass`, and `[backend] password_file` into every
    /// master whose address carries no password.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        let s = &mut self.server;
        if !s.requirepass_file.is_empty() {
            if !s.requirepass.is_empty() {
                return Err(ConfigError::Invalid(
                    "server.requirepass and server.requirepass_file are both set: keep one".into(),
                ));
            }
            s.requirepass = read_secret(&s.requirepass_file)?;
        }
        if !self.backend.password_file.is_empty() {
            let password = read_secret(&self.backend.password_file)?;
            self.backend.default_password(&password);
        }
        Ok(())
    }

    /// Per-master answer deadline.
    pub fn master_deadline(&self) -> Duration {
        Duration::from_millis(self.redlock.master_deadline_ms)
    }
}

impl ServerConfig {
    /// Whether TLS clients must present a certificate: as set, else `yes` when a CA file is
    /// given (as Redis) and `no` without one.
    pub fn tls_auth_clients(&self) -> ClientAuth {
        self.tls_auth_clients
            .unwrap_or(if self.tls_ca_cert_file.is_empty() {
                ClientAuth::No
            } else {
                ClientAuth::Yes
            })
    }
}

/// A listener's address, or none: `HOST:PORT`, or `""` / `"none"` for off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Listen, String> {
        match s {
            "" | "none" => Ok(Listen(None)),
            _ => s.parse().map(|a| Listen(Some(a))).map_err(|_| {
                format!("{s:?} is not a listen address: HOST:PORT with an IP address, or none")
            }),
        }
    }
}

impl TryFrom<String> for Listen {
    type Error = String;

    fn try_from(s: String) -> Result<Listen, String> {
        s.parse()
    }
}

impl From<Listen> for String {
    fn from(l: Listen) -> String {
        l.to_string()
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => Ok(()),
        }
    }
}

/// `tls_auth_clients`: whether TLS clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Certificates are neither asked for nor checked.
    No,
    /// A certificate, when given, must chain to the CA; a client may connect without one.
    Optional,
    /// Every client must present a certificate that chains to the CA.
    Yes,
}

/// One master's address, parsed from `HOST:PORT` or `redis[s]://[user:pass@]HOST:PORT[/db]`;
/// or a Redis Cluster's, `redis[s]+cluster://[user:pass@]HOST:PORT[,HOST:PORT...]` (seed nodes,
/// database 0).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MasterAddr {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
    /// Database index selected after connecting.
    pub db: u32,
    /// Reached over TLS (`rediss://`).
    pub tls: bool,
    /// A Redis Cluster: `host:port` is its first seed node, these are the others.
    pub cluster: Option<Vec<(String, u16)>>,
}

impl MasterAddr {
    /// `host:port`, for connecting.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// A plain address with no credentials and database 0.
    pub fn local(port: u16) -> MasterAddr {
        MasterAddr {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
            db: 0,
            tls: false,
            cluster: None,
        }
    }

    /// The same credentials and TLS at another `host` and `port`: a cluster's node.
    pub fn node(&self, host: &str, port: u16) -> MasterAddr {
        MasterAddr {
            host: host.to_owned(),
            port,
            cluster: None,
            ..self.clone()
        }
    }

    /// Every seed node of a cluster (none for a single master).
    pub fn seeds(&self) -> Vec<MasterAddr> {
        let Some(more) = &self.cluster else {
            return Vec::new();
        };
        let first = (self.host.clone(), self.port);
        std::iter::once(&first)
            .chain(more)
            .map(|(host, port)| self.node(host, *port))
            .collect()
    }
}

impl std::str::FromStr for MasterAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let err = |why: &str| format!("bad master address {s:?}: {why}");
        let (mut username, mut password, mut db) = (None, None, 0);
        let cluster = s.starts_with("redis+cluster://") || s.starts_with("rediss+cluster://");
        let tls = s.starts_with("rediss://") || s.starts_with("rediss+cluster://");
        let url = [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .find_map(|scheme| s.strip_prefix(scheme));
        let hostport = if let Some(rest) = url {
            let (auth_host, path) = match rest.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (rest, None),
            };
            if let Some(p) = path.filter(|p| !p.is_empty()) {
                db = p
                    .parse()
                    .map_err(|_| err("the database must be a number"))?;
            }
            match auth_host.rsplit_once('@') {
                Some((auth, host)) => {
                    let decode = |part: &str| {
                        percent_decode(part).ok_or_else(|| {
                            err("a user or password with a bad %-escape (write / as %2F)")
                        })
                    };
                    match auth.split_once(':') {
                        Some((u, p)) => {
                            username = (!u.is_empty()).then(|| decode(u)).transpose()?;
                            password = Some(decode(p)?);
                        }
                        None => password = Some(decode(auth)?),
                    }
                    host
                }
                None => auth_host,
            }
        } else if s.contains("://") {
            return Err(err(
                "only redis://, rediss://, redis+cluster:// and rediss+cluster:// URLs are supported",
            ));
        } else {
            s
        };
        let host_port = |hostport: &str| {
            let (host, port) = hostport
                .rsplit_once(':')
                .ok_or_else(|| err("expected HOST:PORT"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(err("empty host"));
            }
            let port: u16 = port.parse().map_err(|_| err("the port must be 1-65535"))?;
            if port == 0 {
                return Err(err("the port must be 1-65535"));
            }
            Ok((host.to_owned(), port))
        };
        let mut nodes = hostport.split(',');
        let (host, port) = host_port(nodes.next().unwrap_or_default())?;
        let more: Vec<(String, u16)> = nodes.map(host_port).collect::<Result<_, _>>()?;
        if !cluster && !more.is_empty() {
            return Err(err("several nodes are for a cluster: redis+cluster://"));
        }
        if cluster && db != 0 {
            return Err(err("a Redis Cluster has database 0 only"));
        }
        Ok(MasterAddr {
            host,
            port,
            username,
            password,
            db,
            tls,
            cluster: cluster.then_some(more),
        })
    }
}

impl TryFrom<String> for MasterAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MasterAddr> for String {
    fn from(m: MasterAddr) -> String {
        m.to_string()
    }
}

/// Shows the address with the password masked, so it can be logged and printed.
impl fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self.username.is_none() && self.password.is_none() && self.db == 0;
        if plain && !self.tls && self.cluster.is_none() {
            return f.write_str(&self.host_port());
        }
        f.write_str(match (self.tls, self.cluster.is_some()) {
            (false, false) => "redis://",
            (true, false) => "rediss://",
            (false, true) => "redis+cluster://",
            (true, true) => "rediss+cluster://",
        })?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{}:***@", percent_encode(u))?,
            (None, Some(_)) => f.write_str("***@")?,
            _ => {}
        }
        f.write_str(&self.host_port())?;
        for (host, port) in self.cluster.iter().flatten() {
            write!(f, ",{}", self.node(host, *port).host_port())?;
        }
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

/// `%XX` escapes decoded, as in a URL's user and password (a password may hold `/` or `@`).
/// `None` for a `%` not followed by two hex digits, or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The inverse of [`percent_decode`] for a URL's user part: everything but unreserved
/// characters escaped.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Debug for MasterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_documented_file_holds_the_defaults() {
        let documented = Config::parse(include_str!("../config.toml")).unwrap();
        assert_eq!(documented.to_toml(), Config::default().to_toml());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `listne`"), "{e}");
        let e = Config::parse("[srever]\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `srever`"), "{e}");
    }

    #[test]
    fn master_addresses_parse() {
        let m: MasterAddr = "10.0.0.1:6379".parse().unwrap();
        assert_eq!((m.host.as_str(), m.port, m.db), ("10.0.0.1", 6379, 0));
        let m: MasterAddr = "redis://u:p@h:7000/3".parse().unwrap();
        assert_eq!(m.username.as_deref(), Some("u"));
        assert_eq!(m.password.as_deref(), Some("p"));
        assert_eq!((m.host.as_str(), m.port, m.db), ("h", 7000, 3));
        assert_eq!(m.to_string(), "redis://u:***@h:7000/3");
        let m: MasterAddr = "redis://:secret@h:1".parse().unwrap();
        assert_eq!((m.username, m.password.as_deref()), (None, Some("secret")));
        let m: MasterAddr = "redis://[::1]:6379".parse().unwrap();
        assert_eq!(m.host_port(), "[::1]:6379");
        // A password with `/` or `@` comes percent-encoded, as in any URL.
        let m: MasterAddr = "redis://us%40er:p%2Fw%40rd%25@h:1/2".parse().unwrap();
        assert_eq!(m.username.as_deref(), Some("us@er"));
        assert_eq!(m.password.as_deref(), Some("p/w@rd%"));
        assert_eq!(m.db, 2);
        assert_eq!(m.to_string(), "redis://us%40er:***@h:1/2");
        let back: MasterAddr = m.to_string().parse().unwrap();
        assert_eq!(back.username, m.username);
        assert!(!m.tls);
        let m: MasterAddr = "rediss://app:p%2Fw@cache.example:6380/1".parse().unwrap();
        assert!(m.tls);
        assert_eq!(m.username.as_deref(), Some("app"));
        assert_eq!(m.password.as_deref(), Some("p/w"));
        assert_eq!((m.host.as_str(), m.port, m.db), ("cache.example", 6380, 1));
        assert_eq!(m.to_string(), "rediss://app:***@cache.example:6380/1");
        let m: MasterAddr = "redis+cluster://u:pw@a:7000,b:7001,[::1]:7002"
            .parse()
            .unwrap();
        assert_eq!(
            m.to_string(),
            "redis+cluster://u:***@a:7000,b:7001,[::1]:7002"
        );
        let seeds = m.seeds();
        assert_eq!(seeds.len(), 3);
        assert_eq!((seeds[2].host.as_str(), seeds[2].port), ("::1", 7002));
        assert_eq!(seeds[1].password.as_deref(), Some("pw"));
        assert!(seeds.iter().all(|s| s.cluster.is_none()));
        let m: MasterAddr = "rediss+cluster://h:1".parse().unwrap();
        assert!(m.tls && m.cluster == Some(vec![]));
        assert_eq!(m.to_string(), "rediss+cluster://h:1");
        for bad in [
            "redis://a:1,b:2",
            "redis+cluster://a:1/2",
            "redis+cluster://a:1,b",
        ] {
            assert!(bad.parse::<MasterAddr>().is_err(), "{bad}");
        }
        let m: MasterAddr = "rediss://h:6380".parse().unwrap();
        assert_eq!(m.to_string(), "rediss://h:6380");
        assert_eq!(m.to_string().parse::<MasterAddr>().unwrap(), m);
        for bad in [
            "h",
            "h:0",
            "h:x",
            "http://h:1",
            "redis://h:1/x",
            ":1",
            "redis://:p%2@h:1",
            "redis://:p%zz@h:1",
            "redisss://h:1",
        ] {
            assert!(bad.parse::<MasterAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_are_checked() {
        let mut c = Config::default();
        c.redlock.master_deadline_ms = c.redlock.max_ttl_ms;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.backend.masters = (1..=8).map(MasterAddr::local).collect();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.backend.masters = vec![MasterAddr::local(1), MasterAddr::local(1)];
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        let mut c = Config::default();
        c.redlock.key_prefix = "a{b}:".into();
        assert!(c.validate().is_err());
        c.redlock.key_prefix.clear();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.backend.masters = vec!["rediss://h:1".parse().unwrap()];
        c.backend.tls_cert_file = "cert.pem".into();
        assert!(c.validate().unwrap_err().to_string().contains("together"));
        c.backend.tls_key_file = "key.pem".into();
        c.validate().unwrap();
        c.backend.masters = vec![MasterAddr::local(1)];
        assert!(c.validate().unwrap_err().to_string().contains("rediss://"));
        let mut c = Config::default();
        c.server.client_output_hard_bytes = c.server.client_output_soft_bytes - 1;
        assert!(c.validate().is_err());
    }

    #[test]
    fn protected_mode_refuses_a_public_listen_without_a_password() {
        let mut c = Config::default();
        c.server.listen = "0.0.0.0:7379".parse().unwrap();
        let e = c.validate().unwrap_err().to_string();
        for needle in ["protected mode", "requirepass", "--protected-mode no"] {
            assert!(e.contains(needle), "{needle} not in {e}");
        }
        c.server.requirepass = "pw".into();
        c.validate().unwrap();
        c.server.requirepass = Secret::default();
        c.server.protected_mode = false;
        c.validate().unwrap();
        c.server.listen = "[::1]:7379".parse().unwrap();
        c.server.protected_mode = true;
        c.validate().unwrap();
    }

    #[test]
    fn tls_listener_keys_are_checked_together() {
        let mut c = Config::default();
        c.server.tls_listen = "127.0.0.1:7380".parse().unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("needs tls_cert_file"), "{e}");
        c.server.tls_cert_file = "cert.pem".into();
        c.server.tls_key_file = "key.pem".into();
        c.validate().unwrap();
        assert_eq!(c.server.tls_auth_clients(), ClientAuth::No);
        // A CA means client certificates are required, unless said otherwise.
        c.server.tls_ca_cert_file = "ca.pem".into();
        assert_eq!(c.server.tls_auth_clients(), ClientAuth::Yes);
        c.server.tls_auth_clients = Some(ClientAuth::Optional);
        assert_eq!(c.server.tls_auth_clients(), ClientAuth::Optional);
        c.server.tls_ca_cert_file.clear();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("needs tls_ca_cert_file"), "{e}");
        c.server.tls_auth_clients = None;
        // Only TLS: the plain listener off.
        c.server.listen = "none".parse().unwrap();
        c.validate().unwrap();
        c.server.tls_listen = Listen(None);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("nothing to serve"), "{e}");
        c.server.listen = Config::default().server.listen;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tls_listen is not"), "{e}");
        // A public TLS listener that requires certificates needs no password; one that does
        // not, does.
        let mut c = Config::default();
        c.server.tls_listen = "0.0.0.0:7380".parse().unwrap();
        c.server.tls_cert_file = "cert.pem".into();
        c.server.tls_key_file = "key.pem".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("protected mode"), "{e}");
        c.server.tls_ca_cert_file = "ca.pem".into();
        c.validate().unwrap();
        let text = c.to_toml();
        let back = Config::parse(&text).unwrap();
        assert_eq!(back.server.tls_listen, c.server.tls_listen);
        assert_eq!(back.server.listen, c.server.listen);
        assert!(Config::parse("[server]\nlisten = \"nowhere\"\n").is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let mut c = Config::default();
        c.server.requirepass = "hunter2".into();
        c.backend.masters = vec!["redis://u:hunter3@h:1".parse().unwrap()];
        let shown = format!("{c:?} {}", c.to_toml());
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert_eq!(c.server.requirepass.expose(), "hunter2");
    }

    #[test]
    fn effective_config_round_trips_and_masks_secrets() {
        let mut c = Config::default();
        c.server.requirepass = "hunter2".into();
        c.backend.masters = vec![MasterAddr::local(7000)];
        let text = c.to_toml();
        assert!(!text.contains("hunter2"));
        let back = Config::parse(&text).unwrap();
        assert_eq!(back.backend.masters, c.backend.masters);
    }
}
