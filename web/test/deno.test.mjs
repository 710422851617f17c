// A TypeScript notebook on Deno's Jupyter kernel (the plan scripts/test-web.sh names in
// NBP_WEB_DENO_PLAN): the editor follows the kernel's language (TypeScript mode, its placeholder,
// `//` comments, two-space indentation, no SQL cells), cells run TypeScript with results, streams
// and errors, the kernel completes `Deno.re`, prompt() asks in the page, Interrupt ends
// `while (true) {}` and the kernel goes on with its state, a second page sees runs live, and the
// export says TypeScript.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe } from "node:test";
import { addCell, cell, click, env, itShows, launch, newPage, openFromLanding, problems, run, setSource, shot, sourceOf, waitDone } from "./harness.mjs";

let browser;
let page;
let other;
const doc = `web-deno-${Date.now().toString(36)}`;

before(async () => {
  assert.ok(env.denoPlan, "scripts/test-web.sh names the Deno plan (NBP_WEB_DENO_PLAN)");
  browser = await launch();
  page = await newPage(browser);
  // A Deno pod may still be starting when this file runs first.
  await openFromLanding(page, doc, "Ada", undefined, env.denoPlan);
});
after(async () => {
  await browser?.close();
});

const options = () => page.locator(".cm-tooltip-autocomplete li");

/** The text of a cell's outputs once `text` shows in them. */
async function outputsShow(p, i, text, timeout = 20_000) {
  await cell(p, i).locator(".outputs", { hasText: text }).waitFor({ timeout });
  return cell(p, i).locator(".outputs").innerText();
}

