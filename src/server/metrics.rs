//! The operators' HTTP listener (`metrics.listen`, `--metrics-listen`): `/metrics` in the
//! Prometheus text format, `/healthz` (200 while the process serves) and `/readyz` (200 while a
//! quorum of masters votes, 503 otherwise or while shutting down).
//!
//! Nothing is counted here: a scrape reads the counters the request path already keeps
//! (`stats`, `metrics`, the lock service's, each master's status) and `prometheus-client`
//! writes them out, so the exposition format is the crate's, not ours. HTTP is `hyper`'s.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::backend::MasterStatus;
use crate::cmd::Shared;
use crate::cmd::metrics::is_lock_command;
use crate::metrics::{HistogramSnapshot, Outcome};
use crate::stats::Stats;

/// Connections the listener serves at once; a scraper needs one, a probe another.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A master's states, as `INFO masters` names them: one series each, 1 for the current one.
const STATES: [&str; 5] = ["up", "quarantined", "replica", "evicting", "down"];
/// The rules that hold a master out of the vote (the identity's quarantines, then a replica's
/// role and an eviction policy): one series each, 1 for the rule in force.
const REASONS: [&str; 8] = [
    "restarted",
    "new-run",
    "flushed",
    "foreign-data",
    "unmarked",
    "recorded",
    "replica",
    "evicting",
];

/// What the listener answers from.
#[derive(Debug)]
struct State {
    shared: Arc<Shared>,
    registry: Registry,
    /// Cancelled when the proxy begins to shut down: from then on it is not ready.
    stopping: CancellationToken,
}

/// Serves the listener on `listener` until `stop`. `stopping` marks the start of shutdown.
pub(super) fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    stopping: CancellationToken,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let mut registry = Registry::with_prefix("redlock_proxy");
    registry.register_collector(Box::new(Scrape(shared.clone())));
    let state = Arc::new(State {
        shared,
        registry,
        stopping,
    });
    tasks.spawn(accept_loop(listener, state, stop, tasks.clone()));
}

/// Binds `addr` for the listener (inside the runtime).
pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the limit the connection is closed unanswered: scrapers retry.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
            drop(slot);
        });
    }
}

/// The response to one request.
fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::with_capacity(16 * 1024);
            match prometheus_client::encoding::prometheus_text::encode(&mut body, &state.registry) {
                Ok(()) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(
                            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        ),
                    );
                    response
                }
                Err(e) => {
                    warn!("cannot encode the metrics: {e}");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding failed\n".into(),
                    )
                }
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let (ready, why) = readiness(state);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, why)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// Ready while a quorum of masters votes and the proxy is not shutting down; and why, in words.
fn readiness(state: &State) -> (bool, String) {
    if state.stopping.is_cancelled() {
        return (false, "not ready: shutting down\n".into());
    }
    let locks = &state.shared.locks;
    let voting = locks
        .masters()
        .iter()
        .filter(|m| m.status().votes())
        .count();
    let (quorum, total) = (locks.quorum(), locks.masters().len());
    let ready = voting >= quorum;
    let word = if ready { "ready" } else { "not ready" };
    (
        ready,
        format!("{word}: {voting} of {total} masters vote, {quorum} needed\n"),
    )
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Reads every counter at scrape time.
#[derive(Debug)]
struct Scrape(Arc<Shared>);

/// A histogram snapshot as `prometheus-client` encodes one.
struct Hist<'a>(&'a HistogramSnapshot);

impl EncodeMetric for Hist<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &self.0.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Writes one metric family at a time.
struct Out<'a>(DescriptorEncoder<'a>);

