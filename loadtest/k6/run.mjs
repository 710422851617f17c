#!/usr/bin/env node
// Runs k6-style load scripts (this directory) with Node.js: k6 itself is not installed here (its
// licence, the AGPL, keeps it out of this project's tooling). The scripts use only k6's public
// script API (k6, k6/metrics, k6/net/grpc with asyncInvoke, k6/websockets, k6/timers,
// k6/execution; options with scenarios and thresholds) and should run unchanged under k6.
//
//   node loadtest/k6/run.mjs [--vus N] [--duration 30s] [--iterations N] [-e KEY=VALUE]...
//                            [--summary-export FILE] SCRIPT
//
// Every VU is a worker thread with its own copy of the script. Executors: per-vu-iterations,
// shared-iterations, constant-vus (and the top-level vus/duration/iterations shortcuts).
// Exit status: 0, 99 when a threshold failed, 107 when the script failed (as k6). Stricter than
// k6: a threshold on a Rate or Trend without samples fails (a Counter without samples counts 0).
import { Worker } from 'node:worker_threads';
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

function parseDuration(d) {
  if (typeof d === 'number') return d;
  let ms = 0;
  let seen = '';
  for (const m of String(d).matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    ms += Number(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2]];
    seen += m[0];
  }
  if (seen !== String(d) || !seen) throw new Error(`bad duration ${d}`);
  return ms;
}

function usage(msg) {
  if (msg) console.error(`run.mjs: ${msg}`);
  console.error('usage: node loadtest/k6/run.mjs [--vus N] [--duration D] [--iterations N] [-e KEY=VALUE]... [--summary-export FILE] SCRIPT');
  process.exit(2);
}

// ---- arguments ------------------------------------------------------------------------------
const args = process.argv.slice(2);
const cli = { env: {} };
let script = null;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const value = () => args[++i] ?? usage(`${a} needs a value`);
  if (a === '--vus' || a === '-u') cli.vus = Number(value());
  else if (a === '--duration' || a === '-d') cli.duration = value();
  else if (a === '--iterations' || a === '-i') cli.iterations = Number(value());
  else if (a === '-e' || a === '--env') {
    const kv = value();
    const eq = kv.indexOf('=');
    if (eq < 1) usage(`bad -e ${kv}`);
    cli.env[kv.slice(0, eq)] = kv.slice(eq + 1);
  } else if (a === '--summary-export') cli.summaryExport = value();
  else if (a === '-h' || a === '--help') usage();
  else if (a.startsWith('-')) usage(`unknown option ${a}`);
  else if (script) usage('one script at a time');
  else script = path.resolve(a);
}
if (!script) usage('no script');
const env = { ...process.env, ...cli.env };
const nodeModules = process.env.NBP_K6_NODE ?? path.join(process.env.NBP_CACHE ?? path.join(os.homedir(), '.cache', 'nbplat'), 'k6-node', 'node_modules');
if (!fs.existsSync(path.join(nodeModules, '@grpc', 'grpc-js'))) {
  console.error(`run.mjs: ${nodeModules} lacks the runner's packages; run scripts/bootstrap-ops.sh`);
  process.exit(107);
}

// ---- metrics --------------------------------------------------------------------------------
// name -> {type, contains, series: Map(tagsJSON -> {tags, values[] | count,sum | passes,total | last})}
const metrics = new Map();
function record([name, type, value, tags, contains]) {
  let m = metrics.get(name);
  if (!m) metrics.set(name, (m = { type, contains, series: new Map() }));
  if (value === null) return; // a declaration
  const key = JSON.stringify(tags);
  let s = m.series.get(key);
  if (!s) m.series.set(key, (s = { tags, values: [], count: 0, sum: 0, passes: 0, min: Infinity, max: -Infinity, last: 0 }));
  s.count += 1;
  s.sum += value;
  s.last = value;
  s.min = Math.min(s.min, value);
  s.max = Math.max(s.max, value);
  if (type === 'trend') s.values.push(value);
  if (type === 'rate' && value) s.passes += 1;
}

function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

