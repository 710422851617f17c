// A stock Jupyter client, @jupyterlab/services (what JupyterLab and VS Code use), against a Jupyter
// Server API: stock jupyter_server, or Middleman's under /jupyter/. It lists the kernelspecs, starts
// a kernel, runs code with every kind of output, answers input(), interrupts, restarts, completes,
// inspects and shuts the kernel down, asserting each step. Usage:
//   node jupyter-services-peer.mjs BASE_URL TOKEN KERNEL_NAME [legacy]
// BASE_URL is the server's base (http://127.0.0.1:8888/ or http://127.0.0.1:PORT/jupyter/); the
// WebSocket URL is derived from it. With `legacy`, the client cannot offer the
// v1.kernel.websocket.jupyter.org subprotocol, so the legacy JSON wire is used; the script asserts
// which one was. On success it prints one JSON line to stdout; on failure a message on stderr and
// exit code 1. JSP_TRACE=1 logs every REST call and kernel message to stderr.
import { createRequire } from "node:module";
import path from "node:path";

// The packages live in the test tool cache (NODE_PATH), which ESM imports do not search.
const require = createRequire(path.join(process.env.NODE_PATH ?? "", "noop.js"));
const WebSocket = require("ws");
const {
  KernelAPI,
  KernelManager,
  KernelSpecManager,
  ServerConnection,
} = require("@jupyterlab/services");

const V1 = "v1.kernel.websocket.jupyter.org";
const STEP_TIMEOUT_MS = 60_000;
const trace = process.env.JSP_TRACE === "1";

// The library logs progress with console.log/debug (stdout); stdout is for the summary only.
const toStderr = (...args) => console.error(...args);
console.log = trace ? toStderr : () => {};
console.debug = trace ? toStderr : () => {};
console.info = trace ? toStderr : () => {};

const [baseArg, token, kernelName, mode] = process.argv.slice(2);
if (!baseArg || token === undefined || !kernelName || (mode !== undefined && mode !== "legacy")) {
  console.error("usage: jupyter-services-peer.mjs BASE_URL TOKEN KERNEL_NAME [legacy]");
  process.exit(2);
}
const legacy = mode === "legacy";
const baseUrl = baseArg.endsWith("/") ? baseArg : baseArg + "/";
const wsUrl = "ws" + baseUrl.slice(4);

