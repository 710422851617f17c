// One cell's outputs: streams (merged, ANSI colours, carriage returns), errors with tracebacks,
// rich data by MIME priority (paged tables, Vega-Lite charts and HTML in sandboxed frames,
// images, SVG as an image, JSON, markdown, plain text), display updates, the byte-cap notice,
// collapsing of long outputs and the inline input() prompt. Rendering is bounded: huge texts
// show their head and tail, tables one page.
import { applyControl, renderAnsi } from "./ansi";
import { h } from "./dom";
import { chartFrame, htmlFrame, forgetDetachedFrames } from "./frames";
import { renderMarkdown } from "./markdown";
import type { MimeBundle, Output, PendingInput } from "./protocol";
import { isTableOutput, TABLE_MIME, TableView, type TablePages } from "./table";

/** Characters of one text output rendered at most (head and tail); the rest is counted. */
const RENDER_CHARS = 120_000;
/** An output area taller than this (px) starts collapsed. */
const COLLAPSE_PX = 480;

function joinText(v: unknown): string {
  if (typeof v === "string") return v;
  if (Array.isArray(v)) return v.filter((x) => typeof x === "string").join("");
  return "";
}

function boundedText(text: string, pre: HTMLElement, ansi: boolean): void {
  pre.replaceChildren();
  const put = (t: string) => (ansi ? renderAnsi(t, pre) : pre.append(t));
  if (text.length <= RENDER_CHARS) {
    put(text);
    return;
  }
  const half = RENDER_CHARS / 2;
  put(text.slice(0, half));
  const hidden = text.length - RENDER_CHARS;
  pre.append(h("span", { class: "elided", text: `\n… ${hidden.toLocaleString("en")} characters not shown …\n` }));
  put(text.slice(text.length - half));
}

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
/** Chart specs, drawn by the bundled Vega 6 and Vega-Lite 6 (Altair 6's mimetype renderer says `.v6.json`). */
const CHART_TYPES: [string, "vega" | "vega-lite"][] = [
  ["application/vnd.vegalite.v6+json", "vega-lite"],
  ["application/vnd.vegalite.v6.json", "vega-lite"],
  ["application/vnd.vegalite.v5+json", "vega-lite"],
  ["application/vnd.vegalite.v4+json", "vega-lite"],
  ["application/vnd.vega.v6+json", "vega"],
  ["application/vnd.vega.v6.json", "vega"],
  ["application/vnd.vega.v5+json", "vega"],
];

/** A JSON MIME type's data: an object, or (from some tools) its JSON text. */
function jsonObject(v: unknown): object | null {
  if (typeof v === "string") {
    try {
      v = JSON.parse(v);
    } catch {
      return null;
    }
  }
  return typeof v === "object" && v !== null && !Array.isArray(v) ? v : null;
}

/** `pages` answers a table output's requests for more rows. */
export function renderMime(data: MimeBundle, pages: TablePages): HTMLElement {
  const table = data[TABLE_MIME];
  if (isTableOutput(table)) return new TableView(table, pages).root;
  for (const [type, mode] of CHART_TYPES) {
    const spec = jsonObject(data[type]);
    if (!spec) continue;
    const rest = Object.fromEntries(Object.entries(data).filter(([t]) => !CHART_TYPES.some(([c]) => c === t)));
    return chartFrame(spec, mode, (reason) =>
      h("div", { class: "chart-fallback" }, [h("div", { class: "notice", text: `The chart could not be drawn${reason ? `: ${reason}` : ""}.` }), renderMime(rest, pages)]),
    );
  }
  const html = data["text/html"];
  if (html !== undefined) return htmlFrame(joinText(html));
  const md = data["text/markdown"];
  if (md !== undefined) {
    const div = h("div", { class: "markdown output-markdown" });
    renderMarkdown(joinText(md), div);
    return div;
  }
  const svg = data["image/svg+xml"];
  if (svg !== undefined) {
    // As an image: an SVG's scripts never run in an <img>.
    const img = h("img", { class: "output-image", attrs: { alt: "SVG output" } });
    img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(joinText(svg));
    return img;
  }
  for (const type of IMAGE_TYPES) {
    const b64 = data[type];
    if (typeof b64 === "string") {
      const clean = b64.replace(/\s+/g, "");
      if (/^[A-Za-z0-9+/=]*$/.test(clean)) {
        const img = h("img", { class: "output-image", attrs: { alt: `${type} output` } });
        img.src = `data:${type};base64,${clean}`;
        return img;
      }
    }
  }
  const json = data["application/json"];
  if (json !== undefined) {
    const pre = h("pre", { class: "output-json" });
    boundedText(JSON.stringify(json, null, 2) ?? "null", pre, false);
    return pre;
  }
  const latex = data["text/latex"];
  const plain = data["text/plain"];
  const pre = h("pre", { class: "output-text" });
  boundedText(joinText(plain !== undefined ? plain : latex), pre, true);
  return pre;
}

interface Item {
  output: Output;
  el: HTMLElement;
}

export class OutputArea {
  readonly root = h("div", { class: "outputs" });
  private readonly list = h("div", { class: "output-list" });
  private readonly notices = h("div", { class: "output-notices" });
  private readonly toggle = h("button", { class: "output-toggle", attrs: { type: "button" } });
  private items: Item[] = [];
  private clearOnNext = false;
  private collapsed: boolean | null = null;
  private measure = 0;
  private prompt: HTMLElement | null = null;
  /** Outputs before this index do not merge with later streams (an input() prompt came between). */
  private mergeFrom = 0;

  constructor(private readonly pages: TablePages) {
    this.toggle.addEventListener("click", () => {
      this.collapsed = !this.collapsed;
      this.applyCollapse();
    });
    this.root.append(this.list, this.toggle, this.notices);
    this.root.hidden = true;
  }

