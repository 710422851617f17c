// A table output (`application/vnd.nbplat.table+json`, docs/protocol.md): one page of a
// DataFrame at a time, however many rows it has. Pages and sorted orders come from the kernel
// (`table_page`); a table whose rows all came with the output pages and sorts here, without the
// kernel. A refused request leaves the page as it was, with a line saying why.
import type { Assist } from "./assist";
import { button, h } from "./dom";
import type { AssistAnswer, TableOutput, TableSort } from "./protocol";

export const TABLE_MIME = "application/vnd.nbplat.table+json";

/** Rows on one page. */
const PAGE_ROWS = 50;
/** Characters of one value shown; the whole value is its title. */
const VALUE_CHARS = 200;

/** Where pages come from: the notebook's side questions to the kernel. */
export type TablePages = Pick<Assist, "ask">;

export function isTableOutput(v: unknown): v is TableOutput {
  if (typeof v !== "object" || v === null) return false;
  const t = v as Partial<TableOutput>;
  return (
    typeof t.table === "string" &&
    typeof t.row_count === "number" &&
    Array.isArray(t.rows) &&
    t.rows.every(Array.isArray) &&
    Array.isArray(t.columns) &&
    t.columns.every((c) => typeof c?.name === "string" && typeof c?.type === "string") &&
    (t.index === undefined || (Array.isArray(t.index) && t.index.every((n) => typeof n === "string")))
  );
}

const count = (n: number) => n.toLocaleString("en");

const REFUSALS: Record<string, string> = {
  busy: "The kernel is busy running a cell; try again when it is done.",
  rate_limited: "Too many requests at once; try again.",
  no_kernel: "No kernel to ask for this page right now.",
  timeout: "The kernel did not answer in time; try again.",
  gone: "The kernel no longer holds this table: run the cell again to page this table.",
};

/** What a refused or failed request says to the person. */
function refusalText(answer: AssistAnswer): string {
  if (answer.kind !== "refused") return "Unexpected answer from the kernel.";
  return REFUSALS[answer.reason] ?? `The kernel could not give this page: ${answer.message}`;
}

function numericType(dtype: string): boolean {
  return /^(u?int|float|complex|decimal)/i.test(dtype);
}

/** A number as JSON has it, but a float column's whole numbers keep their ".0" (JSON drops it). */
function numberText(v: number, dtype: string): string {
  return Number.isInteger(v) && /^float/i.test(dtype) && Math.abs(v) < 1e16 ? `${v}.0` : String(v);
}

/** A missing value as pandas shows it for the column's type. */
function missing(dtype: string): string {
  if (/^float/i.test(dtype)) return "NaN";
  if (/^(datetime|timedelta)/i.test(dtype)) return "NaT";
  return "null";
}