let currentStep = "setup";
let kernel;
function fail(message) {
  const state = kernel
    ? ` (kernel ${kernel.id}: status ${kernel.status}, connection ${kernel.connectionStatus}, ${sockets.length} WebSockets opened)`
    : "";
  console.error(`jupyter-services-peer: FAIL [${currentStep}] ${message}${state}`);
  process.exit(1);
}
function check(cond, message) {
  if (!cond) fail(message);
}
process.on("uncaughtException", (e) => fail(`uncaught: ${e?.stack ?? e}`));
process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${e?.stack ?? e}`));
// Nothing may keep the process alive past every step's deadline.
setTimeout(() => fail("overall timeout"), 11 * STEP_TIMEOUT_MS).unref();

// Every WebSocket the client opens, to check which wire form the server selected, and the
// frames received: v1 is binary only; legacy is text (binary only for messages with buffers).
const sockets = [];
const frames = { text: 0, binary: 0 };
function record(ws, url, offer) {
  sockets.push(ws);
  ws.on("message", (_data, isBinary) => (isBinary ? frames.binary++ : frames.text++));
  if (trace) console.error(`ws open ${url.replace(/token=[^&]*/, "token=…")} offer=${JSON.stringify(offer)}`);
}
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols, options) {
    super(url, protocols, options);
    record(this, url, protocols);
  }
}
// Drops the offered subprotocols, so the server cannot select v1.
class LegacyWebSocket extends WebSocket {
  constructor(url, _protocols, options) {
    super(url, [], options);
    record(this, url, []);
  }
}

// Every REST call as "METHOD /path status" (ids and the cache-busting query stripped).
const rest = [];
async function recordingFetch(input, init) {
  const req = input instanceof Request ? input : new Request(input, init);
  const response = await fetch(req);
  const u = new URL(req.url);
  const route = u.pathname.replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, "{id}");
  const entry = `${req.method} ${route} ${response.status}`;
  if (!rest.includes(entry)) rest.push(entry);
  if (trace) console.error(`rest ${req.method} ${u.pathname}${u.search} -> ${response.status}`);
  return response;
}

const serverSettings = ServerConnection.makeSettings({
  baseUrl,
  wsUrl,
  token,
  appendToken: true,
  WebSocket: legacy ? LegacyWebSocket : RecordingWebSocket,
  fetch: recordingFetch,
  Request,
  Headers,
});

function withTimeout(promise, what, ms = STEP_TIMEOUT_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms / 1000} s: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function step(name, fn) {
  currentStep = name;
  const started = Date.now();
  try {
    await withTimeout(Promise.resolve().then(fn), name);
  } catch (e) {
    fail(e?.stack ?? String(e));
  }
  if (trace) console.error(`step ${name} ok in ${Date.now() - started} ms`);
}

// Resolves when the kernel is connected and idle (its status signals, not polling).
function whenIdle(kernel, what) {
  return new Promise((resolve, reject) => {
    const ready = () => kernel.connectionStatus === "connected" && kernel.status === "idle";
    if (ready()) return resolve();
    const onChange = () => {
      if (kernel.status === "dead") {
        cleanup();
        reject(new Error(`kernel died while waiting for ${what}`));
      } else if (ready()) {
        cleanup();
        resolve();
      }
    };
    const cleanup = () => {
      kernel.statusChanged.disconnect(onChange);
      kernel.connectionStatusChanged.disconnect(onChange);
    };
    kernel.statusChanged.connect(onChange);
    kernel.connectionStatusChanged.connect(onChange);
  });
}

// Runs code with the library's defaults (silent false, store_history true, allow_stdin true,
// stop_on_error false, no metadata); returns the reply and the IOPub messages parented to it.
async function execute(kernel, code, { onStdin, onIOPub, content = {} } = {}) {
  const iopub = [];
  const future = kernel.requestExecute({ code, ...content });
  future.onIOPub = (msg) => {
    iopub.push(msg);
    onIOPub?.(msg, future);
  };
  if (onStdin) future.onStdin = (msg) => onStdin(msg, future);
  const reply = await future.done;
  check(reply && reply.header.msg_type === "execute_reply", `no execute_reply for ${JSON.stringify(code)}`);
  check(reply.channel === "shell", `execute_reply on channel ${reply.channel}`);
  return { reply, iopub, future };
}

function ofType(iopub, type) {
  return iopub.filter((m) => m.header.msg_type === type);
}
function plain(msg) {
  return msg?.content?.data?.["text/plain"];
}

const summary = { ok: false, mode: legacy ? "legacy" : "v1" };
const kernelSpecs = new KernelSpecManager({ serverSettings });
const kernels = new KernelManager({ serverSettings });
// Its first GET api/kernels may fail (a bad token); startNew reports the reason instead.
kernels.ready.catch(() => {});

await step("kernelspecs", async () => {
  await kernelSpecs.ready;
  if (!kernelSpecs.specs) {
    // The manager swallows the error of its first fetch; ask again for the reason.
    await kernelSpecs.requestSpecs().catch((e) => fail(`GET api/kernelspecs: ${e.message}`));
  }
  const specs = kernelSpecs.specs;
  check(specs && specs.kernelspecs, "no kernelspecs loaded");
  const names = Object.keys(specs.kernelspecs);
  // The validator drops a spec that lacks language, display_name or an argv array (with a warning).
  check(names.includes(kernelName), `kernelspec ${kernelName} not among the valid specs ${JSON.stringify(names)}`);
  const spec = specs.kernelspecs[kernelName];
  check(typeof spec.language === "string" && spec.language, "spec.language missing");
  check(typeof spec.display_name === "string" && spec.display_name, "spec.display_name missing");
  check(Array.isArray(spec.argv), "spec.argv is not an array");
  check(spec.resources && typeof spec.resources === "object", "spec.resources missing");
  summary.kernelspecs = names;
  summary.default_kernelspec = specs.default;
  summary.spec_language = spec.language;
});

await step("start", async () => {
  kernel = await kernels.startNew({ name: kernelName });
  check(typeof kernel.id === "string" && kernel.id, "no kernel id");
  check(kernel.name === kernelName, `kernel name ${kernel.name}, want ${kernelName}`);
  if (trace) {
    kernel.anyMessage.connect((_, { msg, direction }) => {
      const parent = msg.parent_header?.msg_type ?? "";
      const state = msg.header.msg_type === "status" ? ` ${msg.content.execution_state}` : "";
      console.error(`${direction} ${msg.channel} ${msg.header.msg_type}${state} parent=${parent} session=${msg.header.session}`);
    });
    kernel.statusChanged.connect((_, s) => console.error(`status -> ${s}`));
    kernel.connectionStatusChanged.connect((_, s) => console.error(`connection -> ${s}`));
  }
  summary.kernel_id = kernel.id;
  await whenIdle(kernel, "the new kernel");
  const reply = await kernel.requestKernelInfo();
  check(reply && reply.header.msg_type === "kernel_info_reply", "no kernel_info_reply");
  check(reply.content.status === "ok", `kernel_info_reply status ${reply.content.status}`);
  const lang = reply.content.language_info?.name;
  check(typeof lang === "string" && lang, "kernel_info_reply without language_info.name");
  summary.language = lang;
  summary.protocol_version = reply.content.protocol_version;
});

await step("wire", async () => {
  const open = sockets.filter((s) => s.readyState === WebSocket.OPEN);
  check(open.length === 1, `${open.length} open WebSockets, want 1`);
  const protocol = open[0].protocol;
  if (legacy) check(protocol === "", `server selected ${JSON.stringify(protocol)} although none was offered`);
  else check(protocol === V1, `server selected ${JSON.stringify(protocol)}, want ${V1}`);
  summary.protocol = protocol;
});

await step("outputs", async () => {
  const code = [
    "import sys",
    "from IPython.display import display",
    "print('hello')",
    "print('oops', file=sys.stderr)",
    "display({'text/plain': 'shown', 'text/html': '<b>shown</b>'}, raw=True)",
    "h = display({'text/plain': 'before'}, raw=True, display_id=True)",
    "h.update({'text/plain': 'after'}, raw=True)",
    "6*7",
  ].join("\n");
  const { reply, iopub } = await execute(kernel, code);
  check(reply.content.status === "ok", `reply status ${reply.content.status}: ${JSON.stringify(reply.content)}`);
  const count = reply.content.execution_count;
  check(typeof count === "number", "execute_reply without execution_count");
  const inputs = ofType(iopub, "execute_input");
  check(inputs.length === 1 && inputs[0].content.code === code, "no execute_input with the code");
  const streams = ofType(iopub, "stream");
  const text = (name) => streams.filter((m) => m.content.name === name).map((m) => m.content.text).join("");
  check(text("stdout") === "hello\n", `stdout ${JSON.stringify(text("stdout"))}, want "hello\\n"`);
  check(text("stderr").includes("oops"), `stderr ${JSON.stringify(text("stderr"))} lacks "oops"`);
  const displays = ofType(iopub, "display_data");
  check(displays.some((m) => plain(m) === "shown" && m.content.data["text/html"] === "<b>shown</b>"),
    `no display_data "shown": ${JSON.stringify(displays.map((m) => m.content))}`);
  const withId = displays.find((m) => plain(m) === "before");
  check(withId && withId.content.transient?.display_id, "no display_data with transient.display_id");
  const updates = ofType(iopub, "update_display_data");
  check(updates.some((m) => plain(m) === "after" && m.content.transient?.display_id === withId.content.transient.display_id),
    `no update_display_data "after": ${JSON.stringify(updates.map((m) => m.content))}`);
  const results = ofType(iopub, "execute_result");
  check(results.length === 1 && plain(results[0]) === "42", `execute_result ${JSON.stringify(results.map((m) => m.content))}`);
  check(results[0].content.execution_count === count, "execute_result count differs from the reply's");
  const busy = iopub.filter((m) => m.header.msg_type === "status" && m.content.execution_state === "busy");
  check(busy.length >= 1, "no IOPub busy parented to the request");
});

await step("error", async () => {
  const { reply, iopub } = await execute(kernel, "1/0");
  check(reply.content.status === "error", `reply status ${reply.content.status}, want error`);
  check(reply.content.ename === "ZeroDivisionError", `reply ename ${reply.content.ename}`);
  const errors = ofType(iopub, "error");
  check(errors.length === 1 && errors[0].content.ename === "ZeroDivisionError", "no IOPub error ZeroDivisionError");
  check(Array.isArray(errors[0].content.traceback), "IOPub error traceback is not an array");
});

await step("input", async () => {
  let prompt;
  const { reply } = await execute(kernel, "x = input('name? ')", {
    content: { allow_stdin: true },
    onStdin: (msg) => {
      check(msg.channel === "stdin" && msg.header.msg_type === "input_request", `stdin got ${msg.header.msg_type}`);
      prompt = msg.content.prompt;
      kernel.sendInputReply({ status: "ok", value: "Ada" }, msg.header);
    },
  });
  check(prompt === "name? ", `input_request prompt ${JSON.stringify(prompt)}`);
  check(reply.content.status === "ok", `input cell status ${reply.content.status}: ${JSON.stringify(reply.content)}`);
  const { iopub } = await execute(kernel, "x");
  const results = ofType(iopub, "execute_result");
  check(results.length === 1 && plain(results[0]) === "'Ada'", `x is ${JSON.stringify(results.map(plain))}`);
});

await step("interrupt", async () => {
  const started = Date.now();
  let interrupted;
  const { reply, iopub } = await execute(kernel, "import time; time.sleep(60)", {
    onIOPub: (msg) => {
      if (msg.header.msg_type !== "execute_input" || interrupted) return;
      // A moment for the kernel to enter the code: ipykernel loses a SIGINT that comes earlier.
      interrupted = new Promise((r) => setTimeout(r, 250)).then(() => kernel.interrupt());
    },
  });
  check(interrupted, "no execute_input before the reply");
  await interrupted; // rejects unless the server answered 204
  const elapsed = Date.now() - started;
  const status = reply.content.status;
  check(status === "error" || status === "aborted", `interrupted cell status ${status}`);
  if (status === "error") {
    check(reply.content.ename === "KeyboardInterrupt", `interrupted cell ename ${reply.content.ename}`);
    check(ofType(iopub, "error").some((m) => m.content.ename === "KeyboardInterrupt"), "no IOPub error KeyboardInterrupt");
  }
  check(elapsed < 30_000, `interrupt took ${elapsed} ms`);
  summary.interrupt = { status, ename: reply.content.ename, ms: elapsed };
});

await step("restart", async () => {
  const statuses = [];
  const onStatus = (_, s) => statuses.push(s);
  kernel.statusChanged.connect(onStatus);
  const before = sockets.length;
  await kernel.restart(); // POST …/restart (200 and a model), then a new WebSocket
  await whenIdle(kernel, "the restarted kernel");
  kernel.statusChanged.disconnect(onStatus);
  check(sockets.length > before, "no new WebSocket after the restart");
  const { reply } = await execute(kernel, "x");
  check(reply.content.status === "error" && reply.content.ename === "NameError",
    `x after restart: ${reply.content.status} ${reply.content.ename ?? ""}`);
  const open = sockets.filter((s) => s.readyState === WebSocket.OPEN);
  check(open.length === 1, `${open.length} open WebSockets after the restart, want 1`);
  check(open[0].protocol === summary.protocol, `wire changed on reconnect: ${JSON.stringify(open[0].protocol)}`);
  summary.restart_statuses = statuses;
});

await step("complete_inspect", async () => {
  const complete = await kernel.requestComplete({ code: "import o", cursor_pos: 8 });
  check(complete.content.status === "ok", `complete_reply status ${complete.content.status}`);
  check(Array.isArray(complete.content.matches), "complete_reply matches is not an array");
  const inspect = await kernel.requestInspect({ code: "len", cursor_pos: 3, detail_level: 0 });
  check(inspect.content.status === "ok", `inspect_reply status ${inspect.content.status}`);
  summary.complete_matches = complete.content.matches.length;
  summary.inspect_found = inspect.content.found;
});

await step("shutdown", async () => {
  const id = kernel.id;
  await kernel.shutdown(); // DELETE …/kernels/{id} (204)
  check(kernel.isDisposed, "the connection is not disposed after shutdown");
  const model = await KernelAPI.getKernelModel(id, serverSettings);
  check(model === undefined, `kernel still there after shutdown: ${JSON.stringify(model)}`);
});

await step("frames", async () => {
  // None of the messages above carries buffers, so legacy must not have needed binary frames.
  if (legacy) check(frames.binary === 0 && frames.text > 0, `legacy frames ${JSON.stringify(frames)}, want text only`);
  else check(frames.text === 0 && frames.binary > 0, `v1 frames ${JSON.stringify(frames)}, want binary only`);
  summary.frames = frames;
});

currentStep = "dispose";
kernels.dispose();
kernelSpecs.dispose();
summary.sockets = sockets.length;
summary.rest = rest;
summary.ok = true;
process.stdout.write(JSON.stringify(summary) + "\n", () => process.exit(0));
