'use strict';
// redis-semaphore over ioredis against two proxies over the same masters: its Mutex (SET PX NX,
// then its refresh and release scripts by EVALSHA, EVAL on NOSCRIPT) and RedlockMutex with the
// proxy as its one "instance"; its counting Semaphore is refused with an error saying so.

const Redis = require('ioredis');
const { Mutex, RedlockMutex, Semaphore } = require('redis-semaphore');
const { version, expect, rejection, proxies, run } = require('./check');

const { a, b } = proxies();
const ioA = new Redis({ host: a.host, port: a.port });
const ioB = new Redis({ host: b.host, port: b.port });
const key = `printer-${process.pid}`;
const options = { lockTimeout: 2000, acquireTimeout: 500, retryInterval: 20 };
let lost = null;
const mutex = new Mutex(ioA, key, { ...options, refreshInterval: 200, onLockLost: (e) => { lost = e; } });

run(`redis-semaphore ${version('redis-semaphore')}`, {
  async acquire() {
    await mutex.acquire();
    expect(mutex.isAcquired, 'isAcquired after acquire()');
    expect(await ioB.get(`mutex:${key}`) === mutex.identifier, 'GET through B names the holder');
  },

  async contention() {
    const other = new Mutex(ioB, key, options);
    expect(await other.tryAcquire() === false, 'tryAcquire() through B while held');
  },

  async refresh() {
    // Refreshed every 200 ms by its refresh script: alive well past its 2 s lock timeout.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    expect(lost === null, `lock lost: ${lost}`);
    const pttl = await ioB.pttl(`mutex:${key}`);
    expect(pttl > 1000 && pttl <= 2000, `PTTL through B: ${pttl}`);
  },

  async release() {
    await mutex.release();
    const other = new Mutex(ioB, key, options);
    expect(await other.tryAcquire() === true, 'tryAcquire() through B after release()');
    await other.release();
  },

  async redlock_mutex() {
    const first = new RedlockMutex([ioA], `${key}:redlock`, options);
    await first.acquire();
    const second = new RedlockMutex([ioB], `${key}:redlock`, options);
    expect(await second.tryAcquire() === false, 'RedlockMutex through B while held');
    await first.release();
    expect(await second.tryAcquire() === true, 'RedlockMutex through B after release()');
    await second.release();
  },

  async semaphore_refused() {
    const semaphore = new Semaphore(ioA, `${key}:sem`, 2, options);
    const e = await rejection(semaphore.acquire(), 'Semaphore acquire()');
    expect(/redis-semaphore/.test(e.message) && /Mutex/.test(e.message), `error: ${e.message}`);
  },
}, async () => {
  mutex.stopRefresh();
  ioA.disconnect();
  ioB.disconnect();
});
