// "A notebook people can work in all day" (issue 15), in headless Chromium against a real
// Watchman, Middleman and ipykernel: the keyboard never traps (Tab leaves an editor entered by
// Tab; Enter then Tab indents; Esc leaves), Jupyter's c/x/v/z/Shift-M, input() focus and its
// echo in place, math by KaTeX with nothing fetched from elsewhere, toasts that name cells and
// stay off them, axe-core finding nothing serious, and a phone-sized page that never scrolls
// sideways. Screenshots go to artifacts/web/ (daylong-1280.png, daylong-390.png, math-1280.png).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { after, before, describe } from "node:test";
import { addCell, cell, cellCount, click, itShows as shows, launch, newPage, openFromLanding, problems, ready, run, setSource, shot, sourceOf, waitDone } from "./harness.mjs";

const itShows = (name, pageOf, fn) => shows(name, pageOf, fn, "daylong-");

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

const active = (page) =>
  page.evaluate(() => {
    const a = document.activeElement;
    const c = a?.closest("section.cell");
    return {
      cell: c ? Array.from(document.querySelectorAll("section.cell")).indexOf(c) : -1,
      editor: !!a?.matches(".cm-content"),
      stdin: !!a?.matches(".stdin-field"),
    };
  });

const selectedIndex = (page) => page.evaluate(() => Array.from(document.querySelectorAll("section.cell")).findIndex((c) => c.classList.contains("selected")));

async function waitCount(page, n) {
  await page.waitForFunction((m) => document.querySelectorAll("section.cell").length === m, n);
}

async function waitSource(page, index, text) {
  for (let i = 0; i < 100; i++) {
    if ((await sourceOf(page, index).catch(() => null)) === text) return;
    await page.waitForTimeout(100);
  }
  assert.equal(await sourceOf(page, index), text);
}

/** axe-core's serious and critical violations on the page as it is (output frames left out). */
async function axeViolations(page) {
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(AXE);
  const found = await page.evaluate(async () => {
    const r = await window.axe.run(document, { iframes: false, resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 4).map((n) => n.target.join(" ")) }));
  });
  return found.filter((v) => v.impact === "serious" || v.impact === "critical");
}

