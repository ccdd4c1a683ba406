'use strict';
// ioredis, in its default protocol, against two proxies over the same masters: the proxy's own
// LOCK/UNLOCK commands through call(), lock-shaped SETs, and a defineCommand script (whose first
// call sends EVAL with the body, not EVALSHA).

const Redis = require('ioredis');
const { default: Redlock } = require('redlock');
const { version, expect, inRange, rejection, proxies, run, TOKEN } = require('./check');

const { a, b } = proxies();
const ioA = new Redis({ host: a.host, port: a.port });
const ioB = new Redis({ host: b.host, port: b.port });

run(`ioredis ${version('ioredis')}`, {
  async handshake() {
    expect(await ioA.ping() === 'PONG', 'PING');
    const info = String(await ioB.call('CLIENT', 'INFO'));
    expect(/\bresp=3\b/.test(info), `CLIENT INFO: ${info}`);
  },

  async lock_unlock() {
    const token = await ioA.call('LOCK', 'io:cmd', '5000');
    expect(typeof token === 'string' && TOKEN.test(token), `LOCK token ${token}`);
    expect(await ioB.call('LOCK', 'io:cmd', '5000') === null, 'LOCK via B while held');
    inRange(await ioB.call('LOCKTTL', 'io:cmd'), 3000, 5000, 'LOCKTTL via B');
    expect(await ioB.call('EXTEND', 'io:cmd', token, '9000') === 1, 'EXTEND via B');
    inRange(await ioA.call('LOCKTTL', 'io:cmd'), 5000, 9000, 'LOCKTTL after EXTEND');
    expect(await ioB.call('UNLOCK', 'io:cmd', token) === 1, "UNLOCK via B with A's token");
    expect(await ioA.call('UNLOCK', 'io:cmd', token) === 0, 'second UNLOCK');
    expect(await ioA.call('LOCKTTL', 'io:cmd') === -2, 'LOCKTTL after UNLOCK');
  },

  async set_px_nx() {
    // ioredis keeps the caller's order: SET k v PX 5000 NX.
    expect(await ioA.set('io:set', 'tok-a', 'PX', 5000, 'NX') === 'OK', 'SET PX NX via A');
    expect(await ioB.set('io:set', 'tok-b', 'PX', 5000, 'NX') === null, 'SET PX NX via B while held');
    expect(await ioB.get('io:set') === 'tok-a', 'GET via B');
    inRange(await ioB.pttl('io:set'), 3000, 5000, 'PTTL via B');
    expect(await ioB.exists('io:set') === 1, 'EXISTS via B');
    expect(await ioB.del('io:set') === 1, 'DEL via B of a held lock');
    expect(await ioA.get('io:set') === null, 'GET via A after DEL');
    expect(await ioA.del('io:set') === 0, 'DEL of a free key');
  },

  async set_nx_ex() {
    expect(await ioA.set('io:ex', 'tok-a', 'NX', 'EX', 5) === 'OK', 'SET NX EX via A');
    inRange(await ioB.ttl('io:ex'), 2, 5, 'TTL via B');
    expect(await ioB.set('io:ex', 'tok-b', 'NX', 'EX', 5) === null, 'SET NX EX via B while held');
    expect(await ioA.del('io:ex') === 1, 'DEL');
  },

  async define_command_eval_first() {
    // A hand-rolled release with node-redlock's exact script body: ioredis sends EVAL on the
    // first call, EVALSHA afterwards.
    const body = new Redlock([ioA]).scripts.releaseScript.value;
    ioA.defineCommand('lockRelease', { numberOfKeys: 1, lua: body });
    expect(await ioA.set('io:def', 'tok-a', 'PX', 5000, 'NX') === 'OK', 'SET');
    expect(await ioA.lockRelease('io:def', 'tok-wrong') === 0, 'release with a wrong token (EVAL)');
    expect(await ioA.lockRelease('io:def', 'tok-a') === 1, 'release (EVALSHA)');
    expect(await ioB.exists('io:def') === 0, 'released');
  },

  async unknown_script_refused() {
    ioA.defineCommand('notALock', { numberOfKeys: 1, lua: "return redis.call('get', KEYS[1])" });
    const e = await rejection(ioA.notALock('io:x'), 'an arbitrary script');
    expect(/lock/i.test(e.message) && !/^NOSCRIPT/.test(e.message), `error: ${e.message}`);
    const missing = await rejection(ioA.evalsha('e9f69f2beb755be68b5e456ee2ce9aadfbc4ebf4', 1, 'io:x', 'v'),
      'EVALSHA of an unknown SHA1');
    expect(/^NOSCRIPT/.test(missing.message), `error: ${missing.message}`);
  },
}, async () => {
  ioA.disconnect();
  ioB.disconnect();
});
