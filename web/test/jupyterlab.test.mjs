// Stock JupyterLab (the tools' environment, scripts/tools-env) in gateway mode on the gateway's
// Jupyter Server API (docs/jupyter.md): its own jupyter_server with
// `--gateway-url=<gateway>/jupyter --GatewayClient.auth_token=<Jupyter API token>`, driven in
// headless Chromium as a person would. Ada creates a notebook from the launcher's card for the
// plan, runs `print(6*7)` on a warm pod and sees 42; Grace opens the kernel's document in the web
// client and sees the cell, its output and who ran it; then, with Grace's page open, Ada answers
// an input() prompt in JupyterLab's stdin box and interrupts `time.sleep(60)` from JupyterLab's
// toolbar, and Grace's page shows each run as it happens, without a reload.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe } from "node:test";
import { env, freePort, itShows, launch, newPage, openFromLanding, problems, shot, stopMarked } from "./harness.mjs";

/** Watchman's HTTP address (`POST /v1/jupyter-tokens`) and its API token; scripts/test-web.sh. */
const watchmanApi = process.env.NBP_WEB_WATCHMAN_API ?? "";
const apiTokenFile = process.env.NBP_WEB_API_TOKEN_FILE ?? "";
/** The tools' environment (scripts/python-envs.sh), where `jupyter lab` is. */
const jupyter = join(process.env.NBP_TOOLS_ENV ?? "", "bin", "jupyter");
/** The plan the notebook's kernel runs on: the landing page's first (test-web.sh's plans). */
const plan = "web";

let browser;
let lab; // JupyterLab's page (Ada)
let web; // the web client's page (Grace)
let server; // { proc, url, token, dir, log }
let jupyterToken;
let kernel; // the kernel's model from the gateway's /jupyter/api/kernels

/** `POST /v1/jupyter-tokens` (Watchman, with the API token): a Jupyter API token for a user. */
async function mintJupyterToken(userId, userName) {
  const r = await fetch(`${watchmanApi}/v1/jupyter-tokens`, {
    method: "POST",
    headers: { Authorization: `Bearer ${readFileSync(apiTokenFile, "utf8").trim()}`, "Content-Type": "application/json" },
    body: JSON.stringify({ user_id: userId, user_name: userName }),
  });
  const body = await r.text();
  assert.equal(r.status, 200, `minting a Jupyter token: ${r.status} ${body}`);
  return JSON.parse(body).token;
}

/**
 * Starts `jupyter lab` on a free port of 127.0.0.1 in gateway mode, with Jupyter's directories of
 * its own (a fresh workspace, no settings but these) and nothing fetched from the network (no
 * news, no update check, no extension manager). Marked with NBP_WEB_RUN and leading its own
 * process group, so scripts/test-web.sh stops it if this file does not.
 */
async function startJupyterLab(gatewayUrl, authToken) {
  const dir = join(env.tmp, `jupyterlab-${Date.now().toString(36)}`);
  for (const d of ["root", "config", "data", "runtime"]) mkdirSync(join(dir, d), { recursive: true });
  // The user's answer to "Would you like to get notified about official Jupyter news?", which
  // JupyterLab otherwise asks in a toast over the notebook.
  const settings = join(dir, "config", "lab", "user-settings", "@jupyterlab", "apputils-extension");
  mkdirSync(settings, { recursive: true });
  writeFileSync(join(settings, "notification.jupyterlab-settings"), JSON.stringify({ fetchNews: "false", checkForUpdates: false }));
  const port = await freePort();
  const token = `lab-${Math.random().toString(36).slice(2)}`;
  const log = join(dir, "jupyterlab.log");
  const out = openSync(log, "a");
  const childEnv = {
    ...process.env,
    NBP_WEB_RUN: env.run,
    JUPYTER_CONFIG_DIR: join(dir, "config"),
    JUPYTER_DATA_DIR: join(dir, "data"),
    JUPYTER_RUNTIME_DIR: join(dir, "runtime"),
  };
  // The kernel's environment's share/jupyter (env.sh) is no business of a client's server.
  delete childEnv.JUPYTER_PATH;
  const proc = spawn(
    jupyter,
    [
      "lab",
      "--no-browser",
      "--allow-root",
      `--gateway-url=${gatewayUrl}`,
      `--GatewayClient.auth_token=${authToken}`,
      `--IdentityProvider.token=${token}`,
      "--ServerApp.ip=127.0.0.1",
      `--ServerApp.port=${port}`,
      "--ServerApp.port_retries=0",
      `--ServerApp.root_dir=${join(dir, "root")}`,
      "--LabApp.news_url=None",
      "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
      "--LabApp.extension_manager=readonly",
    ],
    { cwd: dir, detached: true, stdio: ["ignore", out, out], env: childEnv },
  );
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    if (proc.exitCode !== null) break;
    try {
      if ((await fetch(`${url}/api/status`, { headers: { Authorization: `token ${token}` } })).ok) return { proc, url, token, dir, log };
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`jupyter lab did not start (${log}):\n${readFileSync(log, "utf8").slice(-3000)}`);
}

