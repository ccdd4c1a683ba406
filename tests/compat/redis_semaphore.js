'use strict';
// redis-semaphore over ioredis against two proxies over the same masters: its Mutex (SET PX NX,
// then its refresh and release scripts by EVALSHA, EVAL on NOSCRIPT) and RedlockMutex with the
// proxy as its one "instance"; its counting Semaphore (released by a plain ZREM) and
// MultiSemaphore, and their Redlock variants, as semaphores of PERMITS over the quorum.

const Redis = require('ioredis');
const {
  Mutex, RedlockMutex, Semaphore, MultiSemaphore, RedlockSemaphore, RedlockMultiSemaphore,
} = require('redis-semaphore');
const { version, expect, sleep, proxies, run } = require('./check');

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

  async semaphore() {
    // A Semaphore of 2: two holders through either proxy, a third refused, a refresh keeps a
    // holder past its lock timeout, and its release (a plain ZREM) frees a permit.
    const sem = `${key}:sem`;
    let lostSem = null;
    const onLockLost = (e) => { lostSem = e; };
    const one = new Semaphore(ioA, sem, 2, { ...options, refreshInterval: 200, onLockLost });
    const two = new Semaphore(ioB, sem, 2, { ...options, refreshInterval: 200, onLockLost });
    const three = new Semaphore(ioA, sem, 2, options);
    await one.acquire();
    await two.acquire();
    expect(await three.tryAcquire() === false, 'a third Semaphore holder while two hold');
    await sleep(2500);
    expect(lostSem === null, `permit lost: ${lostSem}`);
    expect(await new Semaphore(ioB, sem, 2, options).tryAcquire() === false, 'still full');
    await one.release();
    expect(await three.tryAcquire() === true, 'a third holder after one release()');
    await two.release();
    await three.release();
  },

  async multi_semaphore() {
    // A MultiSemaphore takes its permits all or none, from the count a Semaphore shares.
    const sem = `${key}:multi`;
    const pair = new MultiSemaphore(ioA, sem, 3, 2, options);
    const other = new MultiSemaphore(ioB, sem, 3, 2, options);
    const single = new Semaphore(ioB, sem, 3, options);
    await pair.acquire();
    expect(await other.tryAcquire() === false, 'a second pair while 2 of 3 are held');
    expect(await single.tryAcquire() === true, 'the third permit');
    expect(await new Semaphore(ioA, sem, 3, options).tryAcquire() === false, 'a fourth');
    await pair.release();
    expect(await other.tryAcquire() === true, 'a pair after release()');
    await other.release();
    await single.release();
  },

  async redlock_semaphores() {
    const sem = `${key}:redlock-sem`;
    const one = new RedlockSemaphore([ioA], sem, 1, options);
    await one.acquire();
    expect(await new RedlockSemaphore([ioB], sem, 1, options).tryAcquire() === false,
      'RedlockSemaphore through B while held');
    await one.release();
    const multi = new RedlockMultiSemaphore([ioB], `${sem}:multi`, 2, 2, options);
    await multi.acquire();
    expect(await new RedlockSemaphore([ioA], `${sem}:multi`, 2, options).tryAcquire() === false,
      'RedlockSemaphore while a RedlockMultiSemaphore holds both permits');
    await multi.release();
  },

  async semaphore_bound() {
    // Six workers on a Semaphore of 2 through both proxies, each taking, holding a moment and
    // releasing in a loop: never more than two hold at once, and every one gets its turn.
    const sem = `${key}:bound`;
    let holding = 0;
    let most = 0;
    let turns = 0;
    const until = Date.now() + 1500;
    const worker = async (i) => {
      const io = i % 2 ? ioA : ioB;
      while (Date.now() < until) {
        const s = new Semaphore(io, sem, 2, { ...options, acquireTimeout: 2000, retryInterval: 5 });
        await s.acquire();
        holding += 1;
        most = Math.max(most, holding);
        await sleep(10);
        holding -= 1;
        turns += 1;
        await s.release();
      }
    };
    await Promise.all([0, 1, 2, 3, 4, 5].map(worker));
    expect(most === 2, `at most 2 at once, and 2 reached: ${most}`);
    expect(turns >= 12, `turns: ${turns}`);
  },
}, async () => {
  mutex.stopRefresh();
  ioA.disconnect();
  ioB.disconnect();
});