describe("a TypeScript notebook on Deno's kernel", () => {
  itShows("edits code cells as TypeScript, and offers no SQL cells", () => page, async () => {
    assert.match(await page.locator('[data-role="kernel"]').innerText(), /^Deno: /);
    const content = cell(page, 0).locator(".cm-content");
    assert.equal(await content.getAttribute("data-language"), "typescript");
    assert.equal(await cell(page, 0).locator(".cm-placeholder").innerText(), "TypeScript code");
    // SQL cells run through a Python kernel: none to add, and no cell turns into one.
    assert.equal(await page.locator('.add-cells [data-action="add-sql"]').isVisible(), false);
    assert.equal(await page.locator('[data-action="insert-sql"]').isVisible(), false);
    assert.ok(await cell(page, 0).locator('select[data-action="cell-type"] option[value="sql"]').isDisabled());

    // Comments are `//` (Mod-/), indentation two spaces (Enter inside braces).
    await setSource(page, 0, "let a = 1");
    await page.keyboard.press("ControlOrMeta+/");
    await page.waitForFunction(() => document.querySelector("section.cell .cm-content")?.textContent === "// let a = 1");
    await setSource(page, 0, "if (true) {}");
    await page.keyboard.press("ArrowLeft");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.querySelectorAll("section.cell")[0].querySelectorAll(".cm-line").length === 3);
    assert.equal(await sourceOf(page, 0), "if (true) {\n  \n}");

    // TypeScript's keywords and types in the highlighter's colours.
    await setSource(page, 0, "const xs: number[] = [1, 2, 3]; xs.map(x => x * 2)");
    const colour = (text) =>
      content.evaluate((el, t) => {
        const span = Array.from(el.querySelectorAll(".cm-line span")).find((s) => s.textContent === t);
        return span ? getComputedStyle(span).color : null;
      }, text);
    assert.equal(await colour("const"), "rgb(119, 0, 136)", "a keyword");
    assert.equal(await colour("number"), "rgb(6, 112, 74)", "a type name");
  });

  itShows("runs TypeScript: a result, console.log, a thrown error", () => page, async () => {
    await run(page, 0);
    assert.match(await outputsShow(page, 0, "[ 2, 4, 6 ]"), /^\[ 2, 4, 6 \]$/m);
    assert.match(await cell(page, 0).locator(".prompt").innerText(), /\[\d+\]/);

    const log = await addCell(page);
    await setSource(page, log, 'console.log("hi")');
    await run(page, log);
    await cell(page, log).locator(".outputs pre.stream.stdout", { hasText: "hi" }).waitFor();

    const boom = await addCell(page);
    await setSource(page, boom, 'throw new Error("boom")');
    await run(page, boom);
    await cell(page, boom).locator(".error-output", { hasText: "boom" }).waitFor();
    assert.ok(await cell(page, boom).evaluate((el) => el.classList.contains("state-error")));
    await shot(page, "deno-notebook");
  });

  itShows("completes from the kernel while typing", () => page, async () => {
    const i = await addCell(page);
    await click(cell(page, i).locator(".cm-content"));
    await page.keyboard.type("Deno.re", { delay: 40 });
    await options().filter({ hasText: /^readTextFile/ }).first().waitFor({ timeout: 15_000 });
    const labels = await options().allInnerTexts();
    assert.ok(labels.every((l) => /^re/i.test(l)), `every option starts with what was typed: ${labels.join(", ")}`);
    await shot(page, "deno-completion");
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => !document.querySelector(".cm-tooltip-autocomplete"));
    await setSource(page, i, "");
  });

  itShows("answers a prompt() in the page", () => page, async () => {
    const i = await addCell(page);
    await setSource(page, i, 'const answer = prompt("name?");');
    await run(page, i, { wait: false });
    const field = cell(page, i).locator(".stdin input");
    await field.waitFor({ timeout: 20_000 });
    assert.match(await cell(page, i).locator(".stdin-prompt").innerText(), /name\?/);
    await field.fill("Ada");
    await field.press("Enter");
    await waitDone(page, i);
    await cell(page, i).locator(".stdin-done", { hasText: "name?Ada" }).waitFor();
    assert.equal(await cell(page, i).locator(".stdin").count(), 0, "the prompt is gone once answered");
    // The value, read by the next cell. (Not shown by the prompt's own cell: after an input
    // reply, Deno 2.9's kernel sometimes publishes that cell's result, even its logs, after its
    // idle status, which Middleman may already have taken for the end of the run.)
    const j = await addCell(page);
    await setSource(page, j, "answer");
    await run(page, j);
    assert.match(await outputsShow(page, j, '"Ada"'), /^"Ada"$/m);
  });

  itShows("interrupts while (true) {} and goes on with the kernel's state", () => page, async () => {
    const i = await addCell(page);
    await setSource(page, i, "while (true) {}");
    await run(page, i, { wait: false });
    await page.waitForSelector(".kernel-busy");
    await cell(page, i).locator(".state-badge", { hasText: "running" }).waitFor();
    await page.waitForTimeout(500);
    await click(page.locator('[data-action="interrupt"]'));
    await waitDone(page, i, 30_000);
    await page.waitForSelector(".kernel-idle", { timeout: 30_000 });
    const j = await addCell(page);
    await setSource(page, j, "xs.length + answer.length");
    await run(page, j);
    assert.match(await outputsShow(page, j, "6"), /^6$/m);
  });

  itShows("a second page sees the first page's runs live", () => page, async () => {
    other = await newPage(browser);
    await openFromLanding(other, doc, "Grace", undefined, env.denoPlan);
    assert.equal(await cell(other, 0).locator(".cm-content").getAttribute("data-language"), "typescript");
    await page.locator('.people .avatar[data-name="Grace"]').waitFor();
    const i = await addCell(page);
    await setSource(page, i, 'console.log(`live ${xs.length}`)');
    await other.waitForFunction((n) => document.querySelectorAll("section.cell").length > n, i);
    await run(page, i);
    await cell(other, i).locator(".outputs", { hasText: "live 3" }).waitFor({ timeout: 15_000 });
    await shot(other, "deno-second-page");
    assert.deepEqual(await problems(other), []);
    await other.context().close();
  });

  itShows("exports .ipynb with TypeScript as its language", () => page, async () => {
    const [download] = await Promise.all([page.waitForEvent("download"), click(page.locator('[data-action="export"]'))]);
    const file = join(env.tmp, "deno-export.ipynb");
    await download.saveAs(file);
    const nb = JSON.parse(readFileSync(file, "utf8"));
    assert.equal(nb.metadata.kernelspec.name, "deno");
    assert.equal(nb.metadata.kernelspec.language, "typescript");
    assert.equal(nb.metadata.language_info.name, "typescript");
    assert.ok(nb.cells.some((c) => [].concat(c.source).join("").includes("xs.map(x => x * 2)")));
    assert.deepEqual(await problems(page), [], "no CSP violations, uncaught errors or console errors");
  });
});
