// The web client in headless Chromium against a real Watchman (local backend), real Middleman
// processes and real ipykernels. Each test is something a person does; screenshots of the main
// views go to artifacts/web/.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe } from "node:test";
import {
  addCell,
  cell,
  cellCount,
  click,
  env,
  itShows,
  launch,
  newPage,
  OwnMiddleman,
  openFromLanding,
  problems,
  ready,
  run,
  setSource,
  shot,
  sourceOf,
  waitDone,
} from "./harness.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

async function noProblems(page) {
  assert.deepEqual(await problems(page), [], "no CSP violations, uncaught errors or console errors");
}

// A tiny PNG drawn with the standard library (no plotting package in the kernel's environment).
const PNG_CODE = `import struct, zlib, base64
from IPython.display import Image, JSON, Markdown, display
def _png(w, h):
    rows = b"".join(b"\\x00" + bytes(v for x in range(w) for v in (x * 255 // w, 90, 255 - x * 255 // w)) for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
display(Image(data=_png(160, 24)))
display(JSON({"rows": 3, "ok": True}))
display(Markdown("**bold** and a [link](https://example.org)"))
print("\\x1b[32mgreen\\x1b[0m \\x1b[1;31mbold red\\x1b[0m")`;

describe("a document opened from the landing page", () => {
  let page;
  const doc = `web-basic-${Date.now().toString(36)}`;

  before(async () => {
    page = await newPage(browser);
    await openFromLanding(page, doc, "Ada Lovelace");
  });
  after(async () => {
    await page?.context().close();
  });

  itShows("lands in the notebook with the token out of the URL and a strict CSP", () => page, async () => {
    assert.ok(!page.url().includes("token"), `the token is not left in the URL: ${page.url()}`);
    // The page itself (the gateway's build of it), not the landing page at the origin's root.
    assert.match(new URL(page.url()).pathname, /^\/pods\/[^/]+\/$/);
    const response = await page.request.get(page.url());
    const csp = response.headers()["content-security-policy"];
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self';/);
    assert.match(csp, /style-src 'self' 'nonce-[A-Za-z0-9+/=]+';/);
    assert.doesNotMatch(csp, /unsafe/);
    assert.match(await page.locator('[data-role="kernel"]').innerText(), /idle/);
    assert.match(await page.locator(".me").innerText(), /Ada Lovelace · editor/);
    // Every asset comes from the page's own origin (the gateway).
    const external = await page.evaluate(() => performance.getEntriesByType("resource").map((r) => r.name).filter((n) => !n.startsWith(location.origin)));
    assert.deepEqual(external, []);
  });

  itShows("types code, runs it with Shift-Enter and shows the output", () => page, async () => {
    await setSource(page, 0, "greeting = 'hello from the kernel'\nprint(greeting)\n6 * 7");
    await page.keyboard.press("Shift+Enter");
    await waitDone(page, 0);
    const out = await cell(page, 0).locator(".outputs").innerText();
    assert.match(out, /hello from the kernel/);
    assert.match(out, /42/);
    assert.match(await cell(page, 0).locator(".prompt").innerText(), /\[1\]/);
    // Shift-Enter on the last cell added one and moved into it.
    assert.equal(await cellCount(page), 2);
    await page.waitForFunction(() => document.activeElement?.matches(".cm-content") && document.activeElement.closest("section.cell") === document.querySelectorAll("section.cell")[1]);
    await noProblems(page);
  });

  itShows("shows the dependency graph, stale cells in lazy mode, and errors blocking dependents", () => page, async () => {
    await setSource(page, 1, "shout = greeting.upper()\nprint(shout)");
    await run(page, 1);
    assert.match(await cell(page, 1).locator(".outputs").innerText(), /HELLO FROM THE KERNEL/);
    assert.match(await cell(page, 0).locator(".deps").innerText(), /defines greeting.*feeds cell 2/);
    assert.match(await cell(page, 1).locator(".deps").innerText(), /uses cell 1/);
    await page.selectOption('[data-action="reactivity"]', "lazy");
    await setSource(page, 0, "greeting = 'changed'\nprint(greeting)");
    await run(page, 0);
    await cell(page, 1).locator(".state-badge", { hasText: "stale" }).waitFor();
    await page.click('[data-action="run-stale"]');
    await cell(page, 1).locator(".outputs", { hasText: "CHANGED" }).waitFor();
    await page.selectOption('[data-action="reactivity"]', "autorun");
    // An error upstream: the dependent is blocked, and says by what.
    await setSource(page, 0, "greeting = 1 / 0");
    await run(page, 0);
    await cell(page, 0).locator(".error-output", { hasText: "ZeroDivisionError" }).waitFor();
    await cell(page, 1).locator(".state-badge", { hasText: "failed" }).waitFor({ timeout: 15_000 });
    assert.match(await cell(page, 1).locator(".state-badge").innerText(), /^not run: cell 1 failed$/);
    await shot(page, "graph-and-errors");
    await setSource(page, 0, "greeting = 'hello again'");
    await run(page, 0);
    await cell(page, 1).locator(".outputs", { hasText: "HELLO AGAIN" }).waitFor({ timeout: 15_000 });
    // A name redefined below: read from the nearest cell above by default, an error when the
    // document asks for one definition per name.
    await setSource(page, 1, "greeting = greeting + '!'\nprint(greeting)");
    await cell(page, 1).locator(".deps", { hasText: "uses cell 1" }).waitFor();
    await page.selectOption('[data-action="graph-rule"]', "strict");
    await cell(page, 1).locator(".deps .graph-error", { hasText: "also defined in cell 1" }).waitFor();
    await page.selectOption('[data-action="graph-rule"]', "positional");
    await cell(page, 1).locator(".deps", { hasText: "uses cell 1" }).waitFor();
    assert.equal(await cell(page, 1).locator(".deps .graph-error").count(), 0);
    await setSource(page, 1, "shout = greeting.upper()\nprint(shout)");
  });

  itShows("answers an input() prompt in the page", () => page, async () => {
    const i = await addCell(page);
    await setSource(page, i, "name = input('Your name? ')\nprint('nice to meet you,', name)");
    await run(page, i, { wait: false });
    const field = cell(page, i).locator(".stdin input");
    await field.waitFor();
    assert.match(await cell(page, i).locator(".stdin-prompt").innerText(), /Your name\?/);
    await shot(page, "input-prompt");
    await field.fill("Ada");
    await field.press("Enter");
    await waitDone(page, i);
    const out = await cell(page, i).locator(".outputs").innerText();
    assert.match(out, /nice to meet you, Ada/);
    assert.equal(await cell(page, i).locator(".stdin").count(), 0, "the prompt is gone once answered");
  });

  itShows("interrupts a running loop", () => page, async () => {
    const i = await addCell(page);
    await setSource(page, i, "import time\nn = 0\nwhile True:\n    n += 1\n    time.sleep(0.05)");
    await run(page, i, { wait: false });
    await page.waitForSelector(".kernel-busy");
    await cell(page, i).locator(".state-badge", { hasText: "running" }).waitFor();
    assert.match(await page.locator('[data-role="queue"]').innerText(), /running cell \d/);
    await shot(page, "running");
    await page.click('[data-action="interrupt"]');
    await cell(page, i).locator(".error-output", { hasText: "KeyboardInterrupt" }).waitFor({ timeout: 20_000 });
    await page.waitForSelector(".kernel-idle");
    await waitDone(page, i);
    assert.ok(await cell(page, i).evaluate((el) => el.classList.contains("state-error")));
    // The kernel still works, and kept its state.
    const j = await addCell(page);
    await setSource(page, j, "n > 0");
    await run(page, j);
    assert.match(await cell(page, j).locator(".outputs").innerText(), /True/);
  });

  itShows("renders rich outputs, keeps HTML output scripts away from the page and its token", () => page, async () => {
    const i = await addCell(page);
    await setSource(page, i, PNG_CODE);
    await run(page, i);
    const c = cell(page, i);
    await c.locator("img.output-image").waitFor();
    assert.ok(await c.locator("img.output-image").evaluate((img) => img.complete && img.naturalWidth === 160));
    assert.match(await c.locator(".output-json").innerText(), /"rows": 3/);
    assert.equal(await c.locator(".output-markdown strong").innerText(), "bold");
    assert.equal(await c.locator(".output-markdown a").getAttribute("rel"), "noopener noreferrer");
    assert.equal(await c.locator(".ansi-green-fg").innerText(), "green");

    const j = await addCell(page);
    const probe = `from IPython.display import HTML
HTML("""<div id="probe">not run</div><script>
var r = [];
try { r.push("parent-dom:" + window.parent.document.body.innerHTML.length); } catch (e) { r.push("parent-dom:blocked"); }
try { r.push("parent-url:" + window.parent.location.href); } catch (e) { r.push("parent-url:blocked"); }
try { r.push("top-url:" + window.top.location.href); } catch (e) { r.push("top-url:blocked"); }
try { r.push("storage:" + window.sessionStorage.getItem("nbplat.token")); } catch (e) { r.push("storage:blocked"); }
try { r.push("cookie:" + document.cookie); } catch (e) { r.push("cookie:blocked"); }
r.push("origin:" + window.origin, "referrer:" + document.referrer, "url:" + location.href);
document.getElementById("probe").textContent = "ran " + r.join(" | ");
fetch("/api/notebook").then(function () { document.body.dataset.fetch = "allowed"; }, function () { document.body.dataset.fetch = "blocked"; });
</script>""")`;
    await setSource(page, j, probe);
    await run(page, j);
    const frameEl = cell(page, j).locator("iframe.html-output");
    await frameEl.waitFor();
    assert.equal(await frameEl.getAttribute("sandbox"), "allow-scripts");
    const frame = await (await frameEl.elementHandle()).contentFrame();
    await frame.waitForFunction(() => document.getElementById("probe")?.textContent.startsWith("ran "));
    await frame.waitForFunction(() => document.body.dataset.fetch !== undefined);
    const report = await frame.evaluate(() => document.getElementById("probe").textContent);
    const fetched = await frame.evaluate(() => document.body.dataset.fetch);
    for (const part of ["parent-dom:blocked", "parent-url:blocked", "top-url:blocked", "storage:blocked", "cookie:blocked", "origin:null", "referrer: "]) {
      assert.ok(report.includes(part), `${part} in ${report}`);
    }
    assert.equal(fetched, "blocked", "the output cannot reach Middleman's API");
    const token = await page.evaluate(() => sessionStorage.getItem("nbplat.token"));
    assert.ok(token && token.length > 40);
    assert.ok(!report.includes(token) && !report.includes(token.slice(0, 20)), "the script saw no part of the token");
    // The frame was sized to its content, and the page is unharmed.
    assert.ok((await frameEl.boundingBox()).height > 10);
    await shot(page, "outputs");
    await noProblems(page);
  });

  itShows("collapses long outputs and shows the byte-cap notice for huge ones", () => page, async () => {
    const i = await addCell(page);
    await setSource(page, i, "for k in range(3000):\n    print('line', k)");
    await run(page, i);
    const toggle = cell(page, i).locator(".output-toggle");
    await toggle.waitFor();
    assert.match(await toggle.innerText(), /collapsed \(3,000 lines\)/);
    const box = await cell(page, i).locator(".output-list").boundingBox();
    assert.ok(box.height < 500, `collapsed to ${box.height}px`);
    await click(toggle);
    await cell(page, i).locator(".output-list:not(.collapsed)").waitFor();
    const open = await cell(page, i).locator(".output-list").boundingBox();
    assert.ok(open.height > 2000, `expanded to ${open.height}px (${await toggle.innerText()})`);
    await click(toggle);

    const j = await addCell(page);
    await setSource(page, j, "print('x' * 100 + '\\n', end='')\nfor _ in range(20):\n    print('y' * 50_000)");
    await run(page, j);
    const notice = cell(page, j).locator(".notice.truncated");
    await notice.waitFor();
    assert.match(await notice.innerText(), /256 KiB output limit/);
    await shot(page, "truncated");
    // Still responsive: a cell runs and shows its output.
    const k = await addCell(page);
    await setSource(page, k, "'still fine'");
    await run(page, k);
    assert.match(await cell(page, k).locator(".outputs").innerText(), /still fine/);
  });

  itShows("adds, moves, retypes and deletes cells with buttons and Jupyter keys, never below one", () => page, async () => {
    // Markdown: type, leave, and it is rendered.
    await click(cell(page, 0).locator(".cm-content"));
    await page.keyboard.press("Escape");
    const before = await cellCount(page);
    await page.keyboard.press("a");
    await page.waitForFunction(
      (n) => document.querySelectorAll("section.cell").length > n && document.activeElement?.matches(".cm-content") && document.activeElement.closest("section.cell") === document.querySelectorAll("section.cell")[0],
      before,
    );
    await page.keyboard.insertText("# Notes\n\nSome *emphasis*.");
    await page.keyboard.press("Escape");
    await page.keyboard.press("m");
    await page.waitForFunction(() => document.querySelectorAll("section.cell")[0].classList.contains("kind-markdown"));
    await page.keyboard.press("Shift+Enter");
    await cell(page, 0).locator(".markdown.rendered h1", { hasText: "Notes" }).waitFor();
    assert.equal(await cell(page, 0).locator(".markdown.rendered em").innerText(), "emphasis");
    await shot(page, "notebook");

    // Move the first code cell up above the markdown, and back.
    const firstCode = await sourceOf(page, 1);
    await click(cell(page, 1).locator('[data-action="move-up"]'));
    await page.waitForFunction(() => document.querySelectorAll("section.cell")[1].classList.contains("kind-markdown"));
    assert.equal(await sourceOf(page, 0), firstCode);
    await click(cell(page, 0).locator('[data-action="move-down"]'));
    await page.waitForFunction(() => document.querySelectorAll("section.cell")[0].classList.contains("kind-markdown"));

    // Delete with D, D until one is left; the last cannot go.
    let n = await cellCount(page);
    await click(cell(page, 0).locator(".markdown.rendered"));
    while (n > 1) {
      await page.keyboard.press("Escape");
      await page.keyboard.press("d");
      await page.keyboard.press("d");
      await page.waitForFunction((m) => document.querySelectorAll("section.cell").length < m, n);
      n = await cellCount(page);
    }
    assert.equal(n, 1);
    assert.ok(await cell(page, 0).locator('[data-action="delete-cell"]').isDisabled());
    await page.keyboard.press("d");
    await page.keyboard.press("d");
    await page.waitForTimeout(300);
    assert.equal(await cellCount(page), 1, "a notebook keeps one cell");
  });

  itShows("exports and imports .ipynb", () => page, async () => {
    await setSource(page, 0, "exported = True");
    const [download] = await Promise.all([page.waitForEvent("download"), page.click('[data-action="export"]')]);
    const file = join(env.tmp, "export.ipynb");
    await download.saveAs(file);
    const nb = JSON.parse(readFileSync(file, "utf8"));
    assert.equal(nb.nbformat, 4);
    assert.ok(nb.cells.some((c) => [].concat(c.source).join("").includes("exported = True")));

    const imported = {
      nbformat: 4,
      nbformat_minor: 5,
      metadata: {},
      cells: [
        { id: "intro", cell_type: "markdown", metadata: {}, source: ["# Imported\n", "From a file."] },
        { id: "code1", cell_type: "code", metadata: {}, source: "a = 2\na ** 10", outputs: [], execution_count: null },
      ],
    };
    const upload = join(env.tmp, "import.ipynb");
    writeFileSync(upload, JSON.stringify(imported));
    await page.setInputFiles('[data-action="import-file"]', upload);
    await cell(page, 0).locator(".markdown.rendered h1", { hasText: "Imported" }).waitFor();
    assert.equal(await cellCount(page), 2);
    await run(page, 1);
    assert.match(await cell(page, 1).locator(".outputs").innerText(), /1024/);
    await noProblems(page);
  });
});