impl Out<'_> {
    /// A metric without labels.
    fn one(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        m: impl EncodeMetric,
    ) -> fmt::Result {
        let encoder = self
            .0
            .encode_descriptor(name, help, unit, m.metric_type())?;
        m.encode(encoder)
    }

    fn counter(&mut self, name: &str, help: &str, unit: Option<&Unit>, v: u64) -> fmt::Result {
        self.one(name, help, unit, ConstCounter::new(v))
    }

    /// A gauge: counts as `i64`, so they print as integers.
    fn gauge(&mut self, name: &str, help: &str, v: impl EncodeGaugeValue) -> fmt::Result {
        self.one(name, help, None, ConstGauge::new(v))
    }

    /// A family of latency histograms, one series per `(label's value, snapshot)`.
    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: &[(&str, HistogramSnapshot)],
    ) -> fmt::Result {
        self.family(
            name,
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
            series
                .iter()
                .map(|(value, h)| (vec![(label, *value)], Hist(h))),
        )
    }

    /// A family with one series per `(labels, value)`.
    fn family<'v, M: EncodeMetric + 'v>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        kind: MetricType,
        series: impl IntoIterator<Item = (Vec<(&'v str, &'v str)>, M)>,
    ) -> fmt::Result {
        let mut metric = self.0.encode_descriptor(name, help, unit, kind)?;
        for (labels, value) in series {
            value.encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let shared = &*self.0;
        let mut out = Out(encoder);
        requests(shared, &mut out)?;
        clients(shared, &mut out)?;
        masters(shared, &mut out)
    }
}

fn requests(shared: &Shared, out: &mut Out) -> fmt::Result {
    let commands: Vec<_> = shared.requests.iter().collect();
    out.family(
        "lock_requests",
        "Lock requests by command and outcome: granted (taken, released, extended), held \
         (held by another holder, or not held with that token), no_quorum, error",
        None,
        MetricType::Counter,
        commands
            .iter()
            .filter(|(name, _)| is_lock_command(name))
            .flat_map(|(name, c)| {
                Outcome::ALL.map(|o| {
                    let labels = vec![("command", *name), ("outcome", o.label())];
                    (labels, ConstCounter::new(c.outcome(o)))
                })
            }),
    )?;
    let latencies: Vec<_> = commands
        .iter()
        .map(|(name, c)| (*name, c.latency.snapshot()))
        .filter(|(_, h)| h.count > 0)
        .collect();
    out.histograms(
        "request_duration",
        "Time from a request's dispatch to its reply, by command (lock_wait: LOCK ... WAIT)",
        "command",
        &latencies,
    )?;
    let s = &shared.stats;
    let l = shared.locks.stats();
    for (name, help, counter) in [
        (
            "commands",
            "Commands run, failed ones included",
            &s.commands_processed,
        ),
        ("error_replies", "Error replies sent", &s.error_replies),
        (
            "noquorum_replies",
            "NOQUORUM error replies sent: fewer than a quorum of masters answered in time",
            &s.noquorum,
        ),
        ("locks_granted", "Locks granted by a quorum", &l.granted),
        (
            "locks_refused",
            "Acquires refused because another holder has the key",
            &l.refused,
        ),
        (
            "locks_released",
            "Releases that released a lock",
            &l.released,
        ),
        (
            "locks_extended",
            "Extensions that extended a lock",
            &l.extended,
        ),
    ] {
        out.counter(name, help, None, Stats::get(counter))?;
    }
    let kinds = [
        ("exclusive", &l.granted_exclusive),
        ("shared", &l.granted_shared),
        ("permits", &l.granted_permits),
    ];
    out.family(
        "locks_granted_by_kind",
        "Locks granted by a quorum, by kind: exclusive (a mutex or a writer), shared (a read \
         lock), permits (one of a semaphore's permits)",
        None,
        MetricType::Counter,
        kinds.map(|(kind, c)| (vec![("kind", kind)], ConstCounter::new(Stats::get(c)))),
    )
}

