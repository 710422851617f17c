// Benchmark (not a test): a 1,000,000-row DataFrame shown as a table output (one page, more from
// the kernel) against the same DataFrame as the HTML other clients get (pandas' text/html, in the
// client's sandboxed HTML frame), each in a fresh page of its own document. Measures the time from
// the run to the first rows on screen, the part of it spent in the browser (from the output's
// frame on the WebSocket to the rows drawn), the JavaScript heap of the page and its frames after
// a garbage collection, the resident memory of Chromium's renderer processes (the DOM lives
// outside the JS heap) and the DOM elements. Run by scripts/bench-web.sh; prints Markdown tables.
import { readFileSync } from "node:fs";
import { addCell, cell, launch, newPage, openFromLanding, run, setSource } from "../test/harness.mjs";

const ROWS = 1_000_000;
const ROUNDS = Number(process.env.NBP_BENCH_ROUNDS ?? 3);
const SETUP = [
  "import numpy as np, pandas as pd",
  `n = ${ROWS}`,
  'df = pd.DataFrame({"a": np.arange(n), "b": np.arange(n) / 4, "c": [f"{n - i:07d}" for i in range(n)]})',
  "from IPython.display import HTML",
  "None",
].join("\n");

/** What each case runs, and what on the page says its first rows are drawn. */
const CASES = [
  { name: "table output (50-row page)", code: "df", drawn: ".table-output tbody tr" },
  { name: "pandas HTML, default repr (10 of 1,000,000 rows)", code: "HTML(df._repr_html_())", drawn: "iframe.html-output", frame: true },
  { name: "pandas HTML, df.head(10_000).to_html()", code: "HTML(df.head(10_000).to_html())", drawn: "iframe.html-output", frame: true },
  { name: "pandas HTML, df.head(50_000).to_html()", code: "HTML(df.head(50_000).to_html())", drawn: "iframe.html-output", frame: true },
];

/** The JS heap in use (bytes) across the page and its out-of-process frames, after GC. */
async function heapUsed(page) {
  const sessions = [await page.context().newCDPSession(page)];
  for (const f of page.frames().slice(1)) {
    // In-process frames share the page's heap (and its session); only others have their own.
    const s = await page.context().newCDPSession(f).catch(() => null);
    if (s) sessions.push(s);
  }
  let used = 0;
  for (const s of sessions) {
    await s.send("HeapProfiler.collectGarbage");
    used += (await s.send("Runtime.getHeapUsage")).usedSize;
    await s.detach();
  }
  return used;
}

/** The renderer processes of the browser (one page open at a time) and their resident memory (bytes). */
async function renderers(browser) {
  const s = await browser.newBrowserCDPSession();
  const { processInfo } = await s.send("SystemInfo.getProcessInfo");
  await s.detach();
  const pids = processInfo.filter((p) => p.type === "renderer").map((p) => p.id);
  let kib = 0;
  for (const pid of pids) kib += Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)?.[1] ?? 0);
  return { count: pids.length, rss: kib * 1024 };
}

/** Elements in the page and in every frame. */
async function domNodes(page) {
  let n = 0;
  for (const f of page.frames()) n += await f.evaluate(() => document.getElementsByTagName("*").length).catch(() => 0);
  return n;
}

async function measure(browser, c, round) {
  const page = await newPage(browser);
  // Notes when the first `output` event arrives on the page's WebSocket (page time).
  await page.addInitScript(() => {
    const Socket = window.WebSocket;
    window.WebSocket = class extends Socket {
      constructor(...args) {
        super(...args);
        this.addEventListener("message", (e) => {
          if (!window.__outputAt && typeof e.data === "string" && e.data.includes('"type":"output"')) window.__outputAt = performance.now();
        });
      }
    };
  });
  await openFromLanding(page, `bench-tables-${Date.now().toString(36)}-${round}`, "Bench");
  await setSource(page, 0, SETUP);
  await run(page, 0);
  const i = await addCell(page);
  await setSource(page, i, c.code);
  const heapBefore = await heapUsed(page);
  const before = await renderers(browser);
  const nodesBefore = await domNodes(page);
  const started = await page.evaluate(() => {
    window.__outputAt = 0;
    return performance.now();
  });
  await run(page, i, { wait: false });
  const target = cell(page, i).locator(c.drawn).first();
  await target.waitFor({ timeout: 300_000 });
  // Drawn: rows in the table, or an HTML frame that reported its height (its HTML written and laid out).
  const drawn = await page.waitForFunction(
    ([el, frame]) => (!frame || el.getBoundingClientRect().height > 24) && performance.now(),
    [await target.elementHandle(), !!c.frame],
    { timeout: 300_000, polling: "raf" },
  );
  const drawnAt = await drawn.jsonValue();
  const outputAt = await page.evaluate(() => window.__outputAt);
  const heapAfter = await heapUsed(page);
  const after = await renderers(browser);
  const nodesAfter = await domNodes(page);
  await page.context().close();
  return {
    total: drawnAt - started,
    browser: drawnAt - outputAt,
    heap: heapAfter - heapBefore,
    heapTotal: heapAfter,
    rss: after.rss - before.rss,
    processes: after.count - before.count,
    nodes: nodesAfter - nodesBefore,
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const browser = await launch();
const results = [];
try {
  for (const c of CASES) {
    const runs = [];
    for (let r = 0; r < ROUNDS; r++) runs.push(await measure(browser, c, r));
    const m = (k) => median(runs.map((x) => x[k]));
    results.push({ name: c.name, total: m("total"), browser: m("browser"), heap: m("heap"), heapTotal: m("heapTotal"), rss: m("rss"), processes: m("processes"), nodes: m("nodes") });
    console.error(`bench: ${c.name}: ${JSON.stringify(runs.map((x) => Math.round(x.total)))} ms`);
  }
} finally {
  await browser.close();
}

const mib = (b) => (b / (1 << 20)).toFixed(1);
const table = results[0];
console.log(`${ROWS.toLocaleString("en")} rows × 3 columns, median of ${ROUNDS} runs each, a fresh page and document per run\n`);
console.log("| output | run → first rows ms | output frame → drawn ms | JS heap added MiB | page JS heap MiB | renderer RSS added MiB (processes) | DOM elements added |");
console.log("|---|---|---|---|---|---|---|");
for (const r of results) {
  console.log(`| ${r.name} | ${r.total.toFixed(0)} | ${r.browser.toFixed(0)} | ${mib(r.heap)} | ${mib(r.heapTotal)} | ${mib(r.rss)} (+${r.processes}) | ${r.nodes.toLocaleString("en")} |`);
}
console.log("\n| against the table output | run → first rows | output → drawn | JS heap added | renderer RSS added | DOM elements |");
console.log("|---|---|---|---|---|---|");
for (const r of results.slice(1)) {
  const x = (a, b) => `${(a / b).toFixed(1)}x`;
  console.log(`| ${r.name} | ${x(r.total, table.total)} | ${x(r.browser, table.browser)} | ${x(r.heap, table.heap)} | ${x(r.rss, table.rss)} | ${x(r.nodes, table.nodes)} |`);
}
