//! The command line: flags, their defaults and bounds, and the modes.

use clap::{Parser, ValueEnum};

/// LOCK→UNLOCK load generator for redlock-proxy: throughput, LOCK latency, reply counts.
#[derive(Debug, Parser)]
#[command(name = "lockbench", version)]
pub struct Args {
    /// Server address, HOST:PORT
    #[arg(long, default_value = "127.0.0.1:7379")]
    pub addr: String,
    /// Active connections
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Measured time, in seconds (after the warm-up)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_secs: u64,
    /// Unmeasured load before the measured time, in seconds
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub warmup_secs: u64,
    /// Size of the random key space
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// TTL of each LOCK, in ms
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl_ms: u64,
    /// Commands in flight per connection (the proxy's default limit is 1024)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pipeline: u32,
    /// Idle connections to open (each checked with PING) and hold during the run
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub idle: u32,
    /// cycle: LOCK then UNLOCK with the token; lock: LOCK only (locks expire by TTL)
    #[arg(long, value_enum, default_value_t = Mode::Cycle)]
    pub mode: Mode,
    /// Runtime threads; 1 is a single-threaded runtime (leaves the most CPU to the server)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Connect over TLS, verifying the server's certificate (for the --addr host) against the
    /// CA in this PEM file
    #[arg(long, value_name = "PATH")]
    pub tls_ca_cert_file: Option<String>,
    /// Password sent with AUTH on every connection, for a server with requirepass
    #[arg(long, env = "LOCKBENCH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Also write the measured LOCK latencies to this file, one `µs count` line per non-empty
    /// histogram bucket, so the runs of several processes can be merged into one distribution
    #[arg(long, value_name = "PATH")]
    pub latency_out: Option<String>,
    /// Start the load (the warm-up) when standard input closes (at most 10 minutes on), not at
    /// once, so several processes started one after the other run the same window
    #[arg(long)]
    pub start_on_stdin_close: bool,
    /// Lock with `LOCK key ttl FENCE` (the reply is `[token, fence]`)
    #[arg(long)]
    pub fence: bool,
    /// Take permits of N-permit semaphores: `LOCK key ttl PERMITS N`
    #[arg(long, value_name = "N", conflicts_with = "fence", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub permits: Option<u32>,
    /// wait-latency: the second proxy, where the waiter waits
    #[arg(long)]
    pub addr_b: Option<String>,
    /// wait-latency: release-and-wake rounds
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rounds: u32,
    /// wait-latency: how long the holder keeps the key after the waiter's request was sent, ms
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub hold_ms: u64,
    /// wait-latency: the waiter's WAIT timeout, ms
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub wait_ms: u64,
    /// wait-latency: a master of the proxies (repeat for each), for the unannounced-release
    /// rounds; their lock keys are named as `locks::keys` names `<key>` under the default
    /// key_prefix in database 0
    #[arg(long = "master")]
    pub masters: Vec<String>,
    /// wait-latency: rounds with an unannounced release (needs --master)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub fallback_rounds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Cycle,
    Lock,
    /// Wake-up latency of `LOCK ... WAIT` across two proxies (see the module docs).
    WaitLatency,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cycle => "cycle",
            Mode::Lock => "lock",
            Mode::WaitLatency => "wait-latency",
        }
    }
}
