// Shared set-up of the browser tests: Chromium through playwright-core, pages that record CSP
// violations and script errors, helpers to open documents through the landing page or through a
// Middleman of the test's own, and to type into and run cells. Every page goes through a gateway,
// as in production: scripts/test-web.sh's in front of Watchman, or one of the test's own with a
// fixed route to its Middleman. scripts/test-web.sh provides the environment (a running Watchman
// behind a gateway, the binaries, a temporary directory).
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, openSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { it } from "node:test";
import { chromium } from "playwright-core";

export const env = {
  watchman: process.env.NBP_WEB_WATCHMAN ?? "",
  bin: process.env.NBP_WEB_BIN ?? "",
  tmp: process.env.NBP_WEB_TMP ?? "",
  run: process.env.NBP_WEB_RUN ?? "",
  artifacts: process.env.NBP_WEB_ARTIFACTS ?? "artifacts/web",
  chromium: process.env.NBP_WEB_CHROMIUM || "/usr/bin/chromium",
  /** The plan whose kernel is Deno's (TypeScript; deno.test.mjs). */
  denoPlan: process.env.NBP_WEB_DENO_PLAN ?? "",
};
if (!env.watchman || !env.bin || !env.tmp) {
  throw new Error("run the browser tests with scripts/test-web.sh (it starts Watchman and sets NBP_WEB_*)");
}
mkdirSync(env.artifacts, { recursive: true });

export async function launch() {
  return chromium.launch({
    executablePath: env.chromium,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
      "--disable-features=Translate,MediaRouter,OptimizationHints",
    ],
  });
}

/** A page that records CSP violations, uncaught errors and console errors. */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1240, height: 860 }, acceptDownloads: true, ...options });
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`uncaught: ${e.message}`));
  page.on("console", (m) => {
    if (process.env.NBP_WEB_DEBUG) console.log(`[page ${m.type()}] ${m.text()}`);
    // The page's own CSP violations are counted from its securitypolicyviolation events; those
    // in the console may come from sandboxed output frames, which are meant to be refused.
    if (m.type() === "error" && !/Failed to load resource|WebSocket connection|ERR_CONNECTION_REFUSED|Content Security Policy/.test(m.text()))
      page.problems.push(`console: ${m.text()}`);
  });
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
    });
  });
  return page;
}

/** What a page recorded that a person would call broken. */
export async function problems(page) {
  const csp = await page.evaluate(() => window.__csp ?? []).catch(() => []);
  return [...page.problems, ...csp.map((c) => `csp: ${c}`)];
}

/**
 * Opens a document through the landing page (Watchman's, through the gateway), as `make run` does,
 * on the landing page's first plan (ipykernel's) unless `plan` names another.
 */
export async function openFromLanding(page, document, name, role, plan) {
  await page.goto(env.watchman + "/");
  await page.fill('input[name="document"]', document);
  await page.fill('input[name="name"]', name);
  if (role) await page.selectOption('select[name="role"]', role);
  if (plan) await page.selectOption('select[name="plan"]', plan);
  // The document: below /pods/ on the gateway's origin (a Watchman with no gateway, as
  // scripts/bench-web.sh runs it, sends the page to the pod's own origin).
  const landing = new URL(env.watchman).origin;
  const arrived = (u) => u.origin !== landing || u.pathname.startsWith("/pods/");
  await Promise.all([page.waitForURL(arrived, { timeout: 60_000 }), page.click('button[type="submit"]')]);
  await ready(page);
}

/** Waits until the notebook is connected, synced and its kernel idle. */
export async function ready(page) {
  await page.waitForSelector(".link-connected", { timeout: 30_000 });
  await page.waitForSelector(".cell .cm-content", { timeout: 30_000 });
  await page.waitForSelector(".kernel-idle", { timeout: 60_000 });
}

/**
 * Clicks like a person: scrolled into view first, then clicked once the page has drawn a frame.
 * (Headless Chromium routes a click made right after a scroll by the hit-test data of the last
 * frame, so it can land in an output frame that was at that point before the scroll.)
 */
export async function click(locator, options) {
  await locator.scrollIntoViewIfNeeded();
  await locator.page().evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await locator.click(options);
}