describe("a day-long notebook", () => {
  let ada;
  let grace;
  const doc = `web-daylong-${Date.now().toString(36)}`;
  const requests = [];

  before(async () => {
    ada = await newPage(browser, { viewport: { width: 1280, height: 800 } });
    ada.on("request", (r) => requests.push(r.url()));
    await openFromLanding(ada, doc, "Ada Lovelace");
    grace = await newPage(browser);
    await openFromLanding(grace, doc, "Grace Hopper");
  });
  after(async () => {
    await ada?.context().close();
    await grace?.context().close();
  });

  itShows("lets Tab leave an editor entered by Tab, indents after Enter, and leaves on Esc", () => ada, async () => {
    await setSource(ada, 0, "x = 1");
    await waitSource(grace, 0, "x = 1");
    await ada.keyboard.press("Escape");
    // From the control before the editor (the cell's own tools; delete is disabled with one
    // cell), Tab goes into the editor...
    await cell(ada, 0).locator('[data-action="clear-cell"]').focus();
    await ada.keyboard.press("Tab");
    assert.deepEqual(await active(ada), { cell: 0, editor: true, stdin: false });
    // ...and Tab again leaves it, with the source untouched, here and for a collaborator.
    await ada.keyboard.press("Tab");
    const next = await active(ada);
    assert.ok(!(next.cell === 0 && next.editor), `focus moved on: ${JSON.stringify(next)}`);
    await ada.keyboard.press("Shift+Tab");
    assert.deepEqual(await active(ada), { cell: 0, editor: true, stdin: false }, "Shift-Tab comes back");
    await ada.keyboard.press("Shift+Tab");
    assert.ok(!(await active(ada)).editor, "Shift-Tab leaves too");
    await ada.waitForTimeout(400);
    assert.equal(await sourceOf(ada, 0), "x = 1");
    assert.equal(await sourceOf(grace, 0), "x = 1", "nothing changed for a collaborator");
    // Command mode, Enter: editing, where Tab indents.
    await click(cell(ada, 0).locator(".cm-content"));
    await ada.keyboard.press("Escape");
    assert.equal((await active(ada)).editor, false, "Esc leaves the editor");
    await ada.keyboard.press("Enter");
    assert.deepEqual(await active(ada), { cell: 0, editor: true, stdin: false });
    // At the line's start (after a name, Tab would complete it).
    await ada.keyboard.press("Home");
    await ada.keyboard.press("Tab");
    await waitSource(ada, 0, "    x = 1");
    await waitSource(grace, 0, "    x = 1");
    await ada.keyboard.press("Escape");
    assert.equal((await active(ada)).editor, false, "Esc leaves an editing editor too");
    assert.equal(await selectedIndex(ada), 0);
    await setSource(ada, 0, "a = 1");
  });

  itShows("copies, pastes, cuts, undoes a deletion and merges cells with c, v, x, z and Shift-M", () => ada, async () => {
    const i = await addCell(ada);
    assert.equal(i, 1);
    await setSource(ada, 1, "b = 2");
    await click(cell(ada, 0).locator(".cm-content"));
    await ada.keyboard.press("Escape");
    await ada.keyboard.press("c");
    await ada.keyboard.press("v");
    await waitCount(ada, 3);
    await waitSource(ada, 1, "a = 1");
    await ada.waitForFunction(() => document.querySelectorAll("section.cell")[1].classList.contains("selected"));
    assert.equal(await sourceOf(ada, 2), "b = 2");
    // Cut the pasted copy, then bring it back with z.
    await ada.keyboard.press("x");
    await waitCount(ada, 2);
    assert.equal(await sourceOf(ada, 1), "b = 2");
    await ada.keyboard.press("z");
    await waitCount(ada, 3);
    await waitSource(ada, 1, "a = 1");
    await ada.waitForFunction(() => document.querySelectorAll("section.cell")[1].classList.contains("selected"));
    // Shift-M: the selected cell and the one below become one.
    await ada.keyboard.press("Shift+M");
    await waitCount(ada, 2);
    await waitSource(ada, 1, "a = 1\nb = 2");
    await waitSource(grace, 1, "a = 1\nb = 2");
    assert.equal(await sourceOf(ada, 0), "a = 1");
    // Deleted with D, D and restored with its type and source at its place.
    await setSource(ada, 1, "## Heading");
    await ada.keyboard.press("Escape");
    await ada.keyboard.press("m");
    await ada.waitForFunction(() => document.querySelectorAll("section.cell")[1].classList.contains("kind-markdown"));
    await ada.keyboard.press("d");
    await ada.keyboard.press("d");
    await waitCount(ada, 1);
    await ada.keyboard.press("z");
    await waitCount(ada, 2);
    await ada.waitForFunction(() => document.querySelectorAll("section.cell")[1].classList.contains("kind-markdown"));
    await waitSource(ada, 1, "## Heading");
  });

  itShows("moves focus to input() when I ran the cell, and keeps the answer where the prompt was", () => ada, async () => {
    const i = await addCell(ada);
    await setSource(ada, i, "print('before')\nv = input('Value? ')\nprint('got', v)\nprint('after')");
    // Grace is typing elsewhere; she did not run it, so her focus stays where it is.
    await click(cell(grace, 0).locator(".cm-content"));
    await run(ada, i, { wait: false });
    await cell(ada, i).locator(".stdin input").waitFor();
    await cell(grace, i).locator(".stdin input").waitFor();
    await ada.waitForFunction(() => document.activeElement?.matches(".stdin-field"));
    assert.equal((await active(ada)).cell, i);
    assert.equal((await active(grace)).stdin, false);
    await ada.keyboard.type("42");
    await ada.keyboard.press("Enter");
    await waitDone(ada, i);
    const order = await cell(ada, i).locator(".output-list").evaluate((el) => Array.from(el.children).map((c) => c.textContent));
    const echo = order.findIndex((t) => /Value\? 42/.test(t));
    const later = order.findIndex((t) => /got 42/.test(t));
    assert.ok(echo >= 0 && later > echo, `the echo stays above later output: ${JSON.stringify(order)}`);
    assert.ok(order[later].includes("after"));
  });

  itShows("renders math with KaTeX and fetches nothing from elsewhere", () => ada, async () => {
    const i = await addCell(ada);
    await setSource(ada, i, "Energy: $E = mc^2$, costs $5 and $6, `$x$` is code, \\$y\\$ is dollars.\n\n$$\\sum_{k=1}^n k = \\frac{n(n+1)}{2}$$\n\nBroken: $\\frac{1$");
    await ada.keyboard.press("Escape");
    await ada.keyboard.press("m");
    await ada.waitForFunction((n) => document.querySelectorAll("section.cell")[n].classList.contains("kind-markdown"), i);
    await ada.keyboard.press("Shift+Enter");
    const md = cell(ada, i).locator(".markdown.rendered");
    await md.locator(".katex").first().waitFor();
    assert.equal(await md.locator(".math-inline .katex").count(), 1);
    assert.equal(await md.locator(".math-display .katex-display").count(), 1);
    assert.equal(await md.locator(".math-error").count(), 1);
    assert.match(await md.locator(".math-error").innerText(), /\\frac\{1/);
    assert.equal(await md.locator("code").innerText(), "$x$");
    const text = await md.innerText();
    assert.match(text, /costs \$5 and \$6/);
    assert.match(text, /\$y\$ is dollars/);
    await ada.evaluate(() => document.fonts.ready);
    assert.ok(await ada.evaluate(() => document.fonts.check("16px KaTeX_Main")), "KaTeX's fonts loaded");
    await md.scrollIntoViewIfNeeded();
    await shot(ada, "math-1280");
    const origin = new URL(ada.url()).origin;
    // The landing page is on the gateway's origin too.
    const elsewhere = requests.filter((u) => !u.startsWith(origin) && !/^(data|blob):/.test(u));
    assert.deepEqual(elsewhere, [], "no request left the origin");
    assert.ok(requests.some((u) => u.startsWith(`${origin}/assets/fonts/KaTeX_`)), "the fonts come from the gateway");
    assert.deepEqual(await problems(ada), []);
  });

  itShows("collapses repeated error toasts, names the cell with a link, and keeps them off it", () => ada, async () => {
    const i = await addCell(ada);
    await setSource(ada, i, "'never runs'");
    await click(cell(ada, i).locator('[data-action="toggle-disabled"]'));
    await cell(ada, i).locator(".state-badge", { hasText: "disabled" }).waitFor();
    await click(cell(ada, i).locator(".cm-content"));
    await cell(ada, i).evaluate((el) => el.scrollIntoView({ block: "end" }));
    for (let k = 0; k < 3; k++) await ada.keyboard.press("Control+Enter");
    const toast = ada.locator(".toast", { has: ada.locator(".cell-ref") });
    await toast.locator(".toast-count", { hasText: "×3" }).waitFor();
    assert.equal(await toast.count(), 1, "one toast for three refusals");
    assert.equal(await toast.locator(".cell-ref").innerText(), `cell ${i + 1}`);
    assert.doesNotMatch(await ada.locator(".toasts").innerText(), /#\d/);
    const ids = await ada.evaluate(() => Array.from(document.querySelectorAll("section.cell")).map((c) => c.dataset.cellId));
    const said = await toast.locator(".toast-text").innerText();
    assert.ok(!ids.some((id) => said.includes(id)), `no internal id in "${said}"`);
    await ada.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    const [t, c] = await Promise.all([ada.locator(".toasts").boundingBox(), cell(ada, i).boundingBox()]);
    const overlap = t.x < c.x + c.width && c.x < t.x + t.width && t.y < c.y + c.height && c.y < t.y + t.height;
    assert.ok(!overlap, `the toast ${JSON.stringify(t)} stays off the cell ${JSON.stringify(c)}`);
    await shot(ada, "daylong-toast-1280");
    // The link selects the cell.
    await toast.locator(".cell-ref").click();
    assert.equal(await selectedIndex(ada), i);
    await click(cell(ada, i).locator('[data-action="toggle-disabled"]'));
  });

  itShows("has no serious or critical axe-core violations, for an editor and a viewer", () => ada, async () => {
    // Outputs, an error, a markdown cell (above) and an open input() prompt.
    const e = await addCell(ada);
    await setSource(ada, e, "print('\\x1b[32mok\\x1b[0m')\n1 / 0");
    await run(ada, e);
    await cell(ada, e).locator(".error-output").waitFor();
    const viewer = await newPage(browser);
    try {
      await openFromLanding(viewer, doc, "Vera", "viewer");
      // The prompt stays open while axe looks (well within the plan's 60 s execution timeout).
      const p = await addCell(ada);
      await setSource(ada, p, "answer = input('Your answer? ')");
      await run(ada, p, { wait: false });
      await cell(ada, p).locator(".stdin input").waitFor();
      await cell(viewer, p).locator(".stdin").waitFor();
      await ada.evaluate(() => window.scrollTo(0, 0));
      await shot(ada, "daylong-1280");
      const began = Date.now();
      const [editor, seen] = await Promise.all([axeViolations(ada), axeViolations(viewer)]);
      console.log(`# axe-core on two pages: ${Date.now() - began} ms`);
      assert.deepEqual(editor, [], `editor page: ${JSON.stringify(editor, null, 1)}`);
      assert.deepEqual(seen, [], `viewer page: ${JSON.stringify(seen, null, 1)}`);
      await cell(ada, p).locator(".stdin input").fill("fine");
      await cell(ada, p).locator(".stdin input").press("Enter");
      await waitDone(ada, p);
    } finally {
      await viewer.context().close();
    }
  });

  itShows("fits a phone: no sideways scroll, two toolbar rows, cell controls reachable", () => ada, async () => {
    const phone = await newPage(browser, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    try {
      await openFromLanding(phone, doc, "Pat");
      await ready(phone);
      assert.ok((await phone.evaluate(() => document.documentElement.scrollWidth)) <= 390, "no horizontal scroll");
      const rows = await phone.locator(".toolbar").evaluate((t) => {
        const tops = new Set();
        for (const el of t.querySelectorAll("button, select, .queue")) {
          const r = el.getBoundingClientRect();
          if (r.width > 0 && r.height > 0) tops.add(Math.round(r.top / 8));
        }
        return { rows: tops.size, height: t.getBoundingClientRect().height };
      });
      assert.ok(rows.rows <= 2 && rows.height <= 90, `toolbar in two rows: ${JSON.stringify(rows)}`);
      // What "More" holds is reachable.
      await phone.locator('[data-action="more"]').click();
      await phone.locator('[data-action="export"]').waitFor({ state: "visible" });
      await phone.locator('[data-action="more"]').click();
      const n = await cellCount(phone);
      const last = n - 1;
      await setSource(phone, last, "6 * 7");
      const runButton = cell(phone, last).locator('[data-action="run-cell"]');
      await runButton.scrollIntoViewIfNeeded();
      assert.ok(await runButton.isVisible());
      const box = await runButton.boundingBox();
      assert.ok(box.x >= 0 && box.x + box.width <= 390, `run button on screen: ${JSON.stringify(box)}`);
      await click(runButton);
      await waitDone(phone, last);
      assert.match(await cell(phone, last).locator(".outputs").innerText(), /42/);
      assert.ok((await phone.evaluate(() => document.documentElement.scrollWidth)) <= 390, "still no horizontal scroll with outputs");
      await phone.evaluate(() => window.scrollTo(0, 0));
      await shot(phone, "daylong-390");
      assert.deepEqual(await problems(phone), []);
    } finally {
      await phone.context().close();
    }
  });
});
