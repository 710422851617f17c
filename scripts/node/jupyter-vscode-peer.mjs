// VS Code's "existing Jupyter server" sequence, made with @jupyterlab/services (which VS Code's
// Jupyter extension embeds): the server checks it makes (kernels and kernelspecs, `hub/api` is
// not JupyterHub, `tree?` answers), the backing file it creates, renames and deletes, the
// session it starts with a `-jvsc-` path, cells run with VS Code's cell URIs as `cellId`, the
// silent runs of its variable view, a saved notebook read back, and the end of the session.
// Usage:
//   node jupyter-vscode-peer.mjs BASE_URL TOKEN KERNEL_NAME [keep]
// With `keep`, the session is left running (its id is in the summary) for the caller's checks.
// On success it prints one JSON line (with the kernel's document and the session); on failure a
// message on stderr and exit code 1.
import { createRequire } from "node:module";
import path from "node:path";
import { randomUUID } from "node:crypto";

const require = createRequire(path.join(process.env.NODE_PATH ?? "", "noop.js"));
const WebSocket = require("ws");
const {
  ContentsManager,
  KernelAPI,
  KernelManager,
  KernelSpecAPI,
  ServerConnection,
  SessionAPI,
  SessionManager,
} = require("@jupyterlab/services");

const STEP_TIMEOUT_MS = 60_000;
const toStderr = (...args) => console.error(...args);
const trace = process.env.JSP_TRACE === "1";
console.log = trace ? toStderr : () => {};
console.debug = trace ? toStderr : () => {};
console.info = trace ? toStderr : () => {};

const [baseArg, token, kernelName, keep] = process.argv.slice(2);
if (!baseArg || !token || !kernelName || (keep !== undefined && keep !== "keep")) {
  console.error("usage: jupyter-vscode-peer.mjs BASE_URL TOKEN KERNEL_NAME [keep]");
  process.exit(2);
}
const baseUrl = baseArg.endsWith("/") ? baseArg : baseArg + "/";
const serverSettings = ServerConnection.makeSettings({
  baseUrl,
  wsUrl: "ws" + baseUrl.slice(4),
  token,
  appendToken: true,
  WebSocket,
  fetch,
  Request,
  Headers,
});

let currentStep = "setup";
function fail(message) {
  console.error(`jupyter-vscode-peer: FAIL [${currentStep}] ${message}`);
  process.exit(1);
}
function check(cond, message) {
  if (!cond) fail(message);
}
process.on("uncaughtException", (e) => fail(`uncaught: ${e?.stack ?? e}`));
process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${e?.stack ?? e}`));
setTimeout(() => fail("overall timeout"), 10 * STEP_TIMEOUT_MS).unref();

async function step(name, fn) {
  currentStep = name;
  let timer;
  try {
    await Promise.race([
      Promise.resolve().then(fn),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out: ${name}`)), STEP_TIMEOUT_MS);
      }),
    ]);
  } catch (e) {
    fail(e?.stack ?? String(e));
  } finally {
    clearTimeout(timer);
  }
}

async function run(kernel, code, content = {}, metadata = {}) {
  const future = kernel.requestExecute({ code, ...content }, true, metadata);
  const iopub = [];
  future.onIOPub = (msg) => iopub.push(msg);
  const reply = await future.done;
  return { reply, iopub };
}
const result = (iopub) =>
  iopub.find((m) => m.header.msg_type === "execute_result")?.content.data["text/plain"];

const summary = {};
const kernels = new KernelManager({ serverSettings });
const sessions = new SessionManager({ kernelManager: kernels, serverSettings });
const contents = new ContentsManager({ serverSettings });
let session;
let backing;

await step("validate", async () => {
  const [running, specs] = await Promise.all([
    KernelAPI.listRunning(serverSettings),
    KernelSpecAPI.getSpecs(serverSettings),
  ]);
  check(Array.isArray(running), "kernels is not a list");
  check(specs.kernelspecs[kernelName], `no kernelspec ${kernelName}`);
  const hub = await fetch(baseUrl + "hub/api");
  check(hub.status !== 200, "hub/api answered 200: VS Code would take this for JupyterHub");
  const tree = await fetch(baseUrl + "tree?");
  check(tree.status === 200, `tree? answered ${tree.status}`);
});

