// SQL cells and the kernel's help while typing, against a real kernel with pandas, DuckDB and
// Matplotlib: a SQL cell reads a CSV a Python cell wrote and binds its result to a Python name; a
// Python cell plots it; editing the query re-runs the plot by itself (autorun). Tab completes a
// DataFrame's columns and, in a SQL cell, a DataFrame's name; Shift-Tab shows a docstring;
// completion answers while another cell runs (ipykernel 7's subshells).
import assert from "node:assert/strict";
import { after, before, describe } from "node:test";
import { addCell, cell, cellCount, click, itShows, launch, newPage, openFromLanding, problems, run, setSource, shot, sourceOf, waitDone } from "./harness.mjs";

let browser;
let page;
before(async () => {
  browser = await launch();
  page = await newPage(browser, { viewport: { width: 1280, height: 900 } });
  await openFromLanding(page, `sql-${Date.now().toString(36)}`, "Ada");
});
after(async () => {
  await browser?.close();
});

async function addSqlCell() {
  const before = await cellCount(page);
  await click(page.locator('.add-cells [data-action="add-sql"]'));
  await page.waitForFunction((n) => document.querySelectorAll("section.cell").length > n, before);
  await cell(page, before).locator(".cm-content", { hasText: "SELECT" }).waitFor();
  return before;
}

/** Types at the end of a cell's source, key by key, as a person does. */
async function typeAtEnd(i, text) {
  await click(cell(page, i).locator(".cm-content"));
  await page.keyboard.press("ControlOrMeta+End");
  await page.keyboard.type(text, { delay: 30 });
}

const options = () => page.locator(".cm-tooltip-autocomplete li");

/**
 * Tab right after typing (before typing's own list opens) opens the list; Tab takes its choice
 * once a person could have seen it (CodeMirror ignores a key in the list's first 75 ms).
 */
async function tabTab(label) {
  await page.keyboard.press("Tab");
  await options().filter({ hasText: label }).first().waitFor({ timeout: 10_000 });
  await page.waitForTimeout(150);
  await page.keyboard.press("Tab");
}

async function waitText(i, text) {
  await page.waitForFunction(([i, text]) => document.querySelectorAll("section.cell")[i].querySelector(".cm-content")?.textContent === text, [i, text], { timeout: 10_000 });
}

const QUERY = "SELECT region, sum(amount) AS total FROM 'sales.csv' GROUP BY region ORDER BY region";

