// `k6/net/grpc`: Client with load, connect, asyncInvoke and close; status constants. Messages
// follow the protobuf JSON mapping as in k6: requests may use either field-name style, responses
// use lowerCamelCase, enums as names, 64-bit integers as strings.
import path from 'node:path';
import { emit, requireDep, scriptDir, parseDuration } from './context.mjs';

const grpc = requireDep('@grpc/grpc-js');
const protoLoader = requireDep('@grpc/proto-loader');

export const StatusOK = 0;
export const StatusCanceled = 1;
export const StatusUnknown = 2;
export const StatusInvalidArgument = 3;
export const StatusDeadlineExceeded = 4;
export const StatusNotFound = 5;
export const StatusAlreadyExists = 6;
export const StatusPermissionDenied = 7;
export const StatusResourceExhausted = 8;
export const StatusFailedPrecondition = 9;
export const StatusAborted = 10;
export const StatusOutOfRange = 11;
export const StatusUnimplemented = 12;
export const StatusInternal = 13;
export const StatusUnavailable = 14;
export const StatusDataLoss = 15;
export const StatusUnauthenticated = 16;

const snake = (k) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const camel = (k) => k.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
function mapKeys(v, f) {
  if (Array.isArray(v)) return v.map((x) => mapKeys(x, f));
  if (v && typeof v === 'object' && !Buffer.isBuffer(v)) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [f(k), mapKeys(x, f)]));
  }
  if (Buffer.isBuffer(v)) return v.toString('base64');
  return v;
}

function metadataObject(md) {
  const out = {};
  if (!md) return out;
  for (const [k, v] of Object.entries(md.getMap())) out[k] = [Buffer.isBuffer(v) ? v.toString('base64') : v];
  return out;
}

export class Client {
  constructor() {
    this.methods = new Map();
    this.client = null;
  }

  load(importPaths, ...files) {
    const dirs = (importPaths ?? []).map((d) => path.resolve(scriptDir, d));
    const resolved = files.map((f) => {
      if (path.isAbsolute(f)) return f;
      // Like k6: relative to an import path, else to the script.
      return f;
    });
    const def = protoLoader.loadSync(resolved, {
      includeDirs: dirs.length ? dirs : [scriptDir],
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    for (const service of Object.values(def)) {
      if (!service || typeof service !== 'object' || service.format) continue;
      for (const m of Object.values(service)) {
        if (m && m.path && m.requestSerialize) {
          this.methods.set(m.path, m);
          // protobufjs generates its codecs on first use; pay that here, not in the first
          // measured call (k6's Go codecs have no such cost).
          m.responseDeserialize(m.responseSerialize({}));
          m.requestDeserialize(m.requestSerialize({}));
        }
      }
    }
    return [...this.methods.keys()];
  }

  connect(address, params = {}) {
    const creds = params.plaintext ? grpc.credentials.createInsecure() : grpc.credentials.createSsl();
    this.client = new grpc.Client(address, creds, { 'grpc.enable_retries': 0 });
    const timeout = parseDuration(params.timeout ?? '60s');
    return new Promise((resolve, reject) => {
      this.client.waitForReady(Date.now() + timeout, (err) => (err ? reject(new Error(`grpc connect ${address}: ${err.message}`)) : resolve(true)));
    });
  }

  invoke() {
    throw new Error('Client.invoke blocks in k6; this runner supports Client.asyncInvoke');
  }

  asyncInvoke(url, request, params = {}) {
    if (!this.client) throw new Error('connect first');
    const p = url.startsWith('/') ? url : `/${url}`;
    const m = this.methods.get(p);
    if (!m) throw new Error(`method ${p} not found in the loaded protos`);
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(params.metadata ?? {})) md.set(k, String(v));
    const options = {};
    if (params.timeout) options.deadline = Date.now() + parseDuration(params.timeout);
    const started = performance.now();
    return new Promise((resolve) => {
      let headers = {};
      const call = this.client.makeUnaryRequest(
        p,
        m.requestSerialize,
        m.responseDeserialize,
        mapKeys(request, snake),
        md,
        options,
        (err, reply) => {
          const status = err ? err.code : StatusOK;
          emit('grpc_req_duration', 'trend', performance.now() - started, { ...(params.tags ?? {}), name: p, status: String(status) }, 'time');
          resolve({
            status,
            message: err ? null : mapKeys(reply, camel),
            headers,
            trailers: metadataObject(err?.metadata),
            error: err ? { code: err.code, message: err.details, details: [] } : null,
          });
        },
      );
      call.on('metadata', (h) => {
        headers = metadataObject(h);
      });
    });
  }

  close() {
    this.client?.close();
    this.client = null;
  }
}

export default {
  Client,
  StatusOK,
  StatusCanceled,
  StatusUnknown,
  StatusInvalidArgument,
  StatusDeadlineExceeded,
  StatusNotFound,
  StatusAlreadyExists,
  StatusPermissionDenied,
  StatusResourceExhausted,
  StatusFailedPrecondition,
  StatusAborted,
  StatusOutOfRange,
  StatusUnimplemented,
  StatusInternal,
  StatusUnavailable,
  StatusDataLoss,
  StatusUnauthenticated,
};