// The aggregate of a metric, or of the samples carrying every tag in `filter` (a submetric).
function aggregate(name, filter, elapsedSec) {
  const m = metrics.get(name);
  if (!m) return null;
  const parts = [...m.series.values()].filter((s) => Object.entries(filter).every(([k, v]) => String(s.tags[k]) === v));
  const count = parts.reduce((a, s) => a + s.count, 0);
  const sum = parts.reduce((a, s) => a + s.sum, 0);
  const stats = { type: m.type, contains: m.contains, count };
  if (m.type === 'trend') {
    const values = parts.flatMap((s) => s.values).sort((a, b) => a - b);
    Object.assign(stats, { avg: count ? sum / count : NaN, min: values[0] ?? NaN, max: values.at(-1) ?? NaN, med: percentile(values, 50), values });
  } else if (m.type === 'counter') {
    Object.assign(stats, { count: sum, rate: sum / elapsedSec });
  } else if (m.type === 'rate') {
    const passes = parts.reduce((a, s) => a + s.passes, 0);
    Object.assign(stats, { rate: count ? passes / count : NaN, passes, fails: count - passes });
  } else {
    Object.assign(stats, { value: parts.at(-1)?.last ?? NaN, min: Math.min(...parts.map((s) => s.min)), max: Math.max(...parts.map((s) => s.max)) });
  }
  return stats;
}

function statValue(stats, stat) {
  const p = /^p\((\d+(?:\.\d+)?)\)$/.exec(stat);
  if (p) return stats.type === 'trend' ? percentile(stats.values, Number(p[1])) : NaN;
  return stats[stat];
}

// "p(99)<5", "rate==1", "count>0"
function evalThreshold(expr, stats) {
  const m = /^\s*(avg|min|max|med|count|rate|value|p\(\d+(?:\.\d+)?\))\s*(<=|>=|===|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$/.exec(expr);
  if (!m) throw new Error(`threshold "${expr}" is not of the form stat<op>number`);
  // What k6 accepts for each metric type.
  const allowed = { counter: ['count', 'rate'], gauge: ['value'], rate: ['rate'], trend: ['avg', 'min', 'max', 'med'] };
  if (stats && !(allowed[stats.type].includes(m[1]) || (stats.type === 'trend' && m[1].startsWith('p(')))) {
    throw new Error(`threshold "${expr}": k6 has no ${m[1]} for a ${stats.type}`);
  }
  const v = stats ? statValue(stats, m[1]) : NaN;
  const n = Number(m[3]);
  const ok = { '<': v < n, '<=': v <= n, '>': v > n, '>=': v >= n, '==': v === n, '===': v === n, '!=': v !== n }[m[2]];
  return { ok: Boolean(ok) && !Number.isNaN(v), value: v, stat: m[1] };
}

function parseMetricRef(ref) {
  const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:\{(.*)\})?$/.exec(ref);
  if (!m) throw new Error(`bad threshold metric ${ref}`);
  const filter = {};
  if (m[2]) {
    for (const part of m[2].split(',')) {
      const c = part.indexOf(':');
      filter[part.slice(0, c).trim()] = part.slice(c + 1).trim().replace(/^"(.*)"$/, '$1');
    }
  }
  return { name: m[1], filter };
}

// ---- workers --------------------------------------------------------------------------------
let fatal = null;
let aborted = null;
function startWorker(data, onMessage) {
  const w = new Worker(path.join(here, 'runtime', 'vu.mjs'), { workerData: { script, env, nodeModules, ...data } });
  const done = new Promise((resolve) => {
    w.on('message', (msg) => {
      if (msg.kind === 'samples') msg.samples.forEach(record);
      else if (msg.kind === 'fatal') {
        fatal ??= msg.error;
        w.terminate();
      } else if (msg.kind === 'abort') aborted ??= msg.reason;
      else if (onMessage(msg) === 'end') w.terminate();
    });
    w.on('error', (e) => {
      fatal ??= `VU ${data.vu}: ${e?.stack ?? e}`;
    });
    w.on('exit', resolve);
  });
  return { worker: w, done };
}