fn clients(shared: &Shared, out: &mut Out) -> fmt::Result {
    let s = &shared.stats;
    let l = shared.locks.stats();
    out.gauge(
        "connected_clients",
        "Client connections open now",
        Stats::get(&s.connected_clients) as i64,
    )?;
    out.gauge(
        "blocked_clients",
        "LOCK ... WAIT requests waiting for a lock now",
        shared.locks.waiting() as i64,
    )?;
    out.gauge(
        "session_locks",
        "LOCK ... SESSION locks held now, over all connections",
        Stats::get(&l.session_locks) as i64,
    )?;
    for (name, help, counter) in [
        (
            "connections_received",
            "Client connections accepted",
            &s.connections_received,
        ),
        (
            "rejected_connections",
            "Client connections refused at max_clients",
            &s.rejected_connections,
        ),
        (
            "output_limit_disconnections",
            "Client connections closed for queueing more than client_output_hard_bytes",
            &s.output_limit_closes,
        ),
        (
            "timed_out_clients",
            "Client connections closed by idle_timeout_ms or auth_timeout_ms",
            &s.timed_out_clients,
        ),
        (
            "auth_failures",
            "AUTH refused for a wrong user or password",
            &s.auth_failures,
        ),
        (
            "tls_handshake_failures",
            "TLS handshakes with clients that failed or timed out",
            &s.tls_handshake_failures,
        ),
        (
            "session_locks_lost",
            "Session locks whose extension missed a quorum",
            &l.session_locks_lost,
        ),
    ] {
        out.counter(name, help, None, Stats::get(counter))?;
    }
    out.counter(
        "net_input",
        "Bytes read from clients",
        Some(&Unit::Bytes),
        Stats::get(&s.net_input_bytes),
    )?;
    out.counter(
        "net_output",
        "Bytes written to clients",
        Some(&Unit::Bytes),
        Stats::get(&s.net_output_bytes),
    )
}