export function cell(page, index) {
  return page.locator("section.cell").nth(index);
}

/** Replaces a cell's source by typing (select all, then insert the text as one input). */
export async function setSource(page, index, text) {
  const c = cell(page, index);
  await click(c.locator(".cm-content"));
  await page.keyboard.press("ControlOrMeta+a");
  await page.keyboard.press("Delete");
  if (text) await page.keyboard.insertText(text);
}

export async function sourceOf(page, index) {
  // The text of the rendered lines, without collaborators' caret labels (short cells only:
  // CodeMirror renders just the visible lines of long ones).
  return cell(page, index)
    .locator(".cm-content")
    .evaluate((el) =>
      Array.from(el.querySelectorAll(".cm-line"))
        .map((line) => {
          const copy = line.cloneNode(true);
          copy.querySelectorAll(".remote-caret, .cm-placeholder, .cm-widgetBuffer").forEach((x) => x.remove());
          return copy.textContent.replace(/\u2060/g, "");
        })
        .join("\n"),
    );
}

export async function cellCount(page) {
  return page.locator("section.cell").count();
}

/** Adds a code cell at the end and returns its index once it exists. */
export async function addCell(page) {
  const before = await cellCount(page);
  await click(page.locator('.add-cells [data-action="add-code"]'));
  await page.waitForFunction((n) => document.querySelectorAll("section.cell").length > n, before);
  return before;
}

/** Runs a cell with Ctrl-Enter from its editor and waits until it is idle or failed. */
export async function run(page, index, { wait = true } = {}) {
  // Notes when this run starts (the cell turns queued or running), so that waiting for it to
  // end does not mistake the previous run's prompt and state for this one's.
  await page.evaluate((i) => {
    const el = document.querySelectorAll("section.cell")[i];
    el.dataset.runStarted = "";
    const seen = () => el.classList.contains("state-queued") || el.classList.contains("state-running");
    const obs = new MutationObserver(() => {
      if (seen()) {
        el.dataset.runStarted = "1";
        obs.disconnect();
      }
    });
    obs.observe(el, { attributes: true, attributeFilter: ["class"] });
  }, index);
  await click(cell(page, index).locator(".cm-content"));
  await page.keyboard.press("Control+Enter");
  if (!wait) return;
  // A run the server refuses never starts: after a while, fall back to the state alone.
  await page
    .waitForFunction((i) => document.querySelectorAll("section.cell")[i]?.dataset.runStarted === "1", index, { timeout: 10_000 })
    .catch(() => {});
  await waitDone(page, index);
}

export async function waitDone(page, index, timeout = 30_000) {
  const c = cell(page, index);
  await c.locator(".prompt").filter({ hasText: /\[\d+\]/ }).waitFor({ timeout });
  await page.waitForFunction(
    (i) => {
      const el = document.querySelectorAll("section.cell")[i];
      return el && !el.classList.contains("state-queued") && !el.classList.contains("state-running");
    },
    index,
    { timeout },
  );
}

