'use strict';
// Shared by the Node.js compatibility scripts: argument parsing, assertions, and a runner that
// prints `ok <check>` per passed check and exits 1 with `FAIL <check>: <reason>` at the first
// mismatch. Usage of every script: node <script>.js --a HOST:PORT --b HOST:PORT

const fs = require('fs');
const path = require('path');

class Mismatch extends Error {}

/** The installed version of `pkg` (the folder name under node_modules, aliases included). */
function version(pkg) {
  // Some packages do not export their package.json, so it is found next to the main file.
  let dir = path.dirname(require.resolve(pkg));
  for (let i = 0; i < 8; i++) {
    const file = path.join(dir, 'package.json');
    if (path.basename(dir) === pkg && fs.existsSync(file)) {
      return JSON.parse(fs.readFileSync(file, 'utf8')).version.replace(/^v/, '');
    }
    dir = path.dirname(dir);
  }
  throw new Error(`no package.json found for ${pkg}`);
}

function expect(cond, what) {
  if (!cond) throw new Mismatch(what);
}

/** low < value <= high, for TTLs that shrink while the test runs. */
function inRange(value, low, high, what) {
  expect(typeof value === 'number' && value > low && value <= high,
    `${what}: ${JSON.stringify(value)} not in (${low}, ${high}]`);
}

/** A promise's rejection, or a mismatch when it resolves. */
async function rejection(promise, what) {
  try {
    const value = await promise;
    throw new Mismatch(`${what}: resolved with ${JSON.stringify(value)}`);
  } catch (e) {
    if (e instanceof Mismatch) throw e;
    return e;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The two proxies from argv, as { host, port }. */
function proxies() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i + 1 < argv.length; i += 2) {
    const m = /^--(a|b)$/.exec(argv[i]);
    const addr = /^(.+):(\d+)$/.exec(argv[i + 1]);
    if (m && addr) out[m[1]] = { host: addr[1], port: Number(addr[2]) };
  }
  if (!out.a || !out.b) {
    console.error('usage: node <script> --a HOST:PORT --b HOST:PORT');
    process.exit(2);
  }
  return out;
}

const TOKEN = /^[0-9a-f]{32}$/;

/** Runs `checks` ({ name: async () => ... }) in order; `cleanup` runs whatever happened. */
async function run(version, checks, cleanup) {
  console.log(`version ${version}`);
  let code = 0;
  for (const [name, check] of Object.entries(checks)) {
    try {
      await check();
      console.log(`ok ${name}`);
    } catch (e) {
      console.log(`FAIL ${name}: ${e && e.name}: ${e && e.message}`);
      console.error(e);
      code = 1;
      break;
    }
  }
  try {
    await cleanup();
  } catch (e) {
    console.error('cleanup:', e);
  }
  if (code === 0) console.log('done');
  // Exit even if a client still holds a socket or timer open.
  process.exit(code);
}

module.exports = { version, Mismatch, expect, inRange, rejection, sleep, proxies, run, TOKEN };
