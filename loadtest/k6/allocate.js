// Watchman Allocate and Release over gRPC, as the product backend calls them.
//
// Each iteration allocates a new document (served from the warm buffer, or cold when it is
// empty), allocates it again (the idempotent existing-document path), and releases it (its pod
// is deleted; the reconciler refills the buffer).
//
// Goals (docs/benchmarks.md, "Watchman Allocate"): warm Allocate p99 under 5 ms. Correctness:
// every call answered OK, no RESOURCE_EXHAUSTED, the second Allocate returns the same pod.
//
// Environment: see lib.js (WATCHMAN_ADDR, PLAN, API_TOKEN/API_TOKEN_FILE, SMOKE), plus
//   VUS (4), DURATION (60s), ITERATIONS (unset: run for DURATION), PACE seconds between a VU's
//   iterations (0.25: leaves the reconciler time to refill the buffer; 0 for a burst), WARMUP
//   seconds each VU waits after connecting, before its first measured call (1).
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { Watchman, StatusOK, thresholds, runId } from './lib.js';

const allocateMs = new Trend('allocate_duration', true);
const releaseMs = new Trend('release_duration', true);
const exhausted = new Counter('allocate_exhausted');
const errors = new Counter('errors');

const WARMUP = Number(__ENV.WARMUP || 1);
const VUS = Number(__ENV.VUS || 4);
const PACE = Number(__ENV.PACE || 0.25);
const scenario = __ENV.ITERATIONS
  ? { executor: 'shared-iterations', vus: VUS, iterations: Number(__ENV.ITERATIONS), maxDuration: __ENV.MAX_DURATION || '10m' }
  : { executor: 'constant-vus', vus: VUS, duration: __ENV.DURATION || '60s' };

export const options = {
  scenarios: { allocate: scenario },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(99)'],
  thresholds: thresholds(
    {
      checks: ['rate==1'],
      errors: ['count==0'],
      allocate_exhausted: ['count==0'],
    },
    {
      // Goal: warm Allocate p99 under 5 ms.
      'allocate_duration{launch:warm}': ['p(99)<5'],
    },
  ),
};

const watchman = new Watchman();
const run = runId();

export default async function () {
  const doc = `k6-alloc-${run}-${__VU}-${__ITER}`;
  if (__ITER === 0 && watchman) {
    // Connect, then let every VU get this far before measuring: VUs starting at once on a
    // small machine would otherwise measure each other's start-up.
    await watchman.connect();
    await sleep(WARMUP);
  }
  try {
    const first = await watchman.allocate(doc, `k6-${__VU}`);
    if (first.response.status === 8) exhausted.add(1);
    allocateMs.add(first.ms, { launch: first.launch, call: 'new' });
    const ok = check(first.response, {
      'new document allocated': (r) => r.status === StatusOK,
      'token and websocket_url returned': (r) => r.status === StatusOK && r.message.token.length > 0 && r.message.websocketUrl.startsWith('ws'),
    });
    if (!ok) {
      console.error(`Allocate ${doc}: status ${first.response.status} ${JSON.stringify(first.response.error)}`);
      return;
    }
    const again = await watchman.allocate(doc, `k6-${__VU}`);
    allocateMs.add(again.ms, { launch: again.launch, call: 'again' });
    check(again.response, {
      'second Allocate is the existing pod': (r) =>
        r.status === StatusOK && r.message.launch === 'LAUNCH_KIND_EXISTING' && r.message.pod === first.response.message.pod,
    });
    const started = Date.now();
    const released = await watchman.release(doc);
    releaseMs.add(Date.now() - started);
    check(released, { released: (r) => r.status === StatusOK && r.message.released === true });
  } catch (e) {
    errors.add(1);
    console.error(`iteration failed: ${e}`);
  }
  if (PACE > 0) await sleep(PACE);
}