/** Orders values as pandas' sort_values does for plain types: missing values last either way. */
function compareValues(a: unknown, b: unknown, descending: boolean): number {
  const absent = (v: unknown) => v === null || v === undefined;
  if (absent(a) || absent(b)) return absent(a) ? (absent(b) ? 0 : 1) : -1;
  if (descending) [a, b] = [b, a];
  if (typeof a === "number" && typeof b === "number") return a - b;
  const [x, y] = typeof a === typeof b && typeof a !== "object" ? [a as string, b as string] : [JSON.stringify(a), JSON.stringify(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}

interface View {
  offset: number;
  sort: TableSort | null;
}

export class TableView {
  readonly root: HTMLElement;
  private readonly headRow = h("tr");
  private readonly body = h("tbody");
  private readonly summary = h("div", { class: "table-summary" });
  private readonly range = h("span", { class: "table-range", attrs: { "aria-live": "polite" } });
  private readonly message = h("span", { class: "table-message", attrs: { role: "status" } });
  private readonly navBar = h("div", { class: "table-nav" });
  private readonly nav: Record<"first" | "prev" | "next" | "last", HTMLButtonElement>;
  /** Index names, then one per column: the cells of every row, in order. */
  private readonly fields: { name: string; type: string; index: boolean }[];
  /** Every row, when the output brought them all: then pages and sorts need no kernel. */
  private readonly allRows: unknown[][] | null;
  private readonly firstRows: unknown[][];
  private rowCount: number;
  private rows: unknown[][];
  /** What is shown, and what was last asked for (the same when nothing is on its way). */
  private shown: View = { offset: 0, sort: null };
  private wanted: View = { offset: 0, sort: null };
  private asked = 0;

  constructor(
    private readonly data: TableOutput,
    private readonly pages: TablePages,
  ) {
    this.fields = [
      ...(data.index ?? []).map((name) => ({ name, type: "", index: true })),
      ...data.columns.map((c) => ({ name: c.name, type: c.type, index: false })),
    ];
    this.rowCount = data.row_count;
    this.firstRows = data.rows;
    this.allRows = data.rows.length >= data.row_count ? data.rows : null;
    this.rows = data.rows.slice(0, PAGE_ROWS);
    const go = (label: string, title: string, to: () => number, cls: string) =>
      button(label, title, () => this.request({ offset: to(), sort: this.wanted.sort }), `table-${cls}`);
    this.nav = {
      first: go("First", "First page", () => 0, "first"),
      prev: go("Previous", "Previous page", () => Math.max(0, this.wanted.offset - PAGE_ROWS), "prev"),
      next: go("Next", "Next page", () => Math.min(this.lastOffset(), this.wanted.offset + PAGE_ROWS), "next"),
      last: go("Last", "Last page", () => this.lastOffset(), "last"),
    };
    const table = h("table", { class: "data-table" }, [h("thead", {}, [this.headRow]), this.body]);
    this.root = h("div", { class: "table-output" }, [
      this.summary,
      h("div", { class: "table-scroll", attrs: { tabindex: "0", role: "region", "aria-label": "table rows" } }, [table]),
      this.navBar,
    ]);
    this.navBar.append(this.nav.first, this.nav.prev, this.range, this.nav.next, this.nav.last, this.message);
    this.draw();
  }

  private lastOffset(): number {
    return Math.max(0, Math.floor((this.rowCount - 1) / PAGE_ROWS) * PAGE_ROWS);
  }

  private sortBy(column: string): void {
    const s = this.wanted.sort;
    // Ascending, then descending, then the table's own order.
    const next: TableSort | null = s?.column !== column ? { column, descending: false } : s.descending ? null : { column, descending: true };
    this.request({ offset: 0, sort: next });
  }

  private async request(view: View): Promise<void> {
    this.wanted = view;
    const local = this.local(view);
    if (local) {
      this.show(view, local);
      return;
    }
    const asked = ++this.asked;
    this.message.textContent = "Loading…";
    this.root.classList.add("loading-page");
    const answer = await this.pages.ask({ type: "table_page", table: this.data.table, offset: view.offset, limit: PAGE_ROWS, sort: view.sort });
    // A later request supersedes this one.
    if (asked !== this.asked) return;
    this.root.classList.remove("loading-page");
    if (answer.kind === "table_page") {
      this.rowCount = answer.row_count;
      this.show(view, answer.rows);
    } else {
      this.refused(refusalText(answer));
    }
  }

  /** The rows of `view` without asking the kernel, when they are here. */
  private local(view: View): unknown[][] | null {
    if (this.allRows) {
      const rows = view.sort ? this.sorted(view.sort) : this.allRows;
      return rows.slice(view.offset, view.offset + PAGE_ROWS);
    }
    if (!view.sort && view.offset + PAGE_ROWS <= this.firstRows.length) return this.firstRows.slice(view.offset, view.offset + PAGE_ROWS);
    return null;
  }

  private sorted(sort: TableSort): unknown[][] {
    // A column by that name before an index level, as the kernel looks it up.
    const named = (index: boolean) => this.fields.findIndex((f) => f.index === index && f.name === sort.column);
    const at = named(false) >= 0 ? named(false) : named(true);
    // Array.prototype.sort is stable: equal values keep the table's order.
    return [...(this.allRows ?? [])].sort((a, b) => compareValues(a[at], b[at], sort.descending));
  }

  private show(view: View, rows: unknown[][]): void {
    this.asked++;
    this.root.classList.remove("loading-page");
    this.shown = view;
    this.rows = rows;
    this.message.textContent = "";
    this.draw();
  }

  private refused(text: string): void {
    this.wanted = this.shown;
    this.message.textContent = text;
    this.drawNav();
  }

  private draw(): void {
    const cols = this.data.columns.length;
    this.summary.textContent = `${count(this.rowCount)} ${this.rowCount === 1 ? "row" : "rows"} × ${count(cols)} ${cols === 1 ? "column" : "columns"}`;
    this.headRow.replaceChildren(...this.fields.map((f) => this.header(f)));
    this.body.replaceChildren(
      ...this.rows.map((row) =>
        h(
          "tr",
          {},
          this.fields.map((f, i) => this.value(row[i], f)),
        ),
      ),
    );
    this.drawNav();
  }

  private header(f: { name: string; type: string; index: boolean }): HTMLElement {
    const th = h("th", { class: f.index ? "index" : "", attrs: { scope: "col" } });
    // An unnamed index level cannot be asked for by name.
    if (!f.name && f.index) return th;
    const sort = this.shown.sort?.column === f.name ? this.shown.sort : null;
    th.setAttribute("aria-sort", sort ? (sort.descending ? "descending" : "ascending") : "none");
    if (numericType(f.type)) th.classList.add("num");
    const b = h("button", { class: "sort", attrs: { type: "button", title: `Sort by ${f.name}` } }, [
      h("span", { class: "col-name", text: f.name }),
      f.type ? h("span", { class: "col-type", text: f.type }) : null,
      h("span", { class: "sort-mark", text: sort ? (sort.descending ? "▼" : "▲") : "", attrs: { "aria-hidden": "true" } }),
    ]);
    b.addEventListener("click", () => this.sortBy(f.name));
    th.append(b);
    return th;
  }

  private value(v: unknown, f: { type: string; index: boolean }): HTMLElement {
    const cell = f.index ? h("th", { attrs: { scope: "row" } }) : h("td");
    if (v === null || v === undefined) {
      cell.append(h("span", { class: "null", text: missing(f.type) }));
    } else {
      const text = typeof v === "string" ? v : typeof v === "boolean" ? (v ? "True" : "False") : typeof v === "number" ? numberText(v, f.type) : JSON.stringify(v);
      cell.textContent = text.length > VALUE_CHARS ? `${text.slice(0, VALUE_CHARS)}…` : text;
      if (text.length > VALUE_CHARS) cell.title = text;
    }
    if (typeof v === "number" || numericType(f.type)) cell.classList.add("num");
    return cell;
  }

  private drawNav(): void {
    const { offset } = this.shown;
    const end = Math.min(this.rowCount, offset + this.rows.length);
    this.range.textContent = this.rowCount === 0 ? "no rows" : `rows ${count(offset + 1)}–${count(end)} of ${count(this.rowCount)}`;
    const atStart = this.wanted.offset === 0;
    const atEnd = this.wanted.offset >= this.lastOffset();
    this.nav.first.disabled = this.nav.prev.disabled = atStart;
    this.nav.next.disabled = this.nav.last.disabled = atEnd;
    // One page and nothing to say: no navigation.
    this.navBar.hidden = this.rowCount <= PAGE_ROWS && !this.message.textContent;
  }
}
