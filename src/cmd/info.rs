//! `INFO [section ...]`: `field:value` lines under `# Section` headers, as Redis writes them, so
//! tools that parse Redis's INFO (ioredis's ready check among them) parse this too. The
//! `masters` section shows each master's health.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;
use crate::stats::Stats;

pub const SPEC: Spec = Spec {
    name: "info",
    arity: -1,
    flags: &["loading", "stale"],
    key_pos: 0,
    group: "server",
    summary: "Returns information and statistics about the proxy and its masters",
    complexity: "O(1)",
    args: &[ArgDoc::many("section", "string", true)],
    no_auth: false,
    run,
};

/// Writes one section's lines.
type Section = fn(&Shared, &mut String);

/// Sections in the order they print; all of them are in the default set.
const SECTIONS: &[(&str, Section)] = &[
    ("server", server),
    ("clients", clients),
    ("persistence", persistence),
    ("stats", stats),
    ("masters", masters),
    ("keyspace", |_, _| {}),
];

fn run(argv: Vec<Bytes>, _: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let wanted: Vec<String> = argv[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| matches!(w.as_str(), "all" | "default" | "everything"));
    let mut out = String::with_capacity(1024);
    for (name, write) in SECTIONS {
        if all || wanted.iter().any(|w| w == name) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            let mut title = name.to_string();
            title[..1].make_ascii_uppercase();
            let _ = write!(out, "# {title}\r\n");
            write(shared, &mut out);
        }
    }
    Ok(Reply::Verbatim(Bytes::from(out)).into())
}

fn line(out: &mut String, field: &str, value: impl std::fmt::Display) {
    let _ = write!(out, "{field}:{value}\r\n");
}

fn server(shared: &Shared, out: &mut String) {
    let uptime = shared.started.elapsed().as_secs();
    // The Redis version whose commands and replies the proxy follows, for tools that check it.
    line(out, "redis_version", "7.0.15");
    line(out, "redlock_proxy_version", env!("CARGO_PKG_VERSION"));
    line(out, "redis_mode", "standalone");
    line(out, "arch_bits", usize::BITS);
    line(out, "process_id", std::process::id());
    line(out, "run_id", &shared.run_id);
    line(out, "tcp_port", shared.port);
    line(out, "uptime_in_seconds", uptime);
    line(out, "uptime_in_days", uptime / 86_400);
}

fn clients(shared: &Shared, out: &mut String) {
    line(
        out,
        "connected_clients",
        Stats::get(&shared.stats.connected_clients),
    );
    line(out, "maxclients", shared.config.server.max_clients);
    // Blocked commands rather than clients: one connection may have several waits.
    line(out, "blocked_clients", shared.locks.waiting());
}

fn persistence(_: &Shared, out: &mut String) {
    line(out, "loading", 0);
}

fn stats(shared: &Shared, out: &mut String) {
    let s = &shared.stats;
    let l = shared.locks.stats();
    let counters = [
        ("total_connections_received", &s.connections_received),
        ("total_commands_processed", &s.commands_processed),
        ("rejected_connections", &s.rejected_connections),
        (
            "client_output_buffer_limit_disconnections",
            &s.output_limit_closes,
        ),
        ("total_error_replies", &s.error_replies),
        ("tls_handshake_failures", &s.tls_handshake_failures),
        ("locks_granted", &l.granted),
        ("locks_granted_exclusive", &l.granted_exclusive),
        ("locks_granted_shared", &l.granted_shared),
        ("locks_granted_permits", &l.granted_permits),
        ("locks_refused", &l.refused),
        ("locks_released", &l.released),
        ("locks_extended", &l.extended),
        ("noquorum_replies", &s.noquorum),
        ("acl_access_denied_auth", &s.auth_failures),
        ("timed_out_clients", &s.timed_out_clients),
        ("session_locks", &l.session_locks),
        ("session_locks_lost", &l.session_locks_lost),
    ];
    for (field, counter) in counters {
        line(out, field, Stats::get(counter));
    }
}

fn masters(shared: &Shared, out: &mut String) {
    let masters = shared.locks.masters();
    let statuses: Vec<_> = masters.iter().map(|m| m.status()).collect();
    line(out, "masters", masters.len());
    line(out, "quorum", shared.locks.quorum());
    line(out, "masters_up", statuses.iter().filter(|s| s.up).count());
    line(
        out,
        "masters_voting",
        statuses.iter().filter(|s| s.votes()).count(),
    );
    line(
        out,
        "master_deadline_ms",
        shared.config.redlock.master_deadline_ms,
    );
    // The operator let masters that may evict lock keys vote: an evicted key can be granted twice.
    line(
        out,
        "allow_evicting_masters",
        u8::from(shared.config.backend.allow_evicting_masters),
    );
    for (i, s) in statuses.iter().enumerate() {
        let _ = write!(
            out,
            "master{i}:addr={},state={},reason={},quarantine_left_ms={},run_id={},connections={}/{},pending={},requests={},failures={},reconnects={},last_change={},last_error={}\r\n",
            s.addr,
            s.state(),
            s.reason.unwrap_or("-"),
            s.quarantine_left_ms.unwrap_or(0),
            s.run_id.as_deref().unwrap_or("-"),
            s.conns_up,
            s.conns,
            s.pending,
            s.requests,
            s.failures,
            s.reconnects,
            s.changed_at,
            // One line, and no commas to split the fields wrongly.
            s.last_error
                .as_deref()
                .unwrap_or("-")
                .replace(['\r', '\n'], " ")
                .replace(',', ";"),
        );
        // A cluster member: the slots it covers, then each master node, its slots and its own
        // health.
        if let Some((covered, redirects)) = masters[i].cluster_counts() {
            let _ = write!(
                out,
                "master{i}_cluster:slots_covered={covered},redirects={redirects}\r\n"
            );
        }
        for (j, n) in masters[i].nodes().into_iter().flatten().enumerate() {
            let _ = write!(
                out,
                "master{i}_node{j}:addr={},slots={},slot_ranges={},state={},reason={},quarantine_left_ms={},run_id={},connections={}/{}\r\n",
                n.at,
                n.slot_count,
                n.slots.replace(' ', ";"),
                n.status.state(),
                n.status.reason.unwrap_or("-"),
                n.status.quarantine_left_ms.unwrap_or(0),
                n.status.run_id.as_deref().unwrap_or("-"),
                n.status.conns_up,
                n.status.conns,
            );
        }
    }
}
