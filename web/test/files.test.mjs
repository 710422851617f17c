// The Files panel in headless Chromium against a real Watchman, Middleman and kernel: upload a
// CSV, preview it as a table, rename, download and delete it; what the kernel plants (a
// symlink out of the workspace) is listed but cannot be opened; a viewer can only download.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { addCell, click, env, launch, newPage, openFromLanding, problems, run, setSource, shot } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

// Quoted fields with the delimiter, a doubled quote, a newline, and markup that must stay text.
const CSV = 'name,note,score\n"Lovelace, Ada","said ""hi""",10\nBabbage,"two\nlines",9\n<img src=x onerror=alert(1)>,<b>bold</b>,8\n';

describe("the Files panel", () => {
  let page;
  const doc = `web-files-${Date.now().toString(36)}`;

  before(async () => {
    page = await newPage(browser, { viewport: { width: 1280, height: 800 } });
    page.on("dialog", (d) => {
      if (d.type() === "prompt") void d.accept("scores.csv");
      else void d.accept();
    });
    await openFromLanding(page, doc, "Ada Lovelace");
  });
  after(async () => {
    await page?.context().close();
  });

  async function failing(name, fn) {
    try {
      await fn();
    } catch (e) {
      await shot(page, `FAILED-files-${name}`).catch(() => {});
      throw e;
    }
  }

  it("uploads a CSV, previews, renames, downloads and deletes it", () =>
    failing("csv", async () => {
      await click(page.locator('[data-action="files-toggle"]'));
      await page.waitForSelector('[data-role="files"]:not([hidden])');
      assert.match(await page.locator(".files-actions").innerText(), /up to 64 MiB/);
      const file = join(env.tmp, "data.csv");
      writeFileSync(file, CSV);
      await page.setInputFiles('[data-action="files-upload-input"]', file);
      const row = page.locator('.files-row[data-name="data.csv"]');
      await row.waitFor();
      // The kernel sees it in its working directory.
      await setSource(page, 0, "print(open('data.csv').read().count('\\n'))");
      await run(page, 0);
      assert.match(await page.locator("section.cell").first().locator(".outputs").innerText(), /(^|\s)5(\s|$)/);

      await click(row.locator('[data-action="files-open"]'));
      const preview = page.locator(".files-preview");
      await preview.locator("table").waitFor();
      assert.deepEqual(await preview.locator("th").allInnerTexts(), ["name", "note", "score"]);
      assert.equal(await preview.locator("tbody tr").count(), 3);
      assert.equal(await preview.locator("tbody tr").first().locator("td").nth(0).innerText(), "Lovelace, Ada");
      assert.equal(await preview.locator("tbody tr").first().locator("td").nth(1).innerText(), 'said "hi"');
      assert.equal(await preview.locator("tbody tr").nth(2).locator("td").first().innerText(), "<img src=x onerror=alert(1)>");
      assert.equal(await preview.locator("img, b").count(), 0, "cells are text, never markup");
      assert.match(await preview.locator(".files-summary").innerText(), /3 rows × 3 columns/);
      await shot(page, "files-1280");
      await page.setViewportSize({ width: 390, height: 844 });
      await page.locator('[data-role="files"]').scrollIntoViewIfNeeded();
      await shot(page, "files-390");
      await page.setViewportSize({ width: 1280, height: 800 });

      await click(row.locator('[data-action="files-rename"]'));
      const renamed = page.locator('.files-row[data-name="scores.csv"]');
      await renamed.waitFor();
      assert.equal(await page.locator('.files-row[data-name="data.csv"]').count(), 0);
      assert.ok(await preview.isHidden(), "the preview of the old name is closed");

      const [download] = await Promise.all([page.waitForEvent("download"), click(renamed.locator('[data-action="files-download"]'))]);
      assert.equal(download.suggestedFilename(), "scores.csv");
      const saved = join(env.tmp, "downloaded.csv");
      await download.saveAs(saved);
      assert.equal(readFileSync(saved, "utf8"), CSV);


      await click(renamed.locator('[data-action="files-delete"]'));
      await page.waitForFunction(() => !document.querySelector('.files-row[data-name="scores.csv"]'));
    }));

  it("lists a symlink the kernel planted but never opens it", () =>
    failing("symlink", async () => {
      const i = await addCell(page);
      await setSource(page, i, "import os\nos.symlink('/etc/passwd', 'evil')\nos.mkdir('sub')\nprint('ok')");
      await run(page, i);
      await click(page.locator('[data-action="files-refresh"]'));
      const evil = page.locator('.files-row[data-name="evil"]');
      await evil.waitFor();
      assert.equal(await evil.getAttribute("data-kind"), "symlink");
      assert.match(await evil.innerText(), /never followed/);
      assert.equal(await evil.locator('[data-action="files-download"], [data-action="files-open"]').count(), 0);
      // Folders open.
      await click(page.locator('.files-row[data-name="sub"] [data-action="files-open"]'));
      await page.waitForFunction(() => document.querySelector(".files-crumbs")?.textContent?.includes("sub"));
      await click(page.locator('[data-action="files-up"]'));
      await evil.waitFor();
      assert.deepEqual(await problems(page), []);
    }));

  it("gives a viewer downloads only", () =>
    failing("viewer", async () => {
      const viewer = await newPage(browser, { viewport: { width: 390, height: 844 } });
      try {
        await openFromLanding(viewer, doc, "Vera", "viewer");
        await click(viewer.locator('[data-action="files-toggle"]'));
        const row = viewer.locator('.files-row[data-name="evil"]');
        await row.waitFor();
        assert.equal(await viewer.locator('[data-action="files-upload"], [data-action="files-delete"], [data-action="files-rename"]').count(), 0);
        assert.match(await viewer.locator(".files-actions").innerText(), /Read-only/);
        assert.deepEqual(await problems(viewer), []);
      } finally {
        await viewer.context().close();
      }
    }));
});