describe("two people in one document", () => {
  let ada, grace;
  const doc = `web-collab-${Date.now().toString(36)}`;
  before(async () => {
    ada = await newPage(browser);
    grace = await newPage(browser);
    await openFromLanding(ada, doc, "Ada");
    await openFromLanding(grace, doc, "Grace");
  });
  after(async () => {
    await ada?.context().close();
    await grace?.context().close();
  });

  itShows("both see each other, type in the same cell at once and end with the merged text", () => ada, async () => {
    await ada.locator('.people .avatar[data-name="Grace"]').waitFor();
    await grace.locator('.people .avatar[data-name="Ada"]').waitFor();
    await setSource(ada, 0, "middle = 1");
    await grace.waitForFunction(() => document.querySelector("section.cell .cm-content")?.textContent.includes("middle = 1"));
    // Ada at the start, Grace at the end, typing at the same time, key by key.
    await click(cell(ada, 0).locator(".cm-content"));
    await ada.keyboard.press("ControlOrMeta+Home");
    await click(cell(grace, 0).locator(".cm-content"));
    await grace.keyboard.press("ControlOrMeta+End");
    await Promise.all([ada.keyboard.type("first = 0; ", { delay: 15 }), grace.keyboard.type("; last = 2", { delay: 15 })]);
    const want = "first = 0; middle = 1; last = 2";
    for (const p of [ada, grace]) {
      await p.waitForFunction((w) => {
        const lines = Array.from(document.querySelectorAll("section.cell .cm-line")).map((l) => {
          const c = l.cloneNode(true);
          c.querySelectorAll(".remote-caret").forEach((x) => x.remove());
          return c.textContent.replace(/\u2060/g, "");
        });
        return lines.join("\n") === w;
      }, want);
    }
    assert.equal(await sourceOf(ada, 0), want);
    assert.equal(await sourceOf(grace, 0), want);
    // Each sees the other's caret, labelled.
    await ada.locator(".remote-caret-label", { hasText: "Grace" }).waitFor();
    await grace.locator(".remote-caret-label", { hasText: "Ada" }).waitFor();
    // A run by one shows in the other's page.
    await grace.keyboard.press("Control+Enter");
    await waitDone(ada, 0);
    await ada.locator("section.cell .prompt", { hasText: "[1]" }).waitFor();
    await shot(ada, "collaboration");
    await noProblems(ada);
    await noProblems(grace);
  });

  itShows("work on a small analysis together (the README's screenshot)", () => ada, async () => {
    const md = await addCell(ada);
    await setSource(ada, md, "## Sales by region\n\nEdited by *Ada* and *Grace* at once; cells re-run when what they use changes.");
    await ada.keyboard.press("Escape");
    await ada.keyboard.press("m");
    await ada.waitForFunction((i) => document.querySelectorAll("section.cell")[i].classList.contains("kind-markdown"), md);
    const data = await addCell(ada);
    await setSource(ada, data, "sales = {'north': 120, 'south': 95, 'east': 143, 'west': 88}\ntotal = sum(sales.values())\nprint(f'\\x1b[1;34mtotal\\x1b[0m {total}')");
    await run(ada, data);
    const table = await addCell(ada);
    await setSource(
      ada,
      table,
      "from IPython.display import HTML\nrows = ''.join(f'<tr><td>{k}</td><td>{v}</td><td>{v / total:.0%}</td></tr>' for k, v in sorted(sales.items()))\nHTML(f'<table><tr><th>region</th><th>sales</th><th>share</th></tr>{rows}</table>')",
    );
    await run(ada, table);
    await cell(ada, table).locator("iframe.html-output").waitFor();
    const frame = await (await cell(ada, table).locator("iframe.html-output").elementHandle()).contentFrame();
    await frame.waitForSelector("table");
    assert.match(await cell(ada, table).locator(".deps").innerText(), /uses cell 3/);
    // Grace edits the data cell while Ada looks.
    await click(cell(grace, data).locator(".cm-content"));
    await grace.keyboard.press("ControlOrMeta+End");
    await grace.keyboard.type("  # checked", { delay: 10 });
    await ada.locator(".remote-caret-label", { hasText: "Grace" }).waitFor();
    await click(cell(ada, table).locator(".cm-content"));
    await ada.waitForTimeout(400);
    await shot(ada, "readme");
    await noProblems(ada);
  });

  itShows("gives a viewer a read-only notebook without run buttons", () => ada, async () => {
    const viewer = await newPage(browser);
    try {
      await openFromLanding(viewer, doc, "Vera", "viewer");
      assert.match(await viewer.locator(".me").innerText(), /viewer/);
      assert.equal(await viewer.locator('[data-action="run"], [data-action="run-cell"], [data-action="interrupt"], [data-action="restart"]').count(), 0);
      assert.equal(await viewer.locator(".cm-content").first().getAttribute("contenteditable"), "false");
      const before = await sourceOf(ada, 0);
      const cells = await cellCount(ada);
      await click(viewer.locator("section.cell .cm-content").first());
      await viewer.keyboard.type("zzz");
      await viewer.keyboard.press("Shift+Enter");
      await viewer.waitForTimeout(500);
      assert.equal(await sourceOf(viewer, 0), before);
      assert.equal(await sourceOf(ada, 0), before, "the viewer's keys changed nothing");
      assert.equal(await cellCount(ada), cells);
      assert.match(await viewer.locator(".banners").innerText(), /read-only/);
      await ada.locator('.people .avatar[data-name="Vera"]').waitFor();
      await shot(viewer, "viewer");
      await noProblems(viewer);
    } finally {
      await viewer.context().close();
    }
  });
});

