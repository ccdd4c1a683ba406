'use strict';
// node-redlock 4 (its own lock/extend/unlock scripts) over ioredis, one client per instance, each
// pointed at one of two proxies over the same masters.

const Redis = require('ioredis');
const Redlock4 = require('redlock4');
const { version, expect, inRange, rejection, proxies, run } = require('./check');

const { a, b } = proxies();
const ioA = new Redis({ host: a.host, port: a.port });
const ioB = new Redis({ host: b.host, port: b.port });
const settings = { retryCount: 2, retryDelay: 100, retryJitter: 20 };
const lockA = new Redlock4([ioA], settings);
const lockB = new Redlock4([ioB], settings);

let lock;

run(`redlock ${version('redlock4')} ioredis ${version('ioredis')}`, {
  async lock() {
    lock = await lockA.lock('v4:a', 5000);
    expect(await ioB.get('v4:a') === lock.value, 'GET via B returns the lock value');
    inRange(await ioB.pttl('v4:a'), 3000, 5000, 'PTTL via B');
  },

  async refused_via_b() {
    const e = await rejection(lockB.lock('v4:a', 5000), 'lock via B while A holds');
    expect(e instanceof Redlock4.LockError, `lock via B: ${e && e.name}: ${e && e.message}`);
  },

  async extend() {
    lock = await lock.extend(8000);
    inRange(await ioB.pttl('v4:a'), 5000, 8000, 'PTTL via B after extend(8000)');
  },

  async unlock() {
    await lock.unlock();
    expect(await ioB.exists('v4:a') === 0, 'EXISTS via B after unlock');
    const again = await lockB.lock('v4:a', 5000);
    await again.unlock();
  },

  async multi_resource() {
    const both = await lockA.lock(['v4:b', 'v4:c'], 3000);
    expect(await ioB.get('v4:c') === both.value, 'second resource holds the value');
    const e = await rejection(lockB.lock(['v4:c', 'v4:d'], 3000), 'lock via B of a held resource');
    expect(e instanceof Redlock4.LockError, `multi lock via B: ${e && e.name}: ${e && e.message}`);
    expect(await ioB.exists('v4:d') === 0, 'a refused multi-resource lock leaves nothing held');
    await both.unlock();
    expect(await ioB.exists('v4:b') + await ioB.exists('v4:c') === 0, 'both unlocked');
  },
}, async () => {
  ioA.disconnect();
  ioB.disconnect();
});
