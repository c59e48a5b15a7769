// Spends its CPU in three named functions, about 3:2:1, and prints the shares it
// measured itself (each call timed by the process's CPU clock, over the
// process's CPU time), for the profiler's tests to compare with.
// Usage: node --perf-basic-prof cpu_shares.js SECONDS (SIGTERM ends it early,
// shares printed all the same: the loop yields to the event loop between rounds)
'use strict';
let sink = 0;

function burnThree(n) {
  for (let i = 0; i < n; i++) sink = (sink + i * i) % 1000003;
}

function burnTwo(n) {
  for (let i = 0; i < n; i++) sink = (sink + i * i) % 1000003;
}

function burnOne(n) {
  for (let i = 0; i < n; i++) sink = (sink + i * i) % 1000003;
}

function cpu() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

const seconds = Number(process.argv[2] || 5);
const unit = 200000;
const spent = [0, 0, 0];
const start = cpu();
const begin = Date.now();
let stop = false;
process.on('SIGTERM', () => { stop = true; });

function round() {
  const t = cpu();
  burnThree(3 * unit);
  const t2 = cpu();
  burnTwo(2 * unit);
  const t3 = cpu();
  burnOne(unit);
  const t4 = cpu();
  spent[0] += t2 - t;
  spent[1] += t3 - t2;
  spent[2] += t4 - t3;
  if (stop || (Date.now() - begin) / 1000 >= seconds) {
    const total = cpu() - start;
    console.log(JSON.stringify({
      pid: process.pid, burnThree: spent[0] / total, burnTwo: spent[1] / total, burnOne: spent[2] / total,
    }));
    return;
  }
  setImmediate(round);
}

round();