fn masters(shared: &Shared, out: &mut Out) -> fmt::Result {
    let members = shared.locks.masters();
    let statuses: Vec<MasterStatus> = members.iter().map(|m| m.status()).collect();
    let voting = statuses.iter().filter(|s| s.votes()).count();
    out.gauge("masters", "Masters configured", statuses.len() as i64)?;
    out.gauge(
        "quorum",
        "Masters that must agree on any decision",
        shared.locks.quorum() as i64,
    )?;
    out.gauge("masters_voting", "Masters up and voting now", voting as i64)?;
    out.gauge(
        "masters_up",
        "Masters with a connection up now",
        statuses.iter().filter(|s| s.up).count() as i64,
    )?;
    let deadline = shared.config.redlock.master_deadline_ms as f64 / 1e3;
    out.one(
        "master_deadline",
        "How long a round waits for the masters' answers (master_deadline_ms)",
        Some(&Unit::Seconds),
        ConstGauge::new(deadline),
    )?;
    let addrs: Vec<&str> = statuses.iter().map(|s| s.addr.as_str()).collect();
    out.family(
        "master_state",
        "Each master's state, 1 for the current one: up (voting), quarantined, replica, \
         evicting (held out), down (no connection)",
        None,
        MetricType::Gauge,
        statuses.iter().zip(&addrs).flat_map(|(s, addr)| {
            let now = s.state();
            STATES.map(|state| {
                let labels = vec![("master", *addr), ("state", state)];
                (labels, ConstGauge::new(i64::from(now == state)))
            })
        }),
    )?;
    out.family(
        "master_held_out",
        "The rule holding each master out of the vote, 1 for the one in force: a quarantine's \
         (restarted, new-run, flushed, foreign-data, unmarked, recorded), replica or evicting",
        None,
        MetricType::Gauge,
        statuses.iter().zip(&addrs).flat_map(|(s, addr)| {
            let held = s.up && !s.votes();
            let extra = s.reason.filter(|r| held && !REASONS.contains(r));
            REASONS.iter().copied().chain(extra).map(move |reason| {
                let on = held && s.reason == Some(reason);
                let labels = vec![("master", *addr), ("reason", reason)];
                (labels, ConstGauge::new(i64::from(on)))
            })
        }),
    )?;
    out.family(
        "master_quarantine_remaining",
        "Time before a quarantined master votes again (0 when none holds it out)",
        Some(&Unit::Seconds),
        MetricType::Gauge,
        statuses.iter().zip(&addrs).map(|(s, addr)| {
            let left = s.quarantine_left_ms.unwrap_or(0) as f64 / 1e3;
            (vec![("master", *addr)], ConstGauge::new(left))
        }),
    )?;
    let round_trips: Vec<_> = members
        .iter()
        .zip(&addrs)
        .filter_map(|(m, addr)| m.round_trip().map(|h| (*addr, h.snapshot())))
        .collect();
    out.histograms(
        "master_round_trip",
        "Time from writing a request to a master to reading its reply",
        "master",
        &round_trips,
    )?;
    type Field = fn(&MasterStatus) -> u64;
    let per_master: [(&str, &str, Field); 3] = [
        ("master_requests", "Requests sent to each master", |s| {
            s.requests
        }),
        (
            "master_failures",
            "Requests to each master that got no usable answer",
            |s| s.failures,
        ),
        (
            "master_reconnects",
            "Connections to each master opened again after one was lost",
            |s| s.reconnects,
        ),
    ];
    for (name, help, field) in per_master {
        out.family(
            name,
            help,
            None,
            MetricType::Counter,
            statuses
                .iter()
                .zip(&addrs)
                .map(|(s, addr)| (vec![("master", *addr)], ConstCounter::new(field(s)))),
        )?;
    }
    out.family(
        "master_fence_repairs",
        "Fence counter repairs completed on each master (after it restarted empty)",
        None,
        MetricType::Counter,
        members.iter().zip(&addrs).map(|(m, addr)| {
            (
                vec![("master", *addr)],
                ConstCounter::new(m.fence_repairs()),
            )
        }),
    )?;
    out.family(
        "master_pending_requests",
        "Requests queued for each master or awaiting its reply now",
        None,
        MetricType::Gauge,
        statuses
            .iter()
            .zip(&addrs)
            .map(|(s, addr)| (vec![("master", *addr)], ConstGauge::new(s.pending as i64))),
    )?;
    out.family(
        "master_connections_up",
        "Connections to each master up now",
        None,
        MetricType::Gauge,
        statuses
            .iter()
            .zip(&addrs)
            .map(|(s, addr)| (vec![("master", *addr)], ConstGauge::new(s.conns_up as i64))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Member;
    use crate::backend::mem::{MemMaster, Mode};
    use crate::config::Config;
    use crate::locks::Locks;

    fn state(masters: &[MemMaster]) -> State {
        let members = masters.iter().cloned().map(Member::Mem).collect();
        let locks = Arc::new(Locks::new(members, Duration::from_millis(50), "redlock:"));
        let shared = Arc::new(Shared::new(Config::default(), locks, 0));
        let mut registry = Registry::with_prefix("redlock_proxy");
        registry.register_collector(Box::new(Scrape(shared.clone())));
        State {
            shared,
            registry,
            stopping: CancellationToken::new(),
        }
    }

    #[test]
    fn ready_while_a_quorum_votes_and_not_once_shutting_down() {
        let masters: Vec<MemMaster> = (0..3).map(|_| MemMaster::new()).collect();
        let s = state(&masters);
        assert_eq!(
            readiness(&s),
            (true, "ready: 3 of 3 masters vote, 2 needed\n".into())
        );
        masters[0].set_mode(Mode::Down);
        assert!(readiness(&s).0);
        masters[1].set_mode(Mode::Down);
        assert_eq!(
            readiness(&s),
            (false, "not ready: 1 of 3 masters vote, 2 needed\n".into())
        );
        masters[1].set_mode(Mode::Healthy);
        assert!(readiness(&s).0);
        s.stopping.cancel();
        assert_eq!(readiness(&s), (false, "not ready: shutting down\n".into()));
    }

    #[test]
    fn the_exposition_names_every_family_once_with_its_type() {
        let masters: Vec<MemMaster> = (0..3).map(|_| MemMaster::new()).collect();
        let s = state(&masters);
        masters[2].set_mode(Mode::Down);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &s.registry).unwrap();
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let mut names: Vec<&str> = types.iter().map(|t| t.split(' ').next().unwrap()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a family twice: {types:?}");
        for want in [
            "redlock_proxy_lock_requests_total counter",
            "redlock_proxy_masters_voting gauge",
            "redlock_proxy_net_input_bytes_total counter",
            "redlock_proxy_master_deadline_seconds gauge",
            "redlock_proxy_master_state gauge",
        ] {
            assert!(types.contains(&want), "no {want}: {types:?}");
        }
        assert!(
            text.contains("\nredlock_proxy_masters_voting 2\n"),
            "{text}"
        );
        assert!(
            text.contains("redlock_proxy_master_state{master=\"memory\",state=\"down\"} 1"),
            "{text}"
        );
    }
}
