'use strict';
// node-redlock peer of the side-by-side benchmark: `--workers` async workers share one Redlock
// over one ioredis client per master (library defaults), each looping acquire → release on
// random keys for a fixed time. Prints a summary and one JSON line: cycles/s and acquire
// latency percentiles.
//
//   node peer.js --servers 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 [--workers 50]
//                [--duration-secs 10] [--warmup-secs 1] [--keys 100000] [--ttl-ms 5000]
//                [--latency-out FILE] [--start-on-stdin-close 1]
//
// --start-on-stdin-close holds the load (the warm-up) until standard input closes, at most 10
// minutes, so processes started one after the other run the same window. --latency-out also writes every timed acquire as `µs count` lines, lowest first, so the runs
// of several processes merge into one distribution.

const Redis = require('ioredis');
const { default: Redlock } = require('redlock');

// Samples kept per run; past it, later cycles are counted but not timed.
const MAX_SAMPLES = 10_000_000;
// How long after the end of the run the process may still be finishing before it is ended.
const GRACE_MS = 5000;

function parseArgs(argv) {
  const a = { servers: [], workers: 50, durationSecs: 10, warmupSecs: 1, keys: 100000, ttlMs: 5000, latencyOut: '', startOnStdinClose: false };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const num = () => {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) throw new Error(`${flag}: not a number: ${value}`);
      return n;
    };
    switch (flag) {
      case '--servers': a.servers = value.split(','); break;
      case '--workers': a.workers = Math.min(Math.max(num(), 1), 10000); break;
      case '--duration-secs': a.durationSecs = Math.min(Math.max(num(), 1), 3600); break;
      case '--warmup-secs': a.warmupSecs = Math.min(num(), 600); break;
      case '--keys': a.keys = Math.max(num(), 1); break;
      case '--ttl-ms': a.ttlMs = Math.max(num(), 1); break;
      case '--latency-out': a.latencyOut = value; break;
      case '--start-on-stdin-close': a.startOnStdinClose = num() !== 0; break;
      default: throw new Error(`unknown flag ${flag}`);
    }
  }
  if (a.servers.length === 0) throw new Error('--servers HOST:PORT,HOST:PORT,... is required');
  return a;
}

function version(pkg) {
  // Read from disk: redlock's "exports" map hides its package.json from require().
  try {
    const file = require('path').join(__dirname, 'node_modules', pkg, 'package.json');
    return JSON.parse(require('fs').readFileSync(file, 'utf8')).version;
  } catch {
    return 'unknown';
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const clients = args.servers.map((s) => {
    const [host, port] = s.split(':');
    // Bounded: a master that does not answer fails the command instead of queueing forever.
    return new Redis({ host, port: Number(port), commandTimeout: 2000, maxRetriesPerRequest: 1 });
  });
  // One try per lock, as the proxy's LOCK: a failure is counted, not retried after a sleep.
  const redlock = new Redlock(clients, { retryCount: 0 });
  let clientErrors = 0;
  redlock.on('error', () => { clientErrors += 1; });

  if (args.startOnStdinClose) {
    // The line a script starting several processes waits for before it closes their input.
    console.error('node-redlock peer: waiting for the start');
    await new Promise((resolve) => {
      const bound = setTimeout(resolve, 600_000);
      process.stdin.on('end', () => { clearTimeout(bound); resolve(); });
      process.stdin.resume();
    });
  }
  const toNs = (ms) => BigInt(Math.round(ms * 1e6));
  const start = process.hrtime.bigint();
  const from = start + toNs(args.warmupSecs * 1000);
  const until = from + toNs(args.durationSecs * 1000);
  const hardStop = setTimeout(() => {
    console.error('node-redlock peer: still running after the grace period; exiting');
    process.exit(1);
  }, (args.warmupSecs + args.durationSecs) * 1000 + GRACE_MS);

  const samples = [];
  let cycles = 0;
  let errors = 0;
  let firstError = '';

  async function worker() {
    while (process.hrtime.bigint() < until) {
      const key = `redlock-node:key:${Math.floor(Math.random() * args.keys)}`;
      const t0 = process.hrtime.bigint();
      let lock;
      try {
        lock = await redlock.acquire([key], args.ttlMs);
      } catch (e) {
        errors += 1;
        if (!firstError) firstError = String(e && e.message);
        continue;
      }
      const t1 = process.hrtime.bigint();
      try {
        await lock.release();
      } catch (e) {
        errors += 1;
        if (!firstError) firstError = String(e && e.message);
        continue;
      }
      if (t1 >= from && t1 < until) {
        cycles += 1;
        if (samples.length < MAX_SAMPLES) samples.push(Number(t1 - t0) / 1000);
      }
    }
  }

  await Promise.all(Array.from({ length: args.workers }, worker));
  clearTimeout(hardStop);
  await Promise.all(clients.map((c) => c.quit().catch(() => {})));

  samples.sort((x, y) => x - y);
  const q = (p) => {
    if (samples.length === 0) return 0;
    const rank = Math.min(Math.max(Math.ceil(p * samples.length), 1), samples.length);
    return samples[rank - 1];
  };
  if (args.latencyOut) {
    const lines = [];
    for (let i = 0; i < samples.length;) {
      const v = samples[i].toFixed(1);
      let j = i;
      while (j < samples.length && samples[j].toFixed(1) === v) j += 1;
      lines.push(`${v} ${j - i}\n`);
      i = j;
    }
    require('fs').writeFileSync(args.latencyOut, lines.join(''));
  }
  const perSec = cycles / args.durationSecs;
  console.log(`node-redlock ${version('redlock')} + ioredis ${version('ioredis')}: ${args.workers} workers, ` +
    `${args.servers.length} masters, ${args.durationSecs} s after ${args.warmupSecs} s warm-up`);
  console.log(`  acquire→release cycles/s  ${perSec.toFixed(0)}`);
  console.log(`  acquire latency (µs)      p50 ${q(0.5).toFixed(1)}  p99 ${q(0.99).toFixed(1)}  p99.9 ${q(0.999).toFixed(1)}`);
  console.log(`  cycles ${cycles}  errors ${errors}  client errors ${clientErrors}`);
  console.log(JSON.stringify({
    tool: 'node-redlock',
    redlock: version('redlock'),
    ioredis: version('ioredis'),
    workers: args.workers,
    duration_secs: args.durationSecs,
    cycles_per_sec: Number(perSec.toFixed(1)),
    lock_p50_us: Number(q(0.5).toFixed(1)),
    lock_p99_us: Number(q(0.99).toFixed(1)),
    lock_p999_us: Number(q(0.999).toFixed(1)),
    cycles,
    errors,
    client_errors: clientErrors,
    first_error: firstError,
  }));
}

main().catch((e) => {
  console.error(`node-redlock peer: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
