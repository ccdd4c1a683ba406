//! Command-line flags. Each overrides the matching key of the configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::config::{ClientAuth, Config, ConfigError, Listen, LogFormat, MasterAddr, Secret};

/// Default configuration file, used when it exists and `--config` is not given.
pub const DEFAULT_CONFIG: &str = "config.toml";

/// A Redis-protocol server that grants Redlock distributed locks over independent Redis masters.
#[derive(Debug, Parser)]
#[command(name = "redlock-proxy", version, about)]
pub struct Cli {
    /// Configuration file [default: ./config.toml when it exists]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Address of the plain listener; `none` turns it off (with --tls-listen)
    /// [default: 127.0.0.1:7379]
    #[arg(long, value_name = "HOST:PORT", env = "REDLOCK_PROXY_LISTEN")]
    pub listen: Option<Listen>,

    /// Address of a TLS listener, beside the plain one or instead of it (--listen none)
    #[arg(long, value_name = "HOST:PORT", env = "REDLOCK_PROXY_TLS_LISTEN")]
    pub tls_listen: Option<Listen>,

    /// PEM certificate chain the TLS listener presents (re-read on SIGHUP)
    #[arg(long, value_name = "PATH", env = "REDLOCK_PROXY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file (re-read on SIGHUP)
    #[arg(long, value_name = "PATH", env = "REDLOCK_PROXY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM certificate authorities that TLS clients' certificates must chain to (re-read on
    /// SIGHUP)
    #[arg(long, value_name = "PATH", env = "REDLOCK_PROXY_TLS_CA_CERT_FILE")]
    pub tls_ca_cert_file: Option<PathBuf>,

    /// Whether TLS clients must present a certificate [default: yes with --tls-ca-cert-file,
    /// else no]
    #[arg(
        long,
        value_name = "no|optional|yes",
        env = "REDLOCK_PROXY_TLS_AUTH_CLIENTS"
    )]
    pub tls_auth_clients: Option<ClientAuth>,

    /// `no` lets the proxy listen on a non-loopback address without a password
    /// [default: yes]
    #[arg(long, value_name = "yes|no", value_parser = yes_no)]
    pub protected_mode: Option<bool>,

    // The help text is given as `help`: as a doc comment, rustdoc would read its `[user:pass@]`
    // as a link.
    #[arg(
        long = "backend",
        value_name = "ADDR",
        help = "A Redis master, HOST:PORT or redis://[user:pass@]HOST:PORT[/db], or rediss://... \
                for TLS; or a Redis Cluster, redis+cluster://[user:pass@]HOST:PORT[,HOST:PORT...] \
                (its seed nodes; rediss+cluster:// for TLS); repeat for each member. Without any, \
                three local redis-server masters are started"
    )]
    pub backends: Vec<MasterAddr>,

    /// The longest TTL a client may ask for, in ms [default: 60000]
    #[arg(long, value_name = "N")]
    pub max_ttl_ms: Option<u64>,

    /// Password clients must AUTH with (the environment keeps it out of `ps`)
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "REDLOCK_PROXY_REQUIREPASS",
        hide_env_values = true
    )]
    pub requirepass: Option<Secret>,

    /// A file whose first line is the password clients must AUTH with
    #[arg(long, value_name = "PATH", conflicts_with = "requirepass")]
    pub requirepass_file: Option<PathBuf>,

    /// Password for every master whose address carries none
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "REDLOCK_PROXY_BACKEND_PASSWORD",
        hide_env_values = true
    )]
    pub backend_password: Option<Secret>,

    /// A file whose first line is the password for every master whose address carries none
    #[arg(long, value_name = "PATH", conflicts_with = "backend_password")]
    pub backend_password_file: Option<PathBuf>,

    /// PEM file of the certificate authorities that rediss:// masters' certificates must chain
    /// to [default: the system's trusted roots]
    #[arg(
        long,
        value_name = "PATH",
        env = "REDLOCK_PROXY_BACKEND_TLS_CA_CERT_FILE"
    )]
    pub backend_tls_ca_cert_file: Option<PathBuf>,

    /// PEM client certificate for rediss:// masters that ask for one (with
    /// --backend-tls-key-file)
    #[arg(
        long,
        value_name = "PATH",
        env = "REDLOCK_PROXY_BACKEND_TLS_CERT_FILE",
        requires = "backend_tls_key_file"
    )]
    pub backend_tls_cert_file: Option<PathBuf>,

    /// PEM private key of --backend-tls-cert-file
    #[arg(
        long,
        value_name = "PATH",
        env = "REDLOCK_PROXY_BACKEND_TLS_KEY_FILE",
        requires = "backend_tls_cert_file"
    )]
    pub backend_tls_key_file: Option<PathBuf>,

    /// Name sent to rediss:// masters (SNI) and checked against their certificates
    /// [default: each master's host]
    #[arg(
        long,
        value_name = "NAME",
        env = "REDLOCK_PROXY_BACKEND_TLS_SERVER_NAME"
    )]
    pub backend_tls_server_name: Option<String>,

    /// Accept any certificate rediss:// masters present (encrypted, but not authenticated:
    /// anyone on the path can pose as a master). For self-signed test masters only
    #[arg(long, env = "REDLOCK_PROXY_BACKEND_TLS_INSECURE")]
    pub backend_tls_insecure: bool,

    /// Validate the configuration, print the effective one, and exit (0 valid, 1 invalid)
    #[arg(long)]
    pub check_config: bool,

    /// The masters are new and hold no locks: ones that carry no run marker yet vote at once
    /// instead of sitting out max-ttl-ms. For the first start of a deployment only: on a master
    /// that was flushed it lets a live lock be granted twice
    #[arg(long)]
    pub new_deployment: bool,

    /// Serve Prometheus metrics (/metrics), liveness (/healthz) and readiness (/readyz) over
    /// HTTP on this address [default: off]
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log lines as human-readable text or as JSON objects [default: text]
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<LogFormat>,
}

