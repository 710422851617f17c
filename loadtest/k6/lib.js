// Shared by the k6 scripts here: configuration from the environment, Watchman's gRPC API, and a
// document connection to Middleman (JSON text frames; binary Yjs frames are ignored).
//
// Environment (k6 -e KEY=VALUE or the process environment):
//   WATCHMAN_ADDR    Watchman's gRPC address (127.0.0.1:50051)
//   PLAN             plan to allocate (free)
//   API_TOKEN        bearer token for the gRPC API; else read from API_TOKEN_FILE
//                    (~/.cache/nbplat/dev-keys/api-token, what `make run` uses)
//   WATCHMAN_TLS     1: the gRPC API speaks TLS
//   PROTO_DIR        where watchman/v1/watchman.proto is (../../proto, from this directory)
//   SMOKE            1: correctness thresholds only (a short functional run; timings are reported
//                    but not judged, as in the project's tests)
import grpc from 'k6/net/grpc';
import { WebSocket } from 'k6/websockets';
import { setTimeout, clearTimeout } from 'k6/timers';

export const ENV = __ENV;
export const WATCHMAN_ADDR = __ENV.WATCHMAN_ADDR || '127.0.0.1:50051';
export const PLAN = __ENV.PLAN || 'free';
export const SMOKE = __ENV.SMOKE === '1' || __ENV.SMOKE === 'true';
const home = __ENV.HOME || '/root';
const tokenFile = __ENV.API_TOKEN_FILE || `${__ENV.NBP_CACHE || `${home}/.cache/nbplat`}/dev-keys/api-token`;
// open() only works in the init context, so the token is read when the module loads.
export const API_TOKEN = (__ENV.API_TOKEN || (__ENV.WS_URL && __ENV.TOKEN ? '' : open(tokenFile))).trim();

/** Thresholds: the correctness ones always, the goals (timings) unless SMOKE. */
export function thresholds(correctness, goals) {
  return SMOKE ? correctness : Object.assign({}, correctness, goals);
}

/** A unique name for documents and users made by this run. */
export function runId() {
  return `${Date.now().toString(36)}-${Math.floor(Math.random() * 1e9).toString(36)}`;
}

const LAUNCH = {
  LAUNCH_KIND_WARM: 'warm',
  LAUNCH_KIND_COLD: 'cold',
  LAUNCH_KIND_EXISTING: 'existing',
};

export class Watchman {
  constructor() {
    this.client = new grpc.Client();
    // Relative to this file: the repository's proto/ directory.
    this.client.load([__ENV.PROTO_DIR || '../../proto'], 'watchman/v1/watchman.proto');
    this.connected = false;
  }

  async connect() {
    if (!this.connected) {
      await this.client.connect(WATCHMAN_ADDR, { plaintext: __ENV.WATCHMAN_TLS !== '1', timeout: '10s' });
      this.connected = true;
      // One call before anything is measured: the first on a connection pays for its set-up.
      const pools = await this.call('ListPools', {});
      if (pools.status !== grpc.StatusOK) {
        throw new Error(`ListPools: status ${pools.status} ${JSON.stringify(pools.error)}`);
      }
    }
  }

  async call(method, request) {
    await this.connect();
    return this.client.asyncInvoke(`watchman.v1.Watchman/${method}`, request, {
      metadata: { authorization: `Bearer ${API_TOKEN}` },
      timeout: '70s',
    });
  }

  /** Allocate; returns {response, ms, launch} (launch: warm, cold, existing, or the status). */
  async allocate(documentId, userId, extra = {}) {
    await this.connect();
    const started = Date.now();
    const response = await this.call('Allocate', Object.assign({
      document_id: documentId,
      plan: PLAN,
      user_id: userId,
      user_name: userId,
    }, extra));
    const ms = Date.now() - started;
    const launch = response.status === grpc.StatusOK ? LAUNCH[response.message.launch] || 'unknown' : `status_${response.status}`;
    return { response, ms, launch };
  }

  release(documentId) {
    return this.call('Release', { document_id: documentId });
  }

