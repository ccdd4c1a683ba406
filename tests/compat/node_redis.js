'use strict';
// node-redis (`redis` on npm), in its default protocol, against two proxies over the same
// masters: the proxy's own LOCK/UNLOCK commands through sendCommand(), and lock-shaped SETs.

const { createClient } = require('redis');
const { version, expect, inRange, proxies, run, TOKEN } = require('./check');

const { a, b } = proxies();
const rA = createClient({ socket: { host: a.host, port: a.port, reconnectStrategy: false } });
const rB = createClient({ socket: { host: b.host, port: b.port, reconnectStrategy: false } });
// An unhandled 'error' event would crash the process without saying which check failed.
for (const r of [rA, rB]) r.on('error', (e) => console.error('client error:', e));

run(`redis ${version('redis')}`, {
  async handshake() {
    await rA.connect();
    await rB.connect();
    expect(await rA.ping() === 'PONG', 'PING');
    // node-redis 6 speaks RESP3 by default: HELLO 3 must have succeeded.
    const info = String(await rB.sendCommand(['CLIENT', 'INFO']));
    expect(/\bresp=3\b/.test(info), `CLIENT INFO: ${info}`);
  },

  async lock_unlock() {
    const token = await rA.sendCommand(['LOCK', 'nr:cmd', '5000']);
    expect(typeof token === 'string' && TOKEN.test(token), `LOCK token ${token}`);
    expect(await rB.sendCommand(['LOCK', 'nr:cmd', '5000']) === null, 'LOCK via B while held');
    inRange(await rB.sendCommand(['LOCKTTL', 'nr:cmd']), 3000, 5000, 'LOCKTTL via B');
    expect(await rB.sendCommand(['EXTEND', 'nr:cmd', token, '9000']) === 1, 'EXTEND via B');
    inRange(await rA.sendCommand(['LOCKTTL', 'nr:cmd']), 5000, 9000, 'LOCKTTL after EXTEND');
    expect(await rB.sendCommand(['UNLOCK', 'nr:cmd', token]) === 1, "UNLOCK via B with A's token");
    expect(await rA.sendCommand(['UNLOCK', 'nr:cmd', token]) === 0, 'second UNLOCK');
  },

  async set_px_nx() {
    // Sent as SET k v PX 5000 NX.
    expect(await rA.set('nr:set', 'tok-a', { NX: true, PX: 5000 }) === 'OK', 'SET via A');
    expect(await rB.set('nr:set', 'tok-b', { NX: true, PX: 5000 }) === null, 'SET via B while held');
    expect(await rB.get('nr:set') === 'tok-a', 'GET via B');
    inRange(await rB.pTTL('nr:set'), 3000, 5000, 'PTTL via B');
    expect(await rB.exists('nr:set') === 1, 'EXISTS via B');
    expect(await rB.del('nr:set') === 1, 'DEL via B of a held lock');
    expect(await rA.get('nr:set') === null, 'GET via A after DEL');
    expect(await rA.exists('nr:set') === 0, 'EXISTS via A after DEL');
  },

  async set_ex_nx() {
    // The newer option syntax: SET k v EX 5 NX.
    const opts = { expiration: { type: 'EX', value: 5 }, condition: 'NX' };
    expect(await rA.set('nr:ex', 'tok-a', opts) === 'OK', 'SET EX NX via A');
    inRange(await rB.ttl('nr:ex'), 2, 5, 'TTL via B');
    expect(await rB.set('nr:ex', 'tok-b', opts) === null, 'SET EX NX via B while held');
    expect(await rA.del('nr:ex') === 1, 'DEL');
  },
}, async () => {
  for (const r of [rA, rB]) if (r.isOpen) await r.close();
});
