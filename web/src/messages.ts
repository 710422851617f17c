// What the page tells people: toasts and references to cells. Cells are named by position
// ("cell 3", a button that jumps to it), never by internal id or a bare "#3"; `[3]` stays the
// execution count in prompts. Toasts collapse repeats (one toast, "×N"), few stay visible, and
// move to the other side of the page when they would cover the cell they speak of.
import { h } from "./dom";

export type ToastKind = "info" | "warn" | "error";

/** How a message names a cell, and how it jumps there. */
export interface CellNames {
  /** "cell 3", or "a deleted cell". */
  label(id: string): string;
  jumpTo(id: string): void;
  /** The cell's element, to keep toasts off it. */
  element(id: string): HTMLElement | undefined;
}

/** A button that reads "cell 3" and scrolls to and selects that cell. */
export function cellRef(names: CellNames, id: string): HTMLButtonElement {
  const label = names.label(id);
  const b = h("button", { class: "cell-ref", text: label, attrs: { type: "button", "data-cell-ref": id, title: `Go to ${label}` } });
  b.addEventListener("click", (e) => {
    e.preventDefault();
    names.jumpTo(id);
  });
  return b;
}

/** "Interrupted" rather than "Interrupted: interrupted" when the reason only repeats the label. */
export function finishedNotice(label: string, status: string, reason: string): string {
  const norm = (s: string) => s.toLowerCase().replace(/[^a-z]+/g, " ").trim();
  const r = norm(reason);
  return !r || r === norm(label) || r === norm(status) ? label : `${label}: ${reason}`;
}

/**
 * A server message with cells named by position: `cell <id>` and bare ids of the document's
 * cells become "cell n" ("this cell" for the one the toast leads with).
 */
export function namePositions(text: string, ids: readonly string[], label: (id: string) => string, subject?: string): string {
  let out = text;
  for (const id of ids) {
    if (!out.includes(id)) continue;
    const name = id === subject ? "this cell" : label(id);
    out = out.split(`cell ${id}`).join(name).split(id).join(name);
  }
  return out;
}

const MAX_VISIBLE = 3;

interface Shown {
  el: HTMLElement;
  count: HTMLElement;
  n: number;
  timer: number;
  cell?: string;
}

export class Toasts {
  readonly root = h("div", { class: "toasts", attrs: { role: "status", "aria-live": "polite" } });
  private readonly shown = new Map<string, Shown>();
  private placing = 0;

  constructor(private readonly names: CellNames) {
    window.addEventListener("scroll", () => this.schedulePlace(), { passive: true });
    window.addEventListener("resize", () => this.schedulePlace());
  }

  show(text: string, kind: ToastKind, cell?: string): void {
    const key = `${kind}\u0000${cell ?? ""}\u0000${text}`;
    const life = kind === "error" ? 8000 : 4000;
    const same = this.shown.get(key);
    if (same) {
      same.n += 1;
      same.count.textContent = `×${same.n}`;
      same.count.hidden = false;
      window.clearTimeout(same.timer);
      same.timer = window.setTimeout(() => this.drop(key), life);
      this.root.append(same.el);
      this.schedulePlace();
      return;
    }
    const count = h("span", { class: "toast-count", attrs: { hidden: true } });
    const el = h("div", { class: `toast toast-${kind}` }, [cell ? cellRef(this.names, cell) : null, h("span", { class: "toast-text", text }), count]);
    const entry: Shown = { el, count, n: 1, cell, timer: window.setTimeout(() => this.drop(key), life) };
    this.shown.set(key, entry);
    this.root.append(el);
    while (this.shown.size > MAX_VISIBLE) {
      const oldest = this.shown.keys().next().value;
      if (oldest === undefined) break;
      this.drop(oldest);
    }
    this.schedulePlace();
  }

  private drop(key: string): void {
    const s = this.shown.get(key);
    if (!s) return;
    window.clearTimeout(s.timer);
    s.el.remove();
    this.shown.delete(key);
  }

  private schedulePlace(): void {
    if (this.placing || this.shown.size === 0) return;
    this.placing = requestAnimationFrame(() => {
      this.placing = 0;
      this.place();
    });
  }

  /** Bottom right, else bottom left, else top: the first corner that covers no cell spoken of. */
  private place(): void {
    const cells = Array.from(this.shown.values())
      .map((s) => (s.cell ? this.names.element(s.cell) : undefined))
      .filter((el): el is HTMLElement => !!el);
    const spots = ["", "toasts-left", "toasts-top"];
    for (const spot of spots) {
      this.root.classList.remove(...spots.filter(Boolean));
      if (spot) this.root.classList.add(spot);
      const r = this.root.getBoundingClientRect();
      if (!cells.some((c) => overlaps(r, c.getBoundingClientRect()))) return;
    }
  }
}

function overlaps(a: DOMRect, b: DOMRect): boolean {
  return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
}