describe("a Middleman restarted under an open page", () => {
  const mm = new OwnMiddleman(`web-restart-${Date.now().toString(36)}`);
  let page;
  before(async () => {
    await mm.start();
    page = await newPage(browser);
  });
  after(async () => {
    await page?.context().close();
    await mm.close();
  });

  itShows("reconnects by itself, shows what happened, and the document is intact", () => page, async () => {
    await page.goto(mm.url + mm.path("Ada"));
    await ready(page);
    await setSource(page, 0, "kept = 6 * 7\nprint('kept is', kept)");
    await run(page, 0);
    await cell(page, 0).locator(".outputs", { hasText: "kept is 42" }).waitFor();
    await page.waitForTimeout(600); // the store is written within --save-interval (200 ms)

    await mm.stop();
    await page.waitForSelector(".link-reconnecting");
    await shot(page, "reconnecting");
    await mm.start();
    await page.waitForSelector(".link-connected", { timeout: 30_000 });
    await page.locator('.banner[data-key="away"]').waitFor({ timeout: 30_000 });
    assert.match(await page.locator('.banner[data-key="away"]').innerText(), /Middleman restarted/);
    assert.equal(await sourceOf(page, 0), "kept = 6 * 7\nprint('kept is', kept)");
    assert.match(await cell(page, 0).locator(".outputs").innerText(), /kept is 42/);
    await page.waitForSelector(".kernel-idle", { timeout: 60_000 });
    // The kernel is new: the page says the cell's results are not in it, and offers to run.
    await page.locator('.banner[data-key="not-in-kernel"]').waitFor({ timeout: 30_000 });
    await cell(page, 0).locator(".state-badge", { hasText: "not in kernel" }).waitFor();
    assert.match(await cell(page, 0).locator(".last-run").innerText(), /Ada · .* · earlier kernel/);
    // It works again: the kernel is new, so the cell runs from scratch.
    await run(page, 0);
    assert.match(await cell(page, 0).locator(".prompt").innerText(), /\[1\]/);
    await page.locator('.banner[data-key="not-in-kernel"]').waitFor({ state: "detached" });
    await shot(page, "reconnected");
    await noProblems(page);
  });
});