describe("SQL cells, completion and inspection", () => {
  itShows("a SQL cell queries a workspace file into a DataFrame that a plot reads, and re-runs it when edited", () => page, async () => {
    await setSource(
      page,
      0,
      'import pandas as pd\npd.DataFrame({"region": ["north", "south", "north", "east"], "amount": [10, 20, 5, 7]}).to_csv("sales.csv", index=False)',
    );
    await run(page, 0);

    // A new SQL cell names its result with a name no cell uses yet.
    const q = await addSqlCell();
    assert.equal(await sourceOf(page, q), "-- result: df1\nSELECT ");
    assert.equal(await cell(page, q).locator(".sql-result").innerText(), "→ df1");
    assert.equal(await cell(page, q).locator('select[data-action="cell-type"]').inputValue(), "sql");
    await setSource(page, q, `-- result: sales\n${QUERY}`);
    await cell(page, q).locator(".sql-result", { hasText: "→ sales" }).waitFor();
    await run(page, q);
    assert.equal(await cell(page, q).locator(".error-output").count(), 0, "the query ran");
    assert.match(await cell(page, q).locator(".prompt").innerText(), /\[\d+\]/);

    const p = await addCell(page);
    await setSource(
      page,
      p,
      'import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(3, 2))\nax.bar(sales["region"], sales["total"])\nplt.show()\nprint("regions:", ",".join(sales["region"]), "total:", int(sales["total"].sum()))',
    );
    await run(page, p);
    await cell(page, p).locator("img.output-image").waitFor({ timeout: 60_000 });
    assert.match(await cell(page, p).locator(".outputs").innerText(), /regions: east,north,south total: 42/);
    await page.waitForFunction((i) => /uses cell 2/.test(document.querySelectorAll("section.cell")[i].querySelector(".deps")?.textContent ?? ""), p);
    await shot(page, "sql-cell");

    // Edit the query and run it: the plot's cell re-runs by itself with the new totals.
    await setSource(page, q, `-- result: sales\n${QUERY.replace("GROUP BY", "WHERE amount > 6 GROUP BY")}`);
    await run(page, q);
    await cell(page, p).locator(".outputs", { hasText: "total: 37" }).waitFor({ timeout: 60_000 });
    await waitDone(page, p);
    await cell(page, p).locator("img.output-image").waitFor();
    assert.deepEqual(await problems(page), []);
  });

  itShows("Tab completes a DataFrame's columns, and a SQL cell offers DataFrames by name", () => page, async () => {
    const d = await addCell(page);
    await setSource(page, d, 'df = pd.DataFrame({"alpha": [1], "beta": [2]})');
    await run(page, d);

    const k = await addCell(page);
    // `df["al` (closing quote and bracket come by themselves), Tab: the column's name.
    await typeAtEnd(k, 'df["al');
    await tabTab("alpha");
    await waitText(k, 'df["alpha"]');
    // `df.alp`, Tab: the attribute.
    await setSource(page, k, "");
    await typeAtEnd(k, "df.alp");
    await tabTab("alpha");
    await waitText(k, "df.alpha");
    // Tab after whitespace still indents.
    await page.keyboard.press("Home");
    await page.keyboard.press("Tab");
    assert.equal(await sourceOf(page, k), "    df.alpha");
    await page.keyboard.press("Escape");

    const s = await addSqlCell();
    await typeAtEnd(s, "* FROM d");
    await page.keyboard.press("Tab");
    await options().filter({ has: page.locator(".cm-completionLabel", { hasText: /^df$/ }) }).waitFor({ timeout: 10_000 });
    await shot(page, "sql-completion");
    await page.keyboard.press("Escape");
    assert.equal(await options().count(), 0, "Escape closes the list");
    assert.ok(await page.evaluate(() => document.activeElement?.matches(".cm-content")), "and stays in the editor");
    await page.keyboard.press("Escape");
  });

  itShows("Shift-Tab shows a docstring, gone on Escape or a caret move", () => page, async () => {
    const k = await addCell(page);
    await typeAtEnd(k, "pd.read_csv(");
    await page.keyboard.press("Shift+Tab");
    const tip = page.locator(".assist-doc");
    await tip.waitFor({ timeout: 10_000 });
    assert.match(await tip.innerText(), /read_csv|Signature/);
    assert.ok((await tip.locator("span[class*=ansi]").count()) > 0 || !/\u001b/.test(await tip.innerText()), "ANSI rendered, never shown raw");
    await shot(page, "inspect");
    await page.keyboard.press("Escape");
    await tip.waitFor({ state: "detached" });
    assert.ok(await page.evaluate(() => document.activeElement?.matches(".cm-content")), "Escape closed the tooltip only");
    await page.keyboard.press("Shift+Tab");
    await tip.waitFor();
    await page.keyboard.press("ArrowLeft");
    await tip.waitFor({ state: "detached" });
    // Shift-Tab in a line's indentation still dedents.
    await setSource(page, k, "    x = 1");
    await page.keyboard.press("Home");
    await page.keyboard.press("Shift+Tab");
    assert.equal(await sourceOf(page, k), "x = 1");
    await page.keyboard.press("Escape");
  });

  itShows("completion answers while another cell runs", () => page, async () => {
    const slow = await addCell(page);
    await setSource(page, slow, "import time; time.sleep(20)");
    await run(page, slow, { wait: false });
    await cell(page, slow).and(page.locator(".state-running")).waitFor({ timeout: 30_000 });
    const k = await addCell(page);
    const started = Date.now();
    await typeAtEnd(k, "df.bet");
    await tabTab("beta");
    await waitText(k, "df.beta");
    assert.ok(Date.now() - started < 10_000, "answered long before the running cell ends");
    assert.ok(await cell(page, slow).evaluate((el) => el.classList.contains("state-running")), "the other cell is still running");
    await click(page.locator('.toolbar [data-action="interrupt"]'));
    await waitDone(page, slow);
    assert.deepEqual(await problems(page), []);
  });
});