/** The gateway's Jupyter Server API, as the token's user. */
async function gatewayApi(path) {
  const r = await fetch(`${env.watchman}/jupyter${path}`, { headers: { Authorization: `token ${jupyterToken}` } });
  const body = await r.text();
  assert.equal(r.status, 200, `GET /jupyter${path}: ${r.status} ${body}`);
  return JSON.parse(body);
}

// JupyterLab's side.
const labCell = (i) => lab.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(i);

/** Waits until JupyterLab's status bar says the notebook's kernel is `state` ("Python 3 · web | Idle"). */
async function labKernelIs(state, timeout = 30_000) {
  await lab.waitForFunction(
    (s) => document.querySelector('.jp-StatusBar-TextItem[title^="Change kernel"]')?.textContent.endsWith(`| ${s}`),
    state,
    { timeout },
  );
  return lab.locator('.jp-StatusBar-TextItem[title^="Change kernel"]').innerText();
}

/** Types code into JupyterLab's i-th cell (a new one after the last run) and runs it (Shift-Enter). */
async function labRun(i, code) {
  const editor = labCell(i).locator(".jp-InputArea-editor .cm-content");
  await editor.waitFor();
  await editor.click();
  await lab.keyboard.type(code);
  await lab.waitForFunction(
    ([n, c]) => document.querySelectorAll(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")[n]?.querySelector(".cm-content")?.textContent === c,
    [i, code],
  );
  await lab.keyboard.press("Shift+Enter");
}

async function labOutput(i, text, timeout = 30_000) {
  await labCell(i).locator(".jp-OutputArea-output", { hasText: text }).first().waitFor({ timeout });
  return labCell(i).locator(".jp-OutputArea").innerText();
}

// The web client's side: a cell by its (one-line) source.
const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const webCell = (source) => web.locator("section.cell").filter({ has: web.locator(".cm-content", { hasText: new RegExp(`^${escape(source)}$`) }) });

before(async () => {
  assert.ok(watchmanApi && apiTokenFile, "scripts/test-web.sh names Watchman's HTTP address and API token");
  assert.ok(existsSync(jupyter), `JupyterLab is in the tools' environment (${jupyter}): bash scripts/bootstrap.sh`);
  jupyterToken = await mintJupyterToken("ada", "Ada");
  server = await startJupyterLab(`${env.watchman}/jupyter`, jupyterToken);
  browser = await launch();
  lab = await newPage(browser);
});
after(async () => {
  await browser?.close();
  // SIGTERM: it shuts its kernels down on the gateway.
  await stopMarked(server?.proc, 15_000);
  if (server) {
    // What JupyterLab's server saw of the gateway, kept beside the screenshots.
    copyFileSync(server.log, join(env.artifacts, "jupyterlab-server.log"));
    const errors = readFileSync(server.log, "utf8").split("\n").filter((l) => /^\[E /.test(l));
    if (errors.length) console.log(`JupyterLab's server logged errors (artifacts/web/jupyterlab-server.log):\n${errors.join("\n")}`);
  }
});

describe("JupyterLab in gateway mode on a warm pod, seen live in the web client", () => {
  itShows("creates a notebook on the plan's kernel and runs print(6*7) on a warm pod", () => lab, async () => {
    await lab.goto(`${server.url}/lab?token=${server.token}`);
    // The launcher has a card per plan: the gateway's kernelspecs, named after the plans.
    const card = lab.locator(`.jp-LauncherCard[data-category="Notebook"][title="Python 3 · ${plan}"]`);
    await card.waitFor({ timeout: 60_000 });
    const titles = await lab.locator('.jp-LauncherCard[data-category="Notebook"]').evaluateAll((els) => els.map((e) => e.title));
    for (const want of [`Python 3 · ${plan}`, ...(env.denoPlan ? [`TypeScript (Deno) · ${env.denoPlan}`] : [])])
      assert.ok(titles.includes(want), `the launcher offers "${want}": ${titles.join(", ")}`);
    await card.click();
    // A kernel is a warm pod: JupyterLab's status says Idle once its WebSocket is up.
    await labCell(0).locator(".jp-InputArea-editor .cm-content").waitFor({ timeout: 60_000 });
    assert.equal(await labKernelIs("Idle", 60_000), `Python 3 · ${plan} | Idle`);

    await labRun(0, "print(6*7)");
    assert.equal((await labOutput(0, "42")).trim(), "42");
    assert.equal((await labCell(0).locator(".jp-InputPrompt").innerText()).trim(), "[1]:");
  });

  itShows("the kernel's document shows the run to a second person in the web client", () => web ?? lab, async () => {
    // JupyterLab's session for this notebook names the kernel; the gateway's API says where it is.
    const sessions = await (await fetch(`${server.url}/api/sessions`, { headers: { Authorization: `token ${server.token}` } })).json();
    assert.equal(sessions.length, 1, `one session: ${JSON.stringify(sessions)}`);
    const models = await gatewayApi("/api/kernels");
    kernel = models.find((m) => m.id === sessions[0].kernel.id);
    assert.ok(kernel, `the gateway lists JupyterLab's kernel ${sessions[0].kernel.id}: ${JSON.stringify(models)}`);
    assert.equal(kernel.name, plan);
    assert.equal(kernel.nbplat.plan, plan);
    assert.match(kernel.nbplat.document, /^jupyter-/);
    assert.ok(kernel.nbplat.pod, "the model names the pod");

    // Grace opens that document as the landing page opens any: the same pod, the same cells.
    web = await newPage(browser);
    await openFromLanding(web, kernel.nbplat.document, "Grace", undefined, kernel.nbplat.plan);
    assert.equal(new URL(web.url()).pathname, `/pods/${kernel.nbplat.pod}/`);
    const ran = webCell("print(6*7)");
    await ran.locator(".outputs", { hasText: "42" }).waitFor({ timeout: 15_000 });
    assert.equal((await ran.locator(".outputs").innerText()).trim(), "42");
    assert.match(await ran.locator(".last-run").innerText(), /^Ada \(Jupyter\) · /);
    assert.match(await ran.locator(".prompt").innerText(), /\[1\]/);
    // Ada, through JupyterLab, is one of the people here.
    await web.locator('.people .avatar[data-name="Ada (Jupyter)"]').first().waitFor();
    await web.evaluate(() => (window.__sinceOpened = true)); // gone if the page reloads
  });

  itShows("answers input() in JupyterLab's stdin box, and the web page sees the runs live", () => lab, async () => {
    await labRun(1, "x = input('name? ')");
    const stdin = lab.locator(".jp-Stdin-input");
    await stdin.waitFor({ timeout: 30_000 });
    assert.match(await lab.locator(".jp-Stdin-prompt").innerText(), /^name\? /);
    // Live on Grace's page: the new cell, running for Ada, its prompt shown to editors.
    const asking = webCell("x = input('name? ')");
    await asking.locator(".state-badge", { hasText: "running" }).waitFor({ timeout: 15_000 });
    await asking.locator(".stdin-prompt", { hasText: "name?" }).waitFor({ timeout: 15_000 });
    await web.locator('[data-role="queue"]', { hasText: "Ada (Jupyter)" }).waitFor();
    await stdin.fill("Ada");
    await stdin.press("Enter");
    assert.match(await labOutput(1, "Ada"), /name\? +Ada/);
    await labRun(2, "print(x)");
    assert.equal((await labOutput(2, "Ada")).trim(), "Ada");

    const printed = webCell("print(x)");
    await printed.locator(".outputs", { hasText: "Ada" }).waitFor({ timeout: 15_000 });
    assert.equal((await printed.locator(".outputs").innerText()).trim(), "Ada");
    assert.match(await printed.locator(".last-run").innerText(), /^Ada \(Jupyter\) · /);
    await asking.locator(".last-run", { hasText: /^Ada \(Jupyter\) · / }).waitFor();
    // The answer is Ada's: Grace's page says who answered, not what.
    await asking.locator(".stdin-done", { hasText: "answered by Ada (Jupyter)" }).waitFor();
    assert.equal(await asking.locator(".stdin").count(), 0, "the prompt is gone once answered");
  });

  itShows("interrupts time.sleep(60) from JupyterLab's toolbar, well before 60 s", () => lab, async () => {
    await labRun(3, "import time; time.sleep(60)");
    // Running in the kernel, as both see it (an interrupt before the kernel took the code is lost).
    await labCell(3).locator(".jp-InputPrompt", { hasText: "[*]" }).waitFor();
    const sleeping = webCell("import time; time.sleep(60)");
    await sleeping.locator(".state-badge", { hasText: "running" }).waitFor({ timeout: 15_000 });
    await labKernelIs("Busy");
    const began = Date.now();
    await lab.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-NotebookPanel-toolbar [data-command="notebook:interrupt-kernel"]').click();
    const out = await labOutput(3, "KeyboardInterrupt", 55_000);
    const took = Date.now() - began;
    assert.match(out, /KeyboardInterrupt/);
    assert.ok(took < 20_000, `interrupted in ${took} ms`);
    await labKernelIs("Idle");
    // The same kernel goes on, with its variables (an interrupt, not a restart).
    await labRun(4, "print(x * 2)");
    assert.equal((await labOutput(4, "AdaAda")).trim(), "AdaAda");
    await shot(lab, "jupyterlab");

    // Grace saw all of it without a reload.
    await sleeping.locator(".error-output", { hasText: "KeyboardInterrupt" }).waitFor({ timeout: 15_000 });
    const twice = webCell("print(x * 2)");
    await twice.locator(".outputs", { hasText: "AdaAda" }).waitFor({ timeout: 15_000 });
    assert.match(await twice.locator(".last-run").innerText(), /^Ada \(Jupyter\) · /);
    assert.equal(await web.evaluate(() => window.__sinceOpened), true, "the web page was not reloaded");
    await shot(web, "jupyterlab-web-client");
    assert.deepEqual(await problems(web), [], "the web page: no CSP violations, uncaught errors or console errors");
    assert.deepEqual(await problems(lab), [], "JupyterLab: no uncaught errors or console errors");
  });
});