async function once(role, extra = {}) {
  let result;
  const { done } = startWorker({ role, vu: 0, ...extra }, (msg) => {
    result = msg;
    return 'end';
  });
  await done;
  if (fatal) {
    console.error(`run.mjs: ${fatal}`);
    process.exit(107);
  }
  return result;
}

const { options, hasSetup, hasTeardown } = await once('options');

// Scenarios, as k6 derives them: CLI shortcuts win over the script's scenarios.
let scenarios;
const shortcut = (o) => o.vus !== undefined || o.duration !== undefined || o.iterations !== undefined;
if (shortcut(cli) || !options.scenarios) {
  const vus = cli.vus ?? options.vus ?? 1;
  const duration = cli.duration ?? (cli.iterations === undefined ? options.duration : undefined);
  const iterations = cli.iterations ?? (cli.duration === undefined ? options.iterations : undefined);
  if (duration !== undefined && iterations === undefined) scenarios = { default: { executor: 'constant-vus', vus, duration } };
  else scenarios = { default: { executor: 'shared-iterations', vus, iterations: iterations ?? 1, maxDuration: duration ?? '10m' } };
} else {
  scenarios = options.scenarios;
}

const thresholds = Object.entries(options.thresholds ?? {}).map(([ref, list]) => ({
  ref,
  ...parseMetricRef(ref),
  exprs: (Array.isArray(list) ? list : [list]).map((t) => (typeof t === 'string' ? t : t.threshold)),
}));

const setupData = hasSetup ? (await once('setup')).data : null;

// Every VU is initialised (its copy of the script loaded) before the test starts, as in k6.
let nextVu = 1;
const vus = [];
for (const [name, sc] of Object.entries(scenarios)) {
  const executor = sc.executor;
  if (!['per-vu-iterations', 'shared-iterations', 'constant-vus'].includes(executor)) {
    console.error(`run.mjs: executor ${executor} (scenario ${name}) is not supported`);
    process.exit(107);
  }
  const maxMs = executor === 'constant-vus' ? parseDuration(sc.duration) : parseDuration(sc.maxDuration ?? '10m');
  const gracefulMs = parseDuration(sc.gracefulStop ?? '30s');
  const iterations = sc.iterations ?? 1;
  const sharedCounter = executor === 'shared-iterations' ? new SharedArrayBuffer(4) : null;
  const startAfter = parseDuration(sc.startTime ?? '0s');
  for (let i = 0; i < (sc.vus ?? 1); i++) {
    const vu = nextVu++;
    let ready;
    const isReady = new Promise((resolve) => (ready = resolve));
    const { worker, done } = startWorker(
      { role: 'vu', vu, data: setupData, sharedCounter, scenario: { name, executor, iterations, maxMs, exec: sc.exec } },
      (msg) => {
        if (msg.kind === 'ready') ready();
        return msg.kind === 'done' ? 'end' : undefined;
      },
    );
    vus.push({ vu, worker, done, isReady, startAfter, maxMs, gracefulMs });
  }
}
await Promise.race([Promise.all(vus.map((v) => v.isReady)), Promise.all(vus.map((v) => v.done))]);
if (fatal) {
  console.error(`run.mjs: ${fatal}`);
  vus.forEach((v) => v.worker.terminate());
  process.exit(107);
}
const started = Date.now();
const runs = vus.map(async (v) => {
  await new Promise((r) => setTimeout(r, v.startAfter));
  v.worker.postMessage({ kind: 'start' });
  const hardStop = setTimeout(() => {
    console.error(`run.mjs: VU ${v.vu} still running ${v.gracefulMs} ms after its scenario ended; stopped`);
    v.worker.terminate();
  }, v.maxMs + v.gracefulMs + 1000);
  await v.done;
  clearTimeout(hardStop);
});
await Promise.all(runs);
const elapsedSec = (Date.now() - started) / 1000;
if (hasTeardown) await once('teardown', { data: setupData });
if (fatal) {
  console.error(`run.mjs: ${fatal}`);
  process.exit(107);
}