impl Cli {
    /// The configuration file's contents (or the defaults), with the flags applied, validated.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None if Path::new(DEFAULT_CONFIG).is_file() => Config::load(Path::new(DEFAULT_CONFIG))?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        let server = &mut config.server;
        if let Some(listen) = self.tls_listen {
            server.tls_listen = listen;
        }
        for (flag, key) in [
            (&self.tls_cert_file, &mut server.tls_cert_file),
            (&self.tls_key_file, &mut server.tls_key_file),
            (&self.tls_ca_cert_file, &mut server.tls_ca_cert_file),
        ] {
            if let Some(path) = flag {
                *key = path.display().to_string();
            }
        }
        if let Some(auth) = self.tls_auth_clients {
            server.tls_auth_clients = Some(auth);
        }
        if !self.backends.is_empty() {
            config.backend.masters = self.backends.clone();
        }
        if let Some(ms) = self.max_ttl_ms {
            config.redlock.max_ttl_ms = ms;
        }
        if let Some(on) = self.protected_mode {
            config.server.protected_mode = on;
        }
        // A flag replaces the file's password, whichever way the file gives it.
        if let Some(pass) = &self.requirepass {
            config.server.requirepass = pass.clone();
            config.server.requirepass_file.clear();
        }
        if let Some(path) = &self.requirepass_file {
            config.server.requirepass = Secret::default();
            config.server.requirepass_file = path.display().to_string();
        }
        if let Some(path) = &self.backend_password_file {
            config.backend.password_file = path.display().to_string();
        }
        if let Some(pass) = &self.backend_password {
            config.backend.password_file.clear();
            config.backend.default_password(pass);
        }
        let tls = &mut config.backend;
        for (flag, key) in [
            (&self.backend_tls_ca_cert_file, &mut tls.tls_ca_cert_file),
            (&self.backend_tls_cert_file, &mut tls.tls_cert_file),
            (&self.backend_tls_key_file, &mut tls.tls_key_file),
        ] {
            if let Some(path) = flag {
                *key = path.display().to_string();
            }
        }
        if let Some(name) = &self.backend_tls_server_name {
            tls.tls_server_name = name.clone();
        }
        if self.backend_tls_insecure {
            tls.tls_insecure = true;
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics.listen = Some(addr);
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        config.read_secret_files()?;
        if self.new_deployment {
            config.backend.fresh_at_start = true;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Redis's spelling of a switch: `yes` or `no`.
fn yes_no(s: &str) -> Result<bool, String> {
    match s {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("expected yes or no, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("redlock-proxy-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[redlock]\nmax_ttl_ms = 1000\n[server]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "redlock-proxy",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:2",
            "--backend",
            "127.0.0.1:7000",
            "--backend",
            "redis://:pw@127.0.0.1:7001/2",
        ]);
        let c = cli.load_config().unwrap();
        assert_eq!(c.server.listen.0.unwrap().port(), 2);
        assert_eq!(c.redlock.max_ttl_ms, 1000);
        assert_eq!(c.backend.masters.len(), 2);
        assert_eq!(c.backend.masters[1].db, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_flags_set_the_backend_keys() {
        let cli = Cli::parse_from([
            "redlock-proxy",
            "--backend",
            "rediss://app:p%2Fw@cache.example:6380",
            "--backend-tls-ca-cert-file",
            "ca.pem",
            "--backend-tls-cert-file",
            "me.pem",
            "--backend-tls-key-file",
            "me.key",
            "--backend-tls-server-name",
            "cache.internal",
        ]);
        let c = cli.load_config().unwrap();
        assert!(c.backend.masters[0].tls);
        assert_eq!(c.backend.masters[0].password.as_deref(), Some("p/w"));
        let b = &c.backend;
        assert_eq!(
            [
                &b.tls_ca_cert_file,
                &b.tls_cert_file,
                &b.tls_key_file,
                &b.tls_server_name
            ],
            ["ca.pem", "me.pem", "me.key", "cache.internal"]
        );
        assert!(
            Cli::try_parse_from(["redlock-proxy", "--backend-tls-cert-file", "me.pem"]).is_err()
        );
    }

    #[test]
    fn passwords_come_from_files() {
        let dir = std::env::temp_dir().join(format!("redlock-proxy-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let client = dir.join("client");
        let master = dir.join("master");
        std::fs::write(&client, "c/l:i@xyzzy1\n").unwrap();
        std::fs::write(&master, "m/xyzzy2\r\n").unwrap();
        let cli = Cli::parse_from([
            "redlock-proxy",
            "--requirepass-file",
            client.to_str().unwrap(),
            "--backend-password-file",
            master.to_str().unwrap(),
            "--backend",
            "127.0.0.1:7000",
            "--backend",
            "redis://:own@127.0.0.1:7001",
            "--listen",
            "0.0.0.0:0",
        ]);
        let c = cli.load_config().unwrap();
        assert_eq!(c.server.requirepass.expose(), "c/l:i@xyzzy1");
        assert_eq!(c.backend.masters[0].password.as_deref(), Some("m/xyzzy2"));
        assert_eq!(c.backend.masters[1].password.as_deref(), Some("own"));
        let shown = c.to_toml();
        assert!(!shown.contains("xyzzy"), "{shown}");
        std::fs::write(&client, "").unwrap();
        assert!(cli.load_config().unwrap_err().to_string().contains("empty"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn metrics_and_log_format_flags_set_their_keys() {
        let cli = Cli::parse_from([
            "redlock-proxy",
            "--metrics-listen",
            "127.0.0.1:9379",
            "--log-format",
            "json",
        ]);
        let c = cli.load_config().unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9379".parse().unwrap()));
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(Cli::try_parse_from(["redlock-proxy", "--log-format", "xml"]).is_err());
        let same = Cli::parse_from([
            "redlock-proxy",
            "--listen",
            "127.0.0.1:7379",
            "--metrics-listen",
            "127.0.0.1:7379",
        ]);
        let e = same.load_config().unwrap_err().to_string();
        assert!(e.contains("an address of its own"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["redlock-proxy", "--backend", "nope"]).is_err());
        let cli = Cli::parse_from(["redlock-proxy", "--max-ttl-ms", "1"]);
        assert!(cli.load_config().is_err());
    }
}
