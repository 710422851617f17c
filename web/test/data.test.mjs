// Data outputs as a person meets them: a DataFrame of a million rows paged and sorted by the
// kernel, an Altair chart drawn in its sandboxed frame with no request leaving the origin, and
// Matplotlib figures as PNG and SVG.
import assert from "node:assert/strict";
import { after, before, describe } from "node:test";
import { addCell, cell, click, itShows, launch, newPage, openFromLanding, problems, run, setSource, shot } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

describe("data outputs", () => {
  let page;
  /** Every URL the page and its frames asked for. */
  const requests = [];
  const doc = `web-data-${Date.now().toString(36)}`;

  before(async () => {
    page = await newPage(browser);
    page.context().on("request", (r) => requests.push(r.url()));
    await openFromLanding(page, doc, "Ada Lovelace");
  });

  /** Runs `code` in a new cell at the end and returns that cell. */
  async function runNew(code) {
    const i = await addCell(page);
    await setSource(page, i, code);
    await run(page, i);
    return cell(page, i);
  }

  itShows("pages and sorts a million-row DataFrame through the kernel", () => page, async () => {
    // a: 0..n-1; b: floats with one NaN; c: strings that sort in the reverse order of a.
    const c = await runNew(
      [
        "import numpy as np, pandas as pd",
        "n = 1_000_000",
        "b = np.arange(n) / 4",
        "b[3] = np.nan",
        'df = pd.DataFrame({"a": np.arange(n), "b": b, "c": [f"{n - i:07d}" for i in range(n)]})',
        "df",
      ].join("\n"),
    );
    const table = c.locator(".table-output");
    await table.waitFor({ timeout: 60_000 });
    const range = table.locator(".table-range");
    const rows = table.locator(".data-table tbody tr");
    const firstA = () => rows.first().locator("td").first().innerText();
    const lastA = () => rows.last().locator("td").first().innerText();
    assert.equal(await table.locator(".table-summary").innerText(), "1,000,000 rows × 3 columns");
    assert.deepEqual(await table.locator("thead .col-name").allInnerTexts(), ["a", "b", "c"]);
    assert.deepEqual(await table.locator("thead .col-type").allInnerTexts(), ["int64", "float64", "str"]);
    assert.equal(await range.innerText(), "rows 1–50 of 1,000,000");
    assert.equal(await rows.count(), 50, "one page in the page, never the whole table");
    assert.equal(await firstA(), "0");
    assert.equal(await rows.nth(3).locator("td").nth(1).innerText(), "NaN");
    assert.ok(await rows.nth(3).locator("td .null").count(), "a missing value is dimmed");
    assert.equal(await rows.first().locator("td").first().evaluate((td) => getComputedStyle(td).textAlign), "right", "numbers align right");
    await shot(page, "table-first-page");

    await click(table.locator('[data-action="table-next"]'));
    await range.filter({ hasText: "rows 51–100 of 1,000,000" }).waitFor();
    assert.equal(await firstA(), "50");

    await click(table.locator('[data-action="table-last"]'));
    await range.filter({ hasText: "rows 999,951–1,000,000 of 1,000,000" }).waitFor();
    assert.equal(await lastA(), "999999");
    assert.ok(await table.locator('[data-action="table-next"]').isDisabled());

    // Sorting asks the kernel for the first page in that order.
    const header = (name) => table.locator("thead th", { has: page.locator(".col-name", { hasText: name }) });
    await click(header("c").locator("button"));
    await range.filter({ hasText: "rows 1–50 of 1,000,000" }).waitFor();
    assert.equal(await header("c").getAttribute("aria-sort"), "ascending");
    assert.equal(await firstA(), "999999");
    assert.equal(await rows.first().locator("td").nth(2).innerText(), "0000001");

    await click(header("a").locator("button"));
    await header("a").and(page.locator('[aria-sort="ascending"]')).waitFor();
    assert.equal(await firstA(), "0");
    assert.equal(await header("c").getAttribute("aria-sort"), "none");
    await click(header("a").locator("button"));
    await header("a").and(page.locator('[aria-sort="descending"]')).waitFor();
    assert.equal(await firstA(), "999999");
    assert.equal(await rows.nth(1).locator("td").first().innerText(), "999998");
    await click(table.locator('[data-action="table-next"]'));
    await range.filter({ hasText: "rows 51–100 of 1,000,000" }).waitFor();
    assert.equal(await firstA(), "999949", "the next page keeps the order");
    await shot(page, "table-sorted");

    // The page stays responsive: a frame is drawn and a cell still runs while the table is shown.
    assert.equal(await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r(true)))), true);
    const after = await runNew("len(df)");
    assert.equal((await after.locator(".output-text").innerText()).trim(), "1000000");
    assert.equal(await rows.count(), 50);
    assert.deepEqual(await problems(page), []);
  });

  itShows("keeps the page shown and says so when the kernel no longer holds the table", () => page, async () => {
    const table = page.locator(".table-output").first();
    const before = await table.locator(".data-table tbody").innerText();
    await click(page.locator('.toolbar [data-action="restart"]'));
    await page.waitForSelector(".kernel-restarting, .kernel-starting", { timeout: 30_000 }).catch(() => {});
    await page.waitForSelector(".kernel-idle", { timeout: 60_000 });
    await click(table.locator('[data-action="table-prev"]'));
    await table.locator(".table-message", { hasText: "run the cell again to page this table" }).waitFor({ timeout: 30_000 });
    assert.equal(await table.locator(".table-range").innerText(), "rows 51–100 of 1,000,000");
    assert.equal(await table.locator(".data-table tbody").innerText(), before);
    await shot(page, "table-gone");
  });

  itShows("draws an Altair chart in its frame with nothing fetched from elsewhere", () => page, async () => {
    const cspMessages = [];
    page.on("console", (m) => {
      if (/Content Security Policy/.test(m.text())) cspMessages.push(m.text());
    });
    const c = await runNew(
      [
        "import altair as alt, pandas as pd",
        'fruit = pd.DataFrame({"fruit": ["apple", "pear", "plum", "fig"], "count": [3, 5, 2, 7]})',
        'alt.Chart(fruit).mark_bar().encode(x="fruit", y="count", tooltip=["fruit", "count"])',
      ].join("\n"),
    );
    const frame = c.locator("iframe.chart-output");
    await frame.waitFor({ timeout: 30_000 });
    assert.equal(await frame.getAttribute("sandbox"), "allow-scripts");
    const bars = frame.contentFrame().locator("svg .mark-rect path");
    await bars.first().waitFor({ timeout: 30_000 });
    assert.equal(await bars.count(), 4);
    // Sized to the chart, as HTML frames are.
    await page.waitForFunction((el) => el.getBoundingClientRect().height > 150, await frame.elementHandle());
    await frame.contentFrame().locator("svg .mark-rect path").nth(3).hover();
    await frame.contentFrame().locator("#vg-tooltip-element.visible", { hasText: "fig" }).waitFor();
    await shot(page, "chart-altair");

    // A spec that asks for data by URL is not drawn (no network): the output's text shows instead.
    const fallback = await runNew(
      [
        "from IPython.display import display",
        'spec = {"data": {"url": "https://example.org/cars.json"}, "mark": "point", "encoding": {"x": {"field": "hp", "type": "quantitative"}}}',
        'display({"application/vnd.vegalite.v5+json": spec, "text/plain": "a chart of cars"}, raw=True)',
      ].join("\n"),
    );
    await fallback.locator(".chart-fallback", { hasText: "a chart of cars" }).waitFor({ timeout: 30_000 });
    assert.match(await fallback.locator(".chart-fallback .notice").innerText(), /could not be drawn: it loads https:\/\/example\.org\/cars\.json/);

    const origin = new URL(page.url()).origin;
    // The landing page, the page, its assets and the document's data are all on the gateway.
    const elsewhere = requests.filter((u) => !u.startsWith("data:") && !u.startsWith("blob:") && new URL(u).origin !== origin);
    assert.deepEqual(elsewhere, [], "every request goes to the gateway");
    assert.ok(requests.some((u) => u.startsWith(`${origin}/assets/chart.js?v=`)), "the chart script comes from the gateway");
    assert.deepEqual(cspMessages, [], "Vega draws within the chart frame's policy (no eval, no inline style)");
    assert.deepEqual(await problems(page), []);
  });

  itShows("shows Matplotlib figures as PNG and as SVG", () => page, async () => {
    const plot = (format) =>
      [
        "import matplotlib.pyplot as plt",
        `%config InlineBackend.figure_formats = ['${format}']`,
        "fig, ax = plt.subplots(figsize=(4, 3))",
        "ax.plot([1, 2, 3, 4], [1, 4, 9, 16], marker='o')",
        `ax.set_title('squares (${format})')`,
        "plt.show()",
      ].join("\n");
    for (const [format, mime] of [
      ["png", "image/png"],
      ["svg", "image/svg+xml"],
    ]) {
      const c = await runNew(plot(format));
      const img = c.locator("img.output-image");
      await img.waitFor({ timeout: 60_000 });
      assert.ok((await img.getAttribute("src")).startsWith(`data:${mime}`), format);
      await page.waitForFunction((el) => el.complete && el.naturalWidth > 200 && el.naturalHeight > 150, await img.elementHandle());
    }
    await shot(page, "matplotlib");
    assert.deepEqual(await problems(page), []);
  });
});
