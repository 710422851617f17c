// Many collaborators in one document over Middleman's WebSocket while one of them runs a cell
// that floods output: `for i in range(2000): print(i, flush=True)`. Every collaborator must
// receive every line, in order, exactly once; a collaborator that falls behind is resynchronised
// with a snapshot (a new `welcome`), which carries the cell's outputs so far, and goes on.
//
// setup() allocates the document; each VU then calls Allocate for the same document with its own
// user (the idempotent existing-document path: the same pod, a token of its own), connects, and
// waits. VU 1 waits until every collaborator is present, sets the first cell's source
// (`set_source`) and runs it (`execute_cell`).
//
// Goals (docs/benchmarks.md, "Collaborators in one document while a cell floods output"): every
// client has every line, in order, once (Jupyter Server delivers it to none); and the time until
// every client has every line is the kernel's own time to print them (6-7 s for 20,000 lines, so
// well under 10 s for the default 2,000: the timing threshold).
//
// Environment: see lib.js (WATCHMAN_ADDR, PLAN, API_TOKEN/API_TOKEN_FILE, SMOKE), plus
//   VUS (20) collaborators, LINES (2000), MAX_DURATION (3m).
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import exec from 'k6/execution';
import { setTimeout } from 'k6/timers';
import { Watchman, DocumentConnection, StatusOK, thresholds, runId, streamText } from './lib.js';

const VUS = Number(__ENV.VUS || 20);
const LINES = Number(__ENV.LINES || 2000);
const CODE = `for i in range(${LINES}): print(i, flush=True)`;

const everyLine = new Rate('collab_every_line');
const delivery = new Trend('collab_delivery', true);
const resyncs = new Counter('collab_resyncs');
const errors = new Counter('errors');

export const options = {
  scenarios: {
    collaborate: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, maxDuration: __ENV.MAX_DURATION || '3m' },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(99)'],
  thresholds: thresholds(
    {
      checks: ['rate==1'],
      errors: ['count==0'],
      collab_every_line: ['rate==1'],
    },
    {
      collab_delivery: ['p(99)<10000'],
    },
  ),
};

const watchman = new Watchman();

export async function setup() {
  const doc = `k6-collab-${runId()}`;
  const a = await watchman.allocate(doc, 'k6-collab-setup');
  if (a.response.status !== StatusOK) {
    throw new Error(`Allocate ${doc}: status ${a.response.status} ${JSON.stringify(a.response.error)}`);
  }
  return { doc };
}

/** Lines 0..n-1, each once, in order. */
function complete(text, n) {
  const lines = text.split('\n');
  if (lines.pop() !== '') return false;
  return lines.length === n && lines.every((l, i) => l === String(i));
}

export default async function (data) {
  const driver = exec.vu.idInTest === 1;
  let conn = null;
  try {
    const a = await watchman.allocate(data.doc, `k6-collab-${__VU}`);
    if (!check(a.response, { 'joined the document': (r) => r.status === StatusOK })) return;
    conn = await DocumentConnection.open(a.response.message.websocketUrl, a.response.message.token);
    const cellId = conn.welcome.snapshot.cells[0].id;

    // Who is here, from the snapshot and presence events.
    const present = new Set(conn.welcome.snapshot.presence.map((p) => p.client));
    let everyone = null;
    const allHere = new Promise((resolve) => (everyone = resolve));
    if (present.size >= VUS) everyone();

    // The flooding execution, followed through events and any resynchronisation.
    let execution = null;
    let text = '';
    let startedAt = null;
    let finish = null;
    const finished = new Promise((resolve) => (finish = resolve));
    conn.onMessage((m) => {
      if (m.type === 'presence') {
        present.add(m.client);
        if (present.size >= VUS) everyone();
      } else if (m.type === 'presence_left') {
        present.delete(m.client);
      } else if (m.type === 'execution_queued' && m.execution.cell_id === cellId && m.execution.code === CODE) {
        execution = m.execution.id;
      } else if (m.type === 'execution_started' && m.execution_id === execution) {
        startedAt = m.receivedAt;
      } else if (m.type === 'output' && m.execution_id === execution) {
        if (m.output.output_type === 'stream' && m.output.name === 'stdout') text += m.output.text;
      } else if (m.type === 'execution_finished' && m.execution_id === execution) {
        finish(m);
      } else if (m.type === 'welcome' && m !== conn.welcome) {
        // Resynchronised: the snapshot holds the cell's outputs up to its last_seq.
        resyncs.add(1);
        const s = m.snapshot;
        const cell = s.cells.find((c) => c.id === cellId);
        text = cell ? streamText(cell.outputs) : '';
        const running = s.executions.find((e) => e.cell_id === cellId && e.code === CODE);
        if (running) execution = running.id;
        else if (execution && cell && (cell.state === 'idle' || cell.state === 'error')) finish({ status: cell.state === 'idle' ? 'ok' : 'error', resynced: true });
      }
    });

    if (driver) {
      const timeout = new Promise((resolve) => setTimeout(() => resolve('timeout'), 60000));
      const r = await Promise.race([allHere, timeout]);
      check(r, { 'every collaborator joined before the run': (x) => x !== 'timeout' });
      conn.send({ type: 'set_source', cell_id: cellId, source: CODE });
      conn.send({ type: 'execute_cell', cell_id: cellId, request_id: 'flood' });
    }
    const outcome = await Promise.race([
      finished,
      conn.closedPromise.then((code) => ({ closed: code })),
      new Promise((resolve) => setTimeout(() => resolve({ timedOut: true }), 150000)),
    ]);
    if (startedAt !== null) delivery.add(Date.now() - startedAt);
    const ok = complete(text, LINES);
    everyLine.add(ok);
    check(outcome, {
      'the cell finished ok': (o) => o.status === 'ok',
      'every line received, in order, once': () => ok,
    });
    if (!ok) {
      const got = text.split('\n').length - 1;
      const how = outcome.closed ? `connection closed ${outcome.closed}` : outcome.timedOut ? 'no execution_finished' : 'finished';
      console.error(`VU ${__VU}: ${got} lines, ${how}`);
    }
  } catch (e) {
    errors.add(1);
    everyLine.add(false);
    console.error(`VU ${__VU}: ${e}`);
  } finally {
    if (conn) await conn.close();
  }
}

export async function teardown(data) {
  const r = await watchman.release(data.doc);
  check(r, { 'document released': (x) => x.status === StatusOK && x.message.released === true });
}