await step("backing file", async () => {
  const created = await contents.newUntitled({ type: "notebook" });
  check(created.path.endsWith(".ipynb"), `created ${created.path}`);
  backing = `${kernelName}-jvsc-${randomUUID()}.ipynb`;
  const renamed = await contents.rename(created.path, backing);
  check(renamed.path === backing, `renamed to ${renamed.path}`);
});

await step("session", async () => {
  await sessions.ready;
  session = await sessions.startNew({
    path: `${kernelName}-jvsc-${randomUUID()}${randomUUID()}.ipynb`,
    name: `${kernelName}-${randomUUID()}.ipynb`,
    type: "notebook",
    kernel: { name: kernelName },
  });
  check(session.kernel, "the session has no kernel");
  const info = await session.kernel.info;
  check(info.language_info?.name, "no language_info");
  await sessions.refreshRunning();
  const listed = await SessionAPI.listRunning(serverSettings);
  check(listed.some((s) => s.id === session.id && s.path === session.path), "the session is not listed");
  const model = await KernelAPI.getKernelModel(session.kernel.id, serverSettings);
  summary.document = model?.nbplat?.document;
  summary.kernel = session.kernel.id;
});

await step("cells", async () => {
  const cell = "vscode-notebook-cell:/home/ada/analysis.ipynb#W1sZmlsZQ%3D%3D";
  summary.cell = cell;
  const first = await run(session.kernel, "answer = 6*7\nanswer", { stop_on_error: false }, { cellId: cell });
  check(first.reply.content.status === "ok", `cell status ${first.reply.content.status}`);
  check(result(first.iopub) === "42", `cell result ${result(first.iopub)}`);
  // The variable view's silent runs: answered, never in the document.
  const silent = await run(session.kernel, "import json; vscode_silent = json.dumps(list(globals())[:3])", {
    silent: true,
    store_history: false,
  });
  check(silent.reply.content.status === "ok", `silent status ${silent.reply.content.status}`);
  check(!silent.iopub.some((m) => m.header.msg_type === "execute_input"), "a silent run showed its input");
  // A re-run of the same cell replaces its code.
  const again = await run(session.kernel, "answer + 1", { stop_on_error: false }, { cellId: cell });
  check(result(again.iopub) === "43", `re-run result ${result(again.iopub)}`);
});

await step("rename session", async () => {
  const newPath = `renamed-${randomUUID()}.ipynb`;
  await session.setPath(newPath);
  const model = await SessionAPI.getSessionModel(session.id, serverSettings);
  check(model.path === newPath, `path after PATCH: ${model.path}`);
});

await step("save and read back", async () => {
  const notebook = {
    cells: [{ cell_type: "code", source: "1+1", metadata: {}, outputs: [], execution_count: null, id: "c1" }],
    metadata: {},
    nbformat: 4,
    nbformat_minor: 5,
  };
  await contents.save(backing, { type: "notebook", format: "json", content: notebook });
  const back = await contents.get(backing, { content: true });
  check(back.content.cells[0].source === "1+1", "the saved notebook did not come back");
  const listing = await contents.get("", { content: true });
  check(listing.content.some((f) => f.path === backing), "the file is not listed");
  await contents.delete(backing);
  const gone = await contents.get(backing).then(() => false, () => true);
  check(gone, "the backing file is still there after DELETE");
});

summary.session = session.id;
if (keep !== "keep") await step("end", async () => {
  const kernel = session.kernel.id;
  await session.shutdown(); // DELETE /api/sessions/{id}: its kernel ends too
  const model = await KernelAPI.getKernelModel(kernel, serverSettings);
  check(model === undefined, "the kernel outlived its session");
  const listed = await SessionAPI.listRunning(serverSettings);
  check(!listed.some((s) => s.id === session.id), "the session is still listed");
});

currentStep = "dispose";
sessions.dispose();
kernels.dispose();
summary.ok = true;
process.stdout.write(JSON.stringify(summary) + "\n", () => process.exit(0));
