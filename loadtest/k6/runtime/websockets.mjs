// `k6/websockets`: the browser-style WebSocket (open, message, error, close events; send,
// close, ping), with k6's ws_* metrics.
import { emit, requireDep } from './context.mjs';

const WS = requireDep('ws');

export class WebSocket {
  constructor(url, protocols, params = {}) {
    this.url = url;
    this.binaryType = 'arraybuffer';
    this.onopen = this.onmessage = this.onerror = this.onclose = this.onping = this.onpong = null;
    this._listeners = {};
    this._tags = { ...(params.tags ?? {}), url };
    const started = performance.now();
    this._ws = new WS(url, protocols ?? [], { headers: params.headers ?? {}, perMessageDeflate: false });
    this._ws.on('open', () => {
      emit('ws_connecting', 'trend', performance.now() - started, this._tags, 'time');
      emit('ws_sessions', 'counter', 1, this._tags);
      this._dispatch('open', { type: 'open' });
    });
    this._ws.on('message', (data, isBinary) => {
      emit('ws_msgs_received', 'counter', 1, this._tags);
      let payload;
      if (!isBinary) payload = data.toString('utf8');
      else if (this.binaryType === 'blob') payload = new Blob([data]);
      else payload = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
      this._dispatch('message', { type: 'message', data: payload, timestamp: Date.now() });
    });
    this._ws.on('ping', () => this._dispatch('ping', { type: 'ping' }));
    this._ws.on('pong', () => this._dispatch('pong', { type: 'pong' }));
    this._ws.on('error', (err) => this._dispatch('error', { type: 'error', error: err.message }));
    this._ws.on('unexpected-response', (req, res) => {
      this._dispatch('error', { type: 'error', error: `unexpected server response: ${res.statusCode}` });
      req.destroy();
      this._closed(1006, '');
    });
    this._ws.on('close', (code, reason) => this._closed(code, reason.toString()));
    this._done = false;
    this._started = started;
  }

  get readyState() {
    return this._ws.readyState;
  }

  _closed(code, reason) {
    if (this._done) return;
    this._done = true;
    emit('ws_session_duration', 'trend', performance.now() - this._started, this._tags, 'time');
    this._dispatch('close', { type: 'close', code, reason });
  }

  _dispatch(type, event) {
    const handler = this[`on${type}`];
    if (handler) handler.call(this, event);
    for (const l of this._listeners[type] ?? []) l.call(this, event);
  }

  addEventListener(type, listener) {
    (this._listeners[type] ??= []).push(listener);
  }

  send(data) {
    emit('ws_msgs_sent', 'counter', 1, this._tags);
    this._ws.send(data instanceof ArrayBuffer ? Buffer.from(data) : data);
  }

  ping() {
    this._ws.ping();
  }

  close(code, reason) {
    this._ws.close(code ?? 1000, reason);
  }
}

export const ReadyState = { Connecting: 0, Open: 1, Closing: 2, Closed: 3 };
export default { WebSocket, ReadyState };