  close() {
    this.client.close();
    this.connected = false;
  }
}

export const StatusOK = grpc.StatusOK;

/**
 * A document connection: JSON frames in arrival order in `messages`; `waitFor` finds the next
 * one (after the previous match) satisfying a predicate.
 */
export class DocumentConnection {
  static open(url, token, timeoutMs = 15000) {
    const c = new DocumentConnection(url, token);
    return c.waitFor((m) => m.type === 'welcome', timeoutMs).then((welcome) => {
      c.welcome = welcome;
      return c;
    });
  }

  constructor(url, token) {
    this.messages = [];
    this.cursor = 0;
    this.waiters = [];
    this.closed = false;
    this.closeCode = null;
    this.error = null;
    this.listeners = [];
    this.ws = new WebSocket(url, null, { headers: { Authorization: `Bearer ${token}` } });
    this.ws.binaryType = 'arraybuffer';
    this.closedPromise = new Promise((resolve) => {
      this.ws.onclose = (e) => {
        this.closed = true;
        this.closeCode = e.code;
        for (const w of this.waiters.splice(0)) w.fail(new Error(`connection closed (${e.code}) while waiting`));
        resolve(e.code);
      };
    });
    this.ws.onerror = (e) => {
      this.error = e.error;
    };
    this.ws.onmessage = (e) => {
      if (typeof e.data !== 'string') return; // Yjs sync and awareness: not for load tests
      const m = JSON.parse(e.data);
      m.receivedAt = Date.now();
      this.messages.push(m);
      for (const l of this.listeners) l(m);
      this.wake();
    };
  }

  /**
   * Calls `f` with every JSON message after the last one `waitFor` returned (those already
   * received first: several can arrive in one read, before the caller's `await` resumes).
   */
  onMessage(f) {
    for (const m of this.messages.slice(this.cursor)) f(m);
    this.listeners.push(f);
  }

  wake() {
    for (const w of this.waiters.slice()) {
      for (let i = this.cursor; i < this.messages.length; i++) {
        if (w.pred(this.messages[i])) {
          this.cursor = i + 1;
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.done(this.messages[i]);
          break;
        }
      }
    }
  }

  waitFor(pred, timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for a message`));
      }, timeoutMs);
      const w = {
        pred,
        done: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        fail: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      if (this.closed) {
        w.fail(new Error(`connection closed (${this.closeCode}) before the message`));
        return;
      }
      this.waiters.push(w);
      this.wake();
    });
  }

  send(message) {
    this.ws.send(JSON.stringify(message));
  }

  /**
   * Runs `code` with the `execute` message; resolves with {id, finished, outputs, ms} once its
   * `execution_finished` arrives.
   */
  async execute(code, requestId, timeoutMs = 60000) {
    const started = Date.now();
    this.send({ type: 'execute', code, request_id: requestId });
    const queued = await this.waitFor((m) => m.type === 'execution_queued' && m.request_id === requestId, timeoutMs);
    const id = queued.execution.id;
    const from = this.messages.indexOf(queued);
    const finished = await this.waitFor((m) => m.type === 'execution_finished' && m.execution_id === id, timeoutMs);
    const ms = Date.now() - started;
    const outputs = this.messages
      .slice(from, this.messages.indexOf(finished))
      .filter((m) => m.type === 'output' && m.execution_id === id)
      .map((m) => m.output);
    return { id, finished, outputs, ms };
  }

  close() {
    if (!this.closed) this.ws.close();
    return this.closedPromise;
  }
}

/** The text a stream (stdout by default) received, from nbformat outputs. */
export function streamText(outputs, name = 'stdout') {
  return outputs
    .filter((o) => o.output_type === 'stream' && o.name === name)
    .map((o) => (Array.isArray(o.text) ? o.text.join('') : o.text))
    .join('');
}

/** The text/plain of an execute_result, if any. */
export function resultText(outputs) {
  const r = outputs.find((o) => o.output_type === 'execute_result');
  if (!r) return null;
  const t = r.data['text/plain'];
  return Array.isArray(t) ? t.join('') : t;
}