  set(outputs: Output[], truncatedAt?: number): void {
    this.clear();
    for (const o of outputs) this.add(o);
    if (truncatedAt !== undefined) this.truncated(truncatedAt);
  }

  clear(): void {
    this.items = [];
    this.list.replaceChildren();
    this.notices.replaceChildren();
    this.clearOnNext = false;
    this.collapsed = null;
    this.mergeFrom = 0;
    if (this.prompt) this.list.append(this.prompt);
    forgetDetachedFrames();
    this.changed();
  }

  /** `clear_output(wait=True)`: clear when the next output arrives. */
  clearWhenNext(): void {
    this.clearOnNext = true;
  }

  add(output: Output): void {
    if (this.clearOnNext) this.clear();
    const last = this.items[this.items.length - 1];
    const mergeable = this.items.length > this.mergeFrom;
    if (mergeable && output.output_type === "stream" && last && last.output.output_type === "stream" && last.output.name === output.name) {
      last.output = { ...last.output, text: last.output.text + output.text };
      boundedText(applyControl(last.output.text), last.el, true);
      this.changed();
      return;
    }
    const el = this.render(output);
    this.items.push({ output, el });
    this.list.append(el);
    this.changed();
  }

  updateDisplay(displayId: string, data: MimeBundle): void {
    for (const item of this.items) {
      const o = item.output;
      if (o.output_type === "display_data" && o.display_id === displayId) {
        item.output = { ...o, data };
        const el = this.render(item.output);
        item.el.replaceWith(el);
        item.el = el;
      }
    }
    forgetDetachedFrames();
    this.changed();
  }

  truncated(limitBytes: number): void {
    this.notices.querySelector(".truncated")?.remove();
    const mib = limitBytes >= 1 << 20 ? `${(limitBytes / (1 << 20)).toFixed(limitBytes % (1 << 20) ? 1 : 0)} MiB` : `${Math.round(limitBytes / 1024)} KiB`;
    this.notices.prepend(h("div", { class: "notice truncated", text: `Output truncated: this run passed the ${mib} output limit, later output was dropped.` }));
    this.changed();
  }

  notice(text: string, cls = ""): void {
    this.notices.append(h("div", { class: `notice ${cls}`, text }));
    this.changed();
  }

  /**
   * Shows the kernel's input() prompt where the run's output has got to; `answer` is undefined
   * for viewers. Output printed after it goes below it, and below its echo once answered.
   */
  showPrompt(input: PendingInput, answer: ((value: string) => void) | undefined, focus: boolean): void {
    this.hidePrompt();
    const field = h("input", {
      class: "stdin-field",
      attrs: { type: input.password ? "password" : "text", autocomplete: "off", spellcheck: "false", "aria-label": input.prompt || "input" },
    });
    const form = h("form", { class: "stdin" }, [h("label", { class: "stdin-prompt", text: input.prompt || "input:" }), field]);
    if (answer) {
      form.append(h("button", { text: "Send", attrs: { type: "submit" } }));
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        field.disabled = true;
        answer(field.value);
      });
    } else {
      field.disabled = true;
      form.append(h("span", { class: "muted", text: "waiting for an editor to answer" }));
    }
    form.dataset.execution = input.execution_id;
    this.prompt = form;
    this.mergeFrom = this.items.length;
    this.list.append(form);
    this.changed();
    if (focus && answer) field.focus();
  }

  /** Removes the prompt; `after` (the answer's echo) takes its place. */
  hidePrompt(after?: string): void {
    const at = this.prompt;
    this.prompt = null;
    if (at && after) at.replaceWith(h("div", { class: "notice stdin-done", text: after }));
    else at?.remove();
    this.changed();
  }

  get hasPrompt(): boolean {
    return this.prompt !== null;
  }

  /** The execution whose prompt is shown, if any. */
  get promptFor(): string | null {
    return this.prompt?.dataset.execution ?? null;
  }

  private render(output: Output): HTMLElement {
    switch (output.output_type) {
      case "stream": {
        const pre = h("pre", { class: `stream ${output.name === "stderr" ? "stderr" : "stdout"}` });
        boundedText(applyControl(output.text), pre, true);
        return pre;
      }
      case "error": {
        const pre = h("pre", { class: "error-output" });
        const tb = Array.isArray(output.traceback) ? output.traceback.join("\n") : "";
        boundedText(tb || `${output.ename}: ${output.evalue}`, pre, true);
        return pre;
      }
      case "unknown":
        // Kept from an imported notebook for its export; nothing to show.
        return h("div", { class: "unknown-output", attrs: { hidden: "" } });
      default: {
        const el = h("div", { class: `rich ${output.output_type}` }, [renderMime(output.data ?? {}, this.pages)]);
        return el;
      }
    }
  }

  private changed(): void {
    this.root.hidden = this.list.childElementCount === 0 && this.notices.childElementCount === 0;
    if (this.measure) return;
    this.measure = requestAnimationFrame(() => {
      this.measure = 0;
      if (this.collapsed === null && this.list.scrollHeight > COLLAPSE_PX) this.collapsed = true;
      this.applyCollapse();
    });
  }

  private applyCollapse(): void {
    const tall = this.list.scrollHeight > COLLAPSE_PX;
    const lines = this.items.reduce((n, i) => n + (i.output.output_type === "stream" ? i.output.text.split("\n").length - 1 : 1), 0);
    // Never collapsed over an open prompt.
    this.list.classList.toggle("collapsed", !!this.collapsed && tall && !this.prompt);
    this.toggle.hidden = !tall;
    this.toggle.textContent = this.collapsed ? `Output collapsed (${lines.toLocaleString("en")} lines). Show all` : "Collapse output";
  }
}