export async function shot(page, name) {
  await page.screenshot({ path: join(env.artifacts, `${name}.png`) });
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts a process of the run (marked with NBP_WEB_RUN, so scripts/test-web.sh stops it). */
function spawnMarked(bin, args, logPath) {
  const log = openSync(logPath, "a");
  return spawn(join(env.bin, bin), args, {
    detached: true,
    stdio: ["ignore", log, log],
    env: { ...process.env, NBP_WEB_RUN: env.run },
  });
}

/** Stops a process started in its own group (`spawnMarked`): SIGTERM, then SIGKILL after
 * `graceMs`. */
export async function stopMarked(p, graceMs = 8000) {
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise((r) => p.once("exit", r));
  process.kill(-p.pid, "SIGTERM");
  const timer = setTimeout(() => {
    try {
      process.kill(-p.pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }, graceMs);
  await exited;
  clearTimeout(timer);
}

/**
 * A gateway of the test's own, with fixed routes (`--route POD=URL`) to Middlemen the test
 * started, so that their pages too are served and relayed as in production.
 */
export class OwnGateway {
  constructor(dir, publicKey, routes) {
    this.dir = dir;
    this.publicKey = publicKey;
    this.routes = routes;
    this.proc = null;
  }

  async start() {
    const logPath = join(this.dir, "gateway.log");
    this.proc = spawnMarked(
      "gateway",
      [
        "--listen", "127.0.0.1:0",
        "--metrics-listen", "127.0.0.1:0",
        "--public-key", this.publicKey,
        ...Object.entries(this.routes).flatMap(([pod, url]) => ["--route", `${pod}=${url}`]),
        "--drain-grace", "2s",
        "--log-format", "json",
      ],
      logPath,
    );
    for (let i = 0; i < 100; i++) {
      const m = /"listening on (http:\/\/[0-9.:]+)"/.exec(readFileSync(logPath, "utf8"));
      if (m) {
        this.url = m[1];
        this.port = Number(new URL(this.url).port);
        return;
      }
      if (this.proc.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`the gateway did not start (${logPath})`);
  }

  async stop() {
    await stopMarked(this.proc);
    this.proc = null;
  }
}

/**
 * A Middleman of the test's own (for restarts), with a file store that outlives it, behind a
 * gateway of its own that outlives it too: pages open `url` + `path(user)`, as those Watchman
 * allocates are opened.
 */
export class OwnMiddleman {
  constructor(name) {
    this.dir = join(env.tmp, name);
    mkdirSync(this.dir, { recursive: true });
    this.keys = join(this.dir, "keys");
    execFileSync(join(env.bin, "middleman"), ["keygen", "--out-dir", this.keys]);
    this.document = name;
    this.pod = "p1";
    this.proc = null;
    this.gateway = null;
  }

  token(user, role = "editor") {
    return execFileSync(join(env.bin, "middleman"), [
      "token", "--key", join(this.keys, "signing.pem"), "--doc", this.document, "--pod", this.pod,
      "--user", user.toLowerCase(), "--name", user, "--role", role,
    ]).toString().trim().split("\n").pop();
  }

  /** The document's page, with a token, below the gateway's (or a relay's) origin. */
  path(user, role) {
    return `/pods/${this.pod}/#token=${this.token(user, role)}`;
  }

  /** Starts Middleman (on the port it had, after a stop), and the gateway on the first start. */
  async start(port) {
    this.port = port ?? this.port ?? (await freePort());
    this.proc = spawnMarked(
      "middleman",
      [
        "serve", "--document", this.document, "--pod", this.pod,
        "--public-key", join(this.keys, "public.pem"),
        "--listen", `127.0.0.1:${this.port}`,
        "--document-store", join(this.dir, "store"),
        "--runtime-root", join(this.dir, "run"),
        "--workspace", join(this.dir, "workspace"),
        "--save-interval", "200ms",
        "--shutdown-grace", "3s",
      ],
      join(this.dir, "middleman.log"),
    );
    const direct = `http://127.0.0.1:${this.port}`;
    let ready = false;
    for (let i = 0; i < 300 && !ready; i++) {
      try {
        ready = (await fetch(`${direct}/readyz`)).ok;
      } catch {
        /* not listening yet */
      }
      if (!ready) await new Promise((r) => setTimeout(r, 100));
    }
    if (!ready) throw new Error("middleman did not become ready");
    if (!this.gateway) {
      this.gateway = new OwnGateway(this.dir, join(this.keys, "public.pem"), { [this.pod]: direct });
      await this.gateway.start();
    }
  }

  /** The gateway's origin. */
  get url() {
    return this.gateway.url;
  }

  /** Stops Middleman; the gateway stays (see `close`). */
  async stop() {
    await stopMarked(this.proc);
    this.proc = null;
  }

  /** Stops Middleman and the gateway. */
  async close() {
    await this.stop();
    await this.gateway?.stop();
    this.gateway = null;
  }
}

/** `it`, with a screenshot of the page (`FAILED-<prefix><name>`) when the test fails. */
export function itShows(name, pageOf, fn, prefix = "") {
  it(name, async () => {
    try {
      await fn();
    } catch (e) {
      const page = pageOf();
      if (page) await shot(page, `FAILED-${prefix}${name.slice(0, 40).replace(/[^A-Za-z0-9]+/g, "-")}`).catch(() => {});
      throw e;
    }
  });
}
