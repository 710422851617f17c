// Per-VU state shared by the k6 module implementations (each VU is its own worker thread, so
// each has its own copy, as each k6 VU has its own JavaScript runtime).
import { parentPort, workerData } from 'node:worker_threads';
import { createRequire } from 'node:module';
import path from 'node:path';

export const vu = workerData.vu;
export const scriptDir = path.dirname(workerData.script);
export const state = { iteration: -1, scenario: workerData.scenario?.name ?? 'default', iterationInScenario: -1 };
// npm packages (gRPC, WebSocket) installed by scripts/bootstrap-ops.sh.
export const requireDep = createRequire(path.join(workerData.nodeModules, 'package.json'));

const buffer = [];
export function emit(metric, type, value, tags = {}, contains = 'default') {
  buffer.push([metric, type, value, tags, contains]);
  if (buffer.length >= 2000) flush();
}
export function flush() {
  if (buffer.length) parentPort.postMessage({ kind: 'samples', samples: buffer.splice(0) });
}
setInterval(flush, 250).unref();

export function parseDuration(d) {
  if (typeof d === 'number') return d; // milliseconds, as in k6
  let ms = 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
  let m;
  let seen = '';
  while ((m = re.exec(d)) !== null) {
    ms += Number(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2]];
    seen += m[0];
  }
  if (seen !== String(d)) throw new Error(`bad duration ${d}`);
  return ms;
}