/**
 * A TCP relay between the browser and the gateway: `drop()` resets every connection through it
 * and refuses new ones (a network drop, seen by the page as an abnormal close) until `restore()`.
 */
class Link {
  constructor(target) {
    this.target = target;
    this.up = true;
    this.sockets = new Set();
    this.server = createServer((client) => {
      if (!this.up) return client.resetAndDestroy();
      const upstream = connect(target, "127.0.0.1");
      for (const [a, b] of [[client, upstream], [upstream, client]]) {
        this.sockets.add(a);
        a.on("error", () => b.destroy());
        a.on("close", () => {
          this.sockets.delete(a);
          b.destroy();
        });
        a.pipe(b);
      }
    });
  }

  async start() {
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    return `http://127.0.0.1:${this.server.address().port}`;
  }

  drop() {
    this.up = false;
    for (const s of this.sockets) s.resetAndDestroy();
  }

  restore() {
    this.up = true;
  }

  async stop() {
    this.drop();
    await new Promise((r) => this.server.close(r));
  }
}

describe("a network drop under an open page (the gateway and Middleman keep running)", () => {
  const mm = new OwnMiddleman(`web-drop-${Date.now().toString(36)}`);
  let link;
  let via;
  let page;
  let other;
  before(async () => {
    await mm.start();
    link = new Link(mm.gateway.port);
    via = await link.start();
    page = await newPage(browser);
    other = await newPage(browser);
  });
  after(async () => {
    await page?.context().close();
    await other?.context().close();
    await link?.stop();
    await mm.close();
  });

  itShows("resumes, shows the output it missed and says it caught up", () => page, async () => {
    // Ada reaches the gateway through the link; Grace directly.
    await page.goto(via + mm.path("Ada"));
    await ready(page);
    await other.goto(mm.url + mm.path("Grace"));
    await ready(other);
    await setSource(other, 0, "print('before the drop')");
    await run(other, 0);
    await cell(page, 0).locator(".outputs", { hasText: "before the drop" }).waitFor();

    // Ada's network goes away (her connections are reset); the gateway and Middleman keep
    // running. (Chromium's offline emulation would not do: it leaves an open WebSocket alone.)
    link.drop();
    await page.waitForSelector(".link-reconnecting", { timeout: 10_000 });
    await setSource(other, 0, "missed = 6 * 7\nprint('missed', missed)");
    await run(other, 0);
    await cell(other, 0).locator(".outputs", { hasText: "missed 42" }).waitFor();
    assert.doesNotMatch(await cell(page, 0).locator(".outputs").innerText(), /missed 42/);

    link.restore();
    await page.waitForSelector(".link-connected", { timeout: 30_000 });
    const banner = page.locator('.banner[data-key="away"]');
    await banner.waitFor({ timeout: 30_000 });
    const text = await banner.innerText();
    assert.match(text, /caught up on \d+ missed events?/);
    assert.match(text, /\d+ outputs?; 1 run finished; 1 cell changed/);
    assert.doesNotMatch(text, /Middleman restarted/);
    await cell(page, 0).locator(".outputs", { hasText: "missed 42" }).waitFor({ timeout: 10_000 });
    assert.doesNotMatch(await cell(page, 0).locator(".outputs").innerText(), /before the drop/);
    assert.equal(await cell(page, 0).evaluate((el) => el.classList.contains("changed-away")), true);
    assert.equal(await sourceOf(page, 0), "missed = 6 * 7\nprint('missed', missed)");
    await shot(page, "caught-up-after-drop");
    await noProblems(page);
  });
});
