// Run semantics in the browser, one test per rule (docs/reactivity.md): "Run all" runs each
// cell once in dependency order; what depends on a cell that did not run does not run, and its
// badge names the real cause by position; a restart marks the cells whose results the kernel
// lost, with one banner offering "Run all" or "Run stale"; each cell says who ran it, when and
// for how long. Screenshots at 1280x800 and 390x844 go to artifacts/web/.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { addCell, cell, click, launch, newPage, openFromLanding, problems, setSource, shot, waitDone } from "./harness.mjs";

let browser;
let page;
before(async () => {
  browser = await launch();
  page = await newPage(browser, { viewport: { width: 1280, height: 800 } });
  await openFromLanding(page, `runs-${Date.now().toString(36)}`, "Ada");
});
after(async () => {
  await browser?.close();
});

async function fill(sources) {
  for (let i = 0; i < sources.length; i++) {
    if (i > 0) await addCell(page);
    await setSource(page, i, sources[i]);
  }
}

async function badge(i) {
  return (await cell(page, i).locator(".state-badge").innerText()).trim();
}

async function runAll() {
  await click(page.locator('.toolbar [data-action="run-all"]'));
}

describe("run semantics", () => {
  it("Run all runs each cell once, in dependency order", async () => {
    await fill(["xs = []", "xs.append(1)\nprint(xs)", "print('total', sum(xs))"]);
    await runAll();
    await cell(page, 2).locator(".outputs", { hasText: "total 1" }).waitFor({ timeout: 60_000 });
    await waitDone(page, 2);
    assert.equal((await cell(page, 1).locator(".outputs").innerText()).trim(), "[1]", "appended once");
    // Each cell says who ran it (through the graph), when, and for how long.
    assert.match(await cell(page, 1).locator(".last-run").innerText(), /^Ada \(graph\) · .+ · \d+(\.\d)? (ms|s)$/);
  });

  it("a cell that may not run blocks what reads its names, and the badge says which cell", async () => {
    // cell 4 defines z, cell 5 reads it; cell 4 is disabled.
    await addCell(page);
    await setSource(page, 3, "z = len(xs)");
    await addCell(page);
    await setSource(page, 4, "print('z is', z)");
    await cell(page, 3).hover();
    await click(cell(page, 3).locator('[data-action="toggle-disabled"]'));
    await cell(page, 3).locator(".state-badge", { hasText: "disabled" }).waitFor();
    await runAll();
    await cell(page, 4).locator(".state-badge", { hasText: "not run" }).waitFor({ timeout: 60_000 });
    assert.equal(await badge(4), "not run: cell 4 is disabled");
    await waitDone(page, 2);
    assert.equal((await cell(page, 1).locator(".outputs").innerText()).trim(), "[1]", "a second Run all starts from a fresh list");
    assert.equal(await cell(page, 4).locator(".output-list").innerText(), "", "never ran from an older value");
    await cell(page, 3).hover();
    await click(cell(page, 3).locator('[data-action="toggle-disabled"]'));
  });

  it("a failure blocks its dependents, naming the cell that failed", async () => {
    await setSource(page, 0, "xs = []\nraise ValueError('no data')");
    await runAll();
    await cell(page, 1).locator(".state-badge", { hasText: "failed" }).waitFor({ timeout: 60_000 });
    assert.equal(await badge(1), "not run: cell 1 failed");
    await shot(page, "runs-blocked-1280");
    await setSource(page, 0, "xs = []");
  });

  it("after a restart the cells whose results are gone say so, and one banner runs them again", async () => {
    await runAll();
    await cell(page, 4).locator(".outputs", { hasText: "z is 1" }).waitFor({ timeout: 60_000 });
    await click(page.locator('.toolbar [data-action="restart"]'));
    const banner = page.locator('.banner[data-key="not-in-kernel"]');
    await banner.waitFor({ timeout: 60_000 });
    assert.match(await banner.innerText(), /The kernel is new: 5 cells show results it does not have/);
    assert.equal(await badge(1), "not in kernel: run it again");
    await page.waitForSelector(".kernel-idle", { timeout: 60_000 });
    await shot(page, "runs-restart-1280");
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, "runs-restart-390");
    await page.setViewportSize({ width: 1280, height: 800 });
    await click(banner.locator('[data-action="banner-run-stale"]'));
    await banner.waitFor({ state: "detached", timeout: 60_000 });
    await cell(page, 4).locator(".outputs", { hasText: "z is 1" }).waitFor({ timeout: 60_000 });
    await waitDone(page, 4);
    assert.equal((await cell(page, 1).locator(".outputs").innerText()).trim(), "[1]");
    for (let i = 0; i < 5; i++) assert.doesNotMatch(await cell(page, i).locator(".last-run").innerText(), /earlier kernel/);
    assert.deepEqual(await problems(page), []);
  });
});

describe("a plan without network", () => {
  // The local backend's kernels run in a jail without network when Watchman runs as root (as in
  // CI); elsewhere the kernel may have the host's network, and there is nothing to say.
  const jailed = process.getuid?.() === 0;
  it("says so at once when a cell runs %pip install", { skip: !jailed && "not root: the kernel may have network" }, async () => {
    await addCell(page);
    const i = 5;
    await setSource(page, i, "%pip install surely-not-installed-package");
    await click(cell(page, i).locator('[data-action="run-cell"]'));
    const error = cell(page, i).locator(".error-output", { hasText: "This notebook has no network" });
    await error.waitFor({ timeout: 30_000 });
    assert.match(await error.innerText(), /NoNetworkError/);
    await shot(page, "no-network-1280");
  });
});
