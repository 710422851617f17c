// A document session over Middleman's WebSocket, as the web client runs it: Allocate a new
// document (gRPC), connect with the returned token, run cells with the `execute` message, wait
// for each `execution_finished`, check the outputs, then Release the document.
//
// Goals (docs/benchmarks.md): Allocate to first result p50 under 50 ms ("Watchman Allocate");
// an execute round trip (`1+1`) at least 4x faster than stock Jupyter Server's 44 ms, so p50
// under 11 ms ("Execute round trip"). Correctness: every cell's output is the expected one.
//
// Environment: see lib.js (WATCHMAN_ADDR, PLAN, API_TOKEN/API_TOKEN_FILE, SMOKE), plus
//   VUS (2), DURATION (60s), ITERATIONS (unset: run for DURATION), ROUND_TRIPS (`1+1`
//   executions per session, 20), PACE seconds between a VU's sessions (1), WARMUP seconds each
//   VU waits after connecting, before its first session (1),
//   WS_URL and TOKEN: skip Watchman and use this Middleman and token (e.g. `middleman serve`
//   with a token from `middleman token`); the session's document is then not released.
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { Watchman, DocumentConnection, StatusOK, thresholds, runId, streamText, resultText } from './lib.js';

const firstResult = new Trend('time_to_first_result', true);
const roundTrip = new Trend('execute_round_trip', true);
const roundTrips = new Counter('round_trips');
const errors = new Counter('errors');

const WARMUP = Number(__ENV.WARMUP || 1);
const VUS = Number(__ENV.VUS || 2);
const ROUND_TRIPS = Number(__ENV.ROUND_TRIPS || 20);
const PACE = Number(__ENV.PACE || 1);
const DIRECT = Boolean(__ENV.WS_URL && __ENV.TOKEN);
const scenario = __ENV.ITERATIONS
  ? { executor: 'shared-iterations', vus: VUS, iterations: Number(__ENV.ITERATIONS), maxDuration: __ENV.MAX_DURATION || '10m' }
  : { executor: 'constant-vus', vus: VUS, duration: __ENV.DURATION || '60s' };

export const options = {
  scenarios: { session: scenario },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(99)'],
  thresholds: thresholds(
    {
      checks: ['rate==1'],
      errors: ['count==0'],
      round_trips: ['count>0'],
    },
    Object.assign(
      {
        // Goal: at least 4x faster than Jupyter Server's 44 ms round trip.
        execute_round_trip: ['med<11'],
      },
      DIRECT ? {} : {
        // Goal: Allocate to first result p50 under 50 ms.
        time_to_first_result: ['med<50'],
      },
    ),
  ),
};

const watchman = DIRECT ? null : new Watchman();
const run = runId();

// Cells and what they must print. The first one is timed from the Allocate call.
const CELLS = [
  { code: '6*7', check: (o) => resultText(o.outputs) === '42' && o.finished.status === 'ok' },
  { code: 'print("hello from k6")', check: (o) => streamText(o.outputs) === 'hello from k6\n' },
  { code: 'import math\nx = math.factorial(20)\nx', check: (o) => resultText(o.outputs) === '2432902008176640000' },
  { code: 'for i in range(3):\n    print(i)', check: (o) => streamText(o.outputs) === '0\n1\n2\n' },
  {
    code: '1/0',
    check: (o) => o.finished.status === 'error' && o.outputs.some((x) => x.output_type === 'error' && x.ename === 'ZeroDivisionError'),
  },
];

export default async function () {
  const doc = `k6-session-${run}-${__VU}-${__ITER}`;
  if (__ITER === 0 && watchman) {
    // Connect, then let every VU get this far before measuring: VUs starting at once on a
    // small machine would otherwise measure each other's start-up.
    await watchman.connect();
    await sleep(WARMUP);
  }
  let conn = null;
  try {
    let url = __ENV.WS_URL;
    let token = __ENV.TOKEN;
    if (!DIRECT) await watchman.connect();
    const started = Date.now();
    if (!DIRECT) {
      const a = await watchman.allocate(doc, `k6-${__VU}`);
      if (!check(a.response, { 'document allocated': (r) => r.status === StatusOK })) {
        console.error(`Allocate ${doc}: status ${a.response.status} ${JSON.stringify(a.response.error)}`);
        return;
      }
      url = a.response.message.websocketUrl;
      token = a.response.message.token;
    }
    conn = await DocumentConnection.open(url, token);
    check(conn.welcome, {
      'welcome for this document': (w) => w.protocol === 1 && (DIRECT || w.document === doc) && w.role === 'editor',
    });
    for (let i = 0; i < CELLS.length; i++) {
      const result = await conn.execute(CELLS[i].code, `cell-${i}`);
      if (i === 0 && !DIRECT) firstResult.add(Date.now() - started);
      check(result, { [`cell ${i + 1} output`]: CELLS[i].check });
    }
    for (let i = 0; i < ROUND_TRIPS; i++) {
      const result = await conn.execute('1+1', `rt-${i}`);
      roundTrip.add(result.ms);
      roundTrips.add(1);
      check(result, { '1+1 is 2': (o) => resultText(o.outputs) === '2' });
    }
  } catch (e) {
    errors.add(1);
    console.error(`session ${doc}: ${e}`);
  } finally {
    if (conn) await conn.close();
    if (!DIRECT) {
      const r = await watchman.release(doc);
      check(r, { 'document released': (x) => x.status === StatusOK });
    }
  }
  if (PACE > 0) await sleep(PACE);
}
