'use strict';
// Prints the Lua lock scripts of the installed node-redlock 5 and 4, one
// `<name> <body as hex>` per line, as each library sends them.

const { default: Redlock5 } = require('redlock');
const Redlock4 = require('redlock4');
const { version } = require('./check');

// Neither constructor touches its clients, so a placeholder client is enough.
const v5 = new Redlock5([{}]).scripts;
const v4 = new Redlock4([{}]).scripts;
const hex = (s) => Buffer.from(s, 'utf8').toString('hex');
console.log(`version redlock ${version('redlock')} ${version('redlock4')}`);
console.log(`redlock5-acquire ${hex(v5.acquireScript.value)}`);
console.log(`redlock5-extend ${hex(v5.extendScript.value)}`);
console.log(`redlock5-release ${hex(v5.releaseScript.value)}`);
console.log(`redlock4-lock ${hex(v4.lockScript.value)}`);
console.log(`redlock4-extend ${hex(v4.extendScript.value)}`);
console.log(`redlock4-unlock ${hex(v4.unlockScript.value)}`);
