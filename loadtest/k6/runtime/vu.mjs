// One virtual user (or the setup/teardown VU 0): a worker thread with its own copy of the
// script, as k6 gives each VU its own runtime.
import { register } from 'node:module';
import { parentPort, workerData } from 'node:worker_threads';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

register('./hooks.mjs', import.meta.url);

const { script, role, env, vu, scenario, sharedCounter } = workerData;
globalThis.__ENV = env;
globalThis.__VU = vu;
globalThis.__ITER = 0;
// k6's init-context open(): a file relative to the script.
globalThis.open = (file, mode) => {
  const data = fs.readFileSync(path.resolve(path.dirname(script), file));
  return mode === 'b' ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) : data.toString('utf8');
};

const ctx = await import('./context.mjs');
process.on('unhandledRejection', (e) => {
  console.error(`VU ${vu}: unhandled rejection: ${e?.stack ?? e}`);
});

function send(msg) {
  ctx.flush();
  parentPort.postMessage(msg);
}

let mod = null;
try {
  mod = await import(pathToFileURL(script).href);
} catch (e) {
  send({ kind: 'fatal', error: `loading ${script}: ${e?.stack ?? e}` });
}

if (!mod) {
  // reported above
} else if (role === 'options') {
  send({ kind: 'options', options: JSON.parse(JSON.stringify(mod.options ?? {})), hasSetup: typeof mod.setup === 'function', hasTeardown: typeof mod.teardown === 'function' });
} else if (role === 'setup' || role === 'teardown') {
  try {
    const out = await mod[role](workerData.data);
    send({ kind: role, data: out === undefined ? null : JSON.parse(JSON.stringify(out)) });
  } catch (e) {
    send({ kind: 'fatal', error: `${role}: ${e?.stack ?? e}` });
  }
} else {
  const fn = mod[scenario.exec ?? 'default'];
  if (typeof fn !== 'function') {
    send({ kind: 'fatal', error: `the script exports no function ${scenario.exec ?? 'default'}` });
  } else {
    // As in k6, every VU is initialised before any starts its iterations.
    send({ kind: 'ready' });
    await new Promise((resolve) => parentPort.once('message', resolve));
    const deadline = Date.now() + scenario.maxMs;
    const counter = sharedCounter ? new Int32Array(sharedCounter) : null;
    for (let i = 0; ; i++) {
      if (Date.now() >= deadline) break;
      if (scenario.executor === 'per-vu-iterations' && i >= scenario.iterations) break;
      let n = i;
      if (counter) {
        n = Atomics.add(counter, 0, 1);
        if (n >= scenario.iterations) break;
      }
      globalThis.__ITER = i;
      ctx.state.iteration = i;
      ctx.state.iterationInScenario = n;
      const started = performance.now();
      let ok = true;
      try {
        await fn(workerData.data);
      } catch (e) {
        ok = false;
        console.error(`VU ${vu} iteration ${i}: ${e?.stack ?? e}`);
        if (e?.abortTest) {
          send({ kind: 'abort', reason: String(e.message) });
          break;
        }
      }
      if (ok) {
        ctx.emit('iterations', 'counter', 1, { scenario: scenario.name });
        ctx.emit('iteration_duration', 'trend', performance.now() - started, { scenario: scenario.name }, 'time');
      }
    }
    send({ kind: 'done' });
  }
}
// The main thread ends this worker when it has the last message: sockets or timers the script
// left open do not keep the VU alive.
