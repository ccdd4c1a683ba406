'use strict';
// node-redlock 5 over ioredis: one ioredis client per Redlock instance, each pointed at one of
// two proxies over the same masters. The proxy is the Redlock "cluster" of one.

const Redis = require('ioredis');
const { default: Redlock, ExecutionError, ResourceLockedError } = require('redlock');
const { version, expect, inRange, rejection, sleep, proxies, run, TOKEN } = require('./check');

const { a, b } = proxies();
const ioA = new Redis({ host: a.host, port: a.port });
const ioB = new Redis({ host: b.host, port: b.port });
// Few quick retries: a refused acquire must fail in well under a second here.
const settings = { retryCount: 2, retryDelay: 100, retryJitter: 20 };
const lockA = new Redlock([ioA], settings);
const lockB = new Redlock([ioB], settings);

/** Asserts that an acquire via B is refused because the proxy answered "held" (:0). */
async function refusedViaB(resources, what) {
  const e = await rejection(lockB.acquire(resources, 5000), what);
  expect(e instanceof ExecutionError, `${what}: ${e && e.name}: ${e && e.message}`);
  // Each attempt's vote against must be a proper "locked" reply, not an error reply.
  const stats = await e.attempts[0];
  const against = [...stats.votesAgainst.values()];
  expect(against.length === 1 && against[0] instanceof ResourceLockedError,
    `${what}: vote against was ${against.map((x) => `${x.name}: ${x.message}`)}`);
}

let lock;

run(`redlock ${version('redlock')} ioredis ${version('ioredis')}`, {
  async handshake() {
    expect(await ioA.ping() === 'PONG', 'PING');
    // ioredis 6 speaks RESP3 by default; the proxy must have accepted its HELLO 3.
    const info = String(await ioA.call('CLIENT', 'INFO'));
    expect(/\bresp=3\b/.test(info), `CLIENT INFO: ${info}`);
  },

  async acquire() {
    lock = await lockA.acquire(['res:a'], 5000);
    expect(TOKEN.test(lock.value), `lock value ${lock.value}`);
    expect(await ioB.get('res:a') === lock.value, 'GET via B returns the lock value');
    inRange(await ioB.pttl('res:a'), 3000, 5000, 'PTTL via B');
  },

  async refused_via_b() {
    await refusedViaB(['res:a'], 'acquire via B while A holds');
    expect(await ioB.get('res:a') === lock.value, 'still held by A after B gave up');
  },

  async extend() {
    const before = lock.expiration;
    lock = await lock.extend(8000);
    expect(lock.expiration > before, 'expiration moved forward');
    inRange(await ioB.pttl('res:a'), 5000, 8000, 'PTTL via B after extend(8000)');
  },

  async release() {
    await lock.release();
    expect(await ioB.exists('res:a') === 0, 'EXISTS via B after release');
    const again = await lockB.acquire(['res:a'], 5000);
    expect(await ioA.get('res:a') === again.value, 'acquired via B after release');
    await again.release();
  },

  async multi_resource() {
    const both = await lockA.acquire(['res:b', 'res:c'], 3000);
    expect(await ioB.get('res:b') === both.value && await ioB.get('res:c') === both.value,
      'both resources hold the value');
    await refusedViaB(['res:c'], 'acquire of one held resource');
    await refusedViaB(['res:d', 'res:b'], 'acquire of a free and a held resource');
    expect(await ioB.exists('res:d') === 0, 'a refused multi-resource acquire leaves nothing held');
    const extended = await both.extend(6000);
    inRange(await ioB.pttl('res:c'), 3000, 6000, 'PTTL of the second resource after extend');
    await extended.release();
    expect(await ioB.exists('res:b') + await ioB.exists('res:c') === 0, 'both released');
    const viaB = await lockB.acquire(['res:b', 'res:c'], 3000);
    await viaB.release();
  },

  async using_auto_extension() {
    // The routine outlives the 1000 ms duration threefold: only automatic extension keeps it.
    const started = Date.now();
    const result = await lockA.using(['res:u'], 1000, { automaticExtensionThreshold: 500 }, async (signal) => {
      let checkedPastTtl = false;
      while (Date.now() - started < 3000) {
        expect(!signal.aborted, `aborted: ${signal.error}`);
        if (!checkedPastTtl && Date.now() - started > 1500) {
          await refusedViaB(['res:u'], 'acquire via B past the original duration');
          checkedPastTtl = true;
        }
        await sleep(100);
      }
      expect(checkedPastTtl, 'checked contention');
      return 'routine-done';
    });
    expect(result === 'routine-done', 'using() returns the routine result');
    expect(await ioB.exists('res:u') === 0, 'released when the routine ended');
  },

  async release_expired() {
    // Expired, then taken through B (which proves the key is gone on the masters): the first
    // holder's release gets :0 and, after its retries, throws.
    const short = await lockA.acquire(['res:e'], 300);
    const taker = await lockB.acquire(['res:e'], 5000, { retryCount: 30, retryDelay: 100, retryJitter: 0 });
    const e = await rejection(short.release(), 'release of an expired lock');
    expect(e instanceof ExecutionError, `release of an expired lock: ${e && e.name}: ${e && e.message}`);
    expect(await ioA.get('res:e') === taker.value, 'still held by B');
    await taker.release();
  },
}, async () => {
  ioA.disconnect();
  ioB.disconnect();
});