// ---- summary --------------------------------------------------------------------------------
const trendStats = options.summaryTrendStats ?? ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)'];
const fmt = (v, contains) => {
  if (Number.isNaN(v) || v === undefined) return 'n/a';
  if (contains === 'time') return v >= 1000 ? `${(v / 1000).toFixed(2)}s` : `${v.toFixed(2)}ms`;
  return Number.isInteger(v) ? String(v) : v.toFixed(4);
};

const lines = [];
// Checks, by name.
const checks = metrics.get('checks');
if (checks) {
  const byName = new Map();
  for (const s of checks.series.values()) {
    const c = byName.get(s.tags.check) ?? { passes: 0, total: 0 };
    c.passes += s.passes;
    c.total += s.count;
    byName.set(s.tags.check, c);
  }
  for (const [name, c] of byName) {
    lines.push(c.passes === c.total ? `     ✓ ${name}` : `     ✗ ${name}\n      ↳  ${((100 * c.passes) / c.total).toFixed(0)}% — ✓ ${c.passes} / ✗ ${c.total - c.passes}`);
  }
  lines.push('');
}

let failed = false;
const results = {};
for (const t of thresholds) {
  const stats = aggregate(t.name, t.filter, elapsedSec);
  results[t.ref] = t.exprs.map((e) => {
    let r;
    try {
      r = evalThreshold(e, stats);
    } catch (err) {
      console.error(`run.mjs: ${err.message}`);
      process.exit(107);
    }
    if (!r.ok) failed = true;
    return { threshold: e, ok: r.ok, value: r.value };
  });
}

const rows = [];
const names = new Set([...metrics.keys(), ...thresholds.map((t) => t.name)]);
for (const name of [...names].sort()) {
  const refs = [name, ...thresholds.filter((t) => t.name === name && t.ref !== name).map((t) => t.ref)];
  for (const ref of refs) {
    const { filter } = parseMetricRef(ref);
    const stats = aggregate(name, filter, elapsedSec);
    const res = results[ref];
    const mark = res ? (res.every((r) => r.ok) ? '✓' : '✗') : ' ';
    let text;
    if (!stats) text = 'no samples';
    else if (stats.type === 'trend') text = trendStats.map((s) => `${s}=${fmt(statValue(stats, s), stats.contains)}`).join(' ');
    else if (stats.type === 'counter') text = `${fmt(stats.count)} ${stats.rate.toFixed(2)}/s`;
    else if (stats.type === 'rate') text = `${(100 * stats.rate).toFixed(2)}% ✓ ${stats.passes} ✗ ${stats.fails}`;
    else text = `value=${fmt(stats.value, stats.contains)} min=${fmt(stats.min, stats.contains)} max=${fmt(stats.max, stats.contains)}`;
    rows.push({ mark, ref: ref === name ? name : `  { ${ref.slice(name.length + 1, -1)} }`, text, res });
  }
}
for (const r of rows) {
  lines.push(`   ${r.mark} ${`${r.ref}`.padEnd(40, '.')}: ${r.text}`);
  for (const x of (r.res ?? []).filter((x) => !x.ok)) lines.push(`       threshold ${x.threshold} failed (${Number.isNaN(x.value) ? 'no data' : x.value})`);
}
lines.push('', `     running ${elapsedSec.toFixed(1)}s, ${nextVu - 1} VUs, scenarios: ${Object.keys(scenarios).join(', ')}`);
console.log(lines.join('\n'));

if (cli.summaryExport) {
  const out = { metrics: {}, thresholds: results };
  for (const name of metrics.keys()) {
    const { values, ...s } = aggregate(name, {}, elapsedSec);
    if (s.type === 'trend') for (const st of trendStats) s[st] = statValue({ ...s, values }, st);
    out.metrics[name] = s;
  }
  fs.writeFileSync(cli.summaryExport, JSON.stringify(out, null, 2));
}
if (aborted) {
  console.error(`run.mjs: test aborted: ${aborted}`);
  process.exit(108);
}
if (failed) {
  console.error('run.mjs: some thresholds have failed');
  process.exit(99);
}
