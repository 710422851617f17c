// The Files panel: the kernel's workspace through Middleman's /api/files. List and navigate
// directories, upload (picker or drag and drop, under the server's cap), download, rename,
// delete, and a table preview of the head of CSV and TSV files. Everything shown comes from
// the workspace, which hostile code writes: names and cells are text nodes, never HTML.
import { podUrl } from "./base";
import { button, h } from "./dom";

type Kind = "file" | "dir" | "symlink" | "fifo" | "socket" | "device" | "other";

interface Entry {
  name: string;
  kind: Kind;
  size: number;
  modified: number;
}

interface Listing {
  path: string;
  entries: Entry[];
  omitted: number;
  can_edit: boolean;
  max_upload_bytes: number;
}

/** Bytes fetched for a preview. */
const PREVIEW_BYTES = 64 * 1024;
/** Rows shown in a preview. */
const PREVIEW_ROWS = 100;

const WHY_NOT: Partial<Record<Kind, string>> = {
  symlink: "a symbolic link: never followed",
  fifo: "a fifo: only regular files can be opened",
  socket: "a socket: only regular files can be opened",
  device: "a device: only regular files can be opened",
  other: "a special file: only regular files can be opened",
};

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i++;
  } while (v >= 1024 && i < units.length - 1);
  return `${v >= 10 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

/**
 * Parses delimited text (RFC 4180 quoting: fields in double quotes may hold the delimiter,
 * newlines and doubled quotes). `complete` false: the text is a file's head, so its last,
 * possibly cut, record is dropped.
 */
export function parseDelimited(text: string, delimiter: string, complete: boolean): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let quoted = false;
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
      } else field += c;
      i++;
      continue;
    }
    if (c === '"' && field === "") quoted = true;
    else if (c === delimiter) {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
      if (c === "\r" && text[i + 1] === "\n") i++;
    } else field += c;
    i++;
  }
  if (complete && (field !== "" || row.length > 0)) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

function delimiterOf(name: string): string | null {
  const lower = name.toLowerCase();
  if (lower.endsWith(".csv")) return ",";
  if (lower.endsWith(".tsv") || lower.endsWith(".tab")) return "\t";
  return null;
}

export class FilesPanel {
  /** The panel, mounted by the notebook below its toolbar. */
  readonly el: HTMLElement;
  /** The toolbar button that opens and closes the panel. */
  readonly toggle: HTMLButtonElement;
  private path = "";
  /** The file the preview shows, if any. */
  private previewing: string | null = null;
  private listing: Listing | null = null;
  private readonly crumbs = h("nav", { class: "files-crumbs", attrs: { "aria-label": "folder" } });
  private readonly actions = h("div", { class: "files-actions" });
  private readonly status = h("p", { class: "files-status", attrs: { role: "status", "aria-live": "polite" } });
  private readonly list = h("ul", { class: "files-list", attrs: { "aria-label": "files" } });
  private readonly preview = h("section", { class: "files-preview", attrs: { "aria-label": "preview", hidden: true } });
  private readonly input: HTMLInputElement;
  private readonly hidden = h("input", { attrs: { type: "checkbox", "data-action": "files-show-hidden" } });

  constructor(private readonly token: string) {
    this.input = h("input", { attrs: { type: "file", multiple: true, hidden: true, "data-action": "files-upload-input" } });
    this.input.addEventListener("change", () => {
      const files = Array.from(this.input.files ?? []);
      this.input.value = "";
      void this.uploadAll(files);
    });
    this.el = h("aside", { class: "files-panel", attrs: { "aria-label": "Files", hidden: true, "data-role": "files" } }, [
      h("header", { class: "files-head" }, [
        h("h2", { text: "Files" }),
        h("span", { class: "muted files-where", text: "the kernel's working directory" }),
        h("span", { class: "spacer" }),
        h("label", { class: "files-hidden-toggle" }, [this.hidden, " Show hidden"]),
        button("↻", "Refresh the list", () => void this.refresh(), "files-refresh"),
        button("×", "Close the Files panel", () => this.show(false), "files-close"),
      ]),
      this.crumbs,
      this.actions,
      this.status,
      this.list,
      this.preview,
    ]);
    this.toggle = button("Files", "Show or hide the workspace's files", () => this.show(this.el.hidden), "files-toggle");
    this.toggle.setAttribute("aria-expanded", "false");
    this.toggle.setAttribute("aria-controls", "files-panel");
    this.el.id = "files-panel";
    this.hidden.addEventListener("change", () => this.render());
    this.el.addEventListener("dragover", (e) => {
      if (!this.listing?.can_edit) return;
      e.preventDefault();
      this.el.classList.add("files-drop");
    });
    this.el.addEventListener("dragleave", () => this.el.classList.remove("files-drop"));
    this.el.addEventListener("drop", (e) => {
      this.el.classList.remove("files-drop");
      if (!this.listing?.can_edit) return;
      e.preventDefault();
      void this.uploadAll(Array.from(e.dataTransfer?.files ?? []));
    });
  }

  show(open: boolean): void {
    this.el.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    this.toggle.classList.toggle("active", open);
    if (open) void this.refresh();
  }

  private url(route: string, params: Record<string, string>): string {
    const url = podUrl(route);
    url.search = new URLSearchParams(params).toString();
    return url.toString();
  }

  private auth(): HeadersInit {
    return { Authorization: `Bearer ${this.token}` };
  }

  private say(text: string, kind: "info" | "error" = "info"): void {
    this.status.textContent = text;
    this.status.classList.toggle("files-error", kind === "error");
  }

  private async call(route: string, params: Record<string, string>, init: RequestInit = {}): Promise<Response> {
    const r = await fetch(this.url(route, params), { cache: "no-store", ...init, headers: { ...this.auth(), ...(init.headers ?? {}) } });
    if (!r.ok) {
      const body = (await r.json().catch(() => ({}))) as { message?: string };
      throw new Error(body.message ?? `${r.status} ${r.statusText}`);
    }
    return r;
  }

  private join(name: string): string {
    return this.path ? `${this.path}/${name}` : name;
  }

  async refresh(): Promise<void> {
    try {
      const r = await this.call("/api/files", { path: this.path });
      this.listing = (await r.json()) as Listing;
      this.render();
    } catch (e) {
      this.say(`Cannot list ${this.path || "the workspace"}: ${message(e)}`, "error");
    }
  }

  private go(path: string): void {
    this.path = path;
    this.closePreview();
    void this.refresh();
  }

  private render(): void {
    const l = this.listing;
    if (!l) return;
    const parts = l.path ? l.path.split("/") : [];
    this.crumbs.replaceChildren(
      button("workspace", "Go to the top of the workspace", () => this.go(""), "files-crumb"),
      ...parts.flatMap((p, i) => [h("span", { class: "muted", text: "/" }), button(p, `Go to ${parts.slice(0, i + 1).join("/")}`, () => this.go(parts.slice(0, i + 1).join("/")), "files-crumb")]),
    );
    this.actions.replaceChildren();
    if (l.can_edit) {
      this.actions.append(
        button("Upload files", "Upload files into this folder", () => this.input.click(), "files-upload"),
        this.input,
        h("span", { class: "muted", text: `or drop them here · up to ${formatBytes(l.max_upload_bytes)} each` }),
      );
    } else {
      this.actions.append(h("span", { class: "muted", text: "Read-only: you can download files." }));
    }
    const rows: HTMLElement[] = [];
    if (l.path) rows.push(h("li", { class: "files-row" }, [button("⤴ ..", "Up one folder", () => this.go(parts.slice(0, -1).join("/")), "files-up")]));
    // Dot files (IPython's profile, upload temporaries) only on request.
    const shown = this.hidden.checked ? l.entries : l.entries.filter((e) => !e.name.startsWith("."));
    for (const e of shown) rows.push(this.row(e, l.can_edit));
    if (shown.length === 0) rows.push(h("li", { class: "files-empty muted", text: "No files yet." }));
    if (l.omitted > 0) rows.push(h("li", { class: "muted", text: `${l.omitted} more not listed.` }));
    this.list.replaceChildren(...rows);
    const hiddenCount = l.entries.length - shown.length;
    this.say(`${shown.length} item${shown.length === 1 ? "" : "s"}${hiddenCount ? ` (${hiddenCount} hidden)` : ""}`);
  }

  private row(e: Entry, canEdit: boolean): HTMLElement {
    const path = this.join(e.name);
    const when = new Date(e.modified * 1000).toLocaleString();
    const why = WHY_NOT[e.kind];
    const li = h("li", { class: `files-row files-${e.kind}${why ? " files-unopenable" : ""}`, attrs: { "data-name": e.name, "data-kind": e.kind } });
    if (e.kind === "dir") {
      li.append(button(`▸ ${e.name}/`, `Open the folder ${e.name}`, () => this.go(path), "files-open"));
    } else if (e.kind === "file") {
      const sep = delimiterOf(e.name);
      li.append(
        sep
          ? button(`▦ ${e.name}`, `Preview ${e.name} as a table`, () => void this.showTable(path, e.name, sep), "files-open")
          : h("span", { class: "files-name", text: e.name }),
      );
    } else {
      li.append(h("span", { class: "files-name", text: e.name, attrs: { "aria-disabled": "true" } }), h("span", { class: "files-why", text: why ?? "" }));
    }
    li.append(h("span", { class: "files-meta muted", text: e.kind === "file" ? `${formatBytes(e.size)} · ${when}` : when }));
    const tools = h("span", { class: "files-tools" });
    if (e.kind === "file") tools.append(button("Download", `Download ${e.name}`, () => void this.download(path, e.name), "files-download"));
    if (canEdit) {
      tools.append(
        button("Rename", `Rename ${e.name}`, () => void this.rename(path, e.name), "files-rename"),
        button("Delete", `Delete ${e.name}`, () => void this.remove(path, e.name, e.kind), "files-delete"),
      );
    }
    li.append(tools);
    return li;
  }

  private async uploadAll(files: File[]): Promise<void> {
    const cap = this.listing?.max_upload_bytes ?? Infinity;
    for (const f of files) {
      if (f.size > cap) {
        this.say(`${f.name} is ${formatBytes(f.size)}, over the upload limit of ${formatBytes(cap)}.`, "error");
        continue;
      }
      this.say(`Uploading ${f.name} (${formatBytes(f.size)})…`);
      try {
        await this.call("/api/files/content", { path: this.join(f.name) }, { method: "PUT", body: f, headers: { "Content-Type": "application/octet-stream" } });
        this.say(`Uploaded ${f.name}.`);
      } catch (e) {
        this.say(`Upload of ${f.name} failed: ${message(e)}`, "error");
        return;
      }
    }
    const last = this.status.textContent;
    await this.refresh();
    if (last) this.say(last);
  }

  private async download(path: string, name: string): Promise<void> {
    try {
      const r = await this.call("/api/files/content", { path });
      const url = URL.createObjectURL(await r.blob());
      const a = h("a", { attrs: { href: url, download: name } });
      document.body.append(a);
      a.click();
      a.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      this.say(`Download of ${name} failed: ${message(e)}`, "error");
    }
  }

  private async rename(path: string, name: string): Promise<void> {
    const to = window.prompt(`Rename ${name} to:`, name);
    if (!to || to === name) return;
    try {
      await this.call("/api/files/rename", {}, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ from: path, to: this.join(to) }) });
      if (this.previewing === path) this.closePreview();
      await this.refresh();
      this.say(`Renamed ${name} to ${to}.`);
    } catch (e) {
      this.say(`Rename failed: ${message(e)}`, "error");
    }
  }

  private async remove(path: string, name: string, kind: Kind): Promise<void> {
    if (!window.confirm(`Delete ${kind === "dir" ? "the folder " : ""}${name}? This cannot be undone.`)) return;
    try {
      await this.call("/api/files", { path }, { method: "DELETE" });
      if (this.previewing === path) this.closePreview();
      await this.refresh();
      this.say(`Deleted ${name}.`);
    } catch (e) {
      this.say(`Delete failed: ${message(e)}`, "error");
    }
  }

  private closePreview(): void {
    this.preview.hidden = true;
    this.preview.replaceChildren();
    this.previewing = null;
  }

  private async showTable(path: string, name: string, delimiter: string): Promise<void> {
    try {
      const r = await this.call("/api/files/content", { path, limit: String(PREVIEW_BYTES) });
      const total = Number(r.headers.get("x-file-size") ?? "0");
      const bytes = new Uint8Array(await r.arrayBuffer());
      const complete = bytes.length >= total;
      const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
      const rows = parseDelimited(text, delimiter, complete);
      const columns = rows.reduce((m, row) => Math.max(m, row.length), 0);
      const shown = rows.slice(0, PREVIEW_ROWS + 1);
      const [head, ...body] = shown;
      const table = h("table", { class: "files-table" }, [
        h("thead", {}, [h("tr", {}, (head ?? []).map((c) => h("th", { text: c, attrs: { scope: "col" } })))]),
        h("tbody", {}, body.map((row) => h("tr", {}, row.map((c) => h("td", { text: c }))))),
      ]);
      const dataRows = Math.max(rows.length - 1, 0);
      const summary = complete
        ? `${dataRows} row${dataRows === 1 ? "" : "s"} × ${columns} column${columns === 1 ? "" : "s"}`
        : `first ${dataRows} rows × ${columns} columns (of the first ${formatBytes(bytes.length)} of ${formatBytes(total)})`;
      this.preview.replaceChildren(
        h("header", { class: "files-head" }, [
          h("h3", { text: name }),
          h("span", { class: "muted files-summary", text: `${summary}${body.length < dataRows ? `; showing ${body.length}` : ""}` }),
          h("span", { class: "spacer" }),
          button("×", "Close the preview", () => this.closePreview(), "files-preview-close"),
        ]),
        h("div", { class: "files-table-wrap", attrs: { tabindex: "0", "aria-label": `${name} preview` } }, [table]),
      );
      this.preview.hidden = false;
      this.previewing = path;
    } catch (e) {
      this.say(`Preview of ${name} failed: ${message(e)}`, "error");
    }
  }
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
