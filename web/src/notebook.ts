// The notebook page: cells from the shared Y.Doc (order, type, source), everything else (outputs,
// states, counts, the queue, the graph, presence, prompts) from the JSON events, in the order
// Middleman gives them. Editors edit through Yjs; structure changes go through JSON messages so
// that the server keeps its rules (never fewer than one cell, outputs cleared on type change).
import { podUrl } from "./base";
import { Prec } from "@codemirror/state";
import { keymap } from "@codemirror/view";
import * as Y from "yjs";
import { Assist } from "./assist";
import { type Connection, type LinkState } from "./connection";
import { button, colorClass, h, initials } from "./dom";
import { FilesPanel } from "./files";
import { CellEditor } from "./editor";
import { CellKeys } from "./keys";
import { type CodeLanguage, codeLanguage } from "./language";
import { renderMarkdown } from "./markdown";
import { finishedNotice, namePositions, Toasts, type ToastKind } from "./messages";
import { OutputArea } from "./outputs";
import { badgeText, runText } from "./runinfo";
import { resultName, sqlTemplate } from "./sql";
import type {
  CellKind,
  CellState,
  ClientMessage,
  ExecutionSummary,
  Frame,
  GraphCell,
  KernelState,
  Output,
  PendingInput,
  PresenceInfo,
  GraphRule,
  Reactivity,
  Resume,
  RunRecord,
  StateCause,
  Welcome,
} from "./protocol";

interface Runtime {
  outputs: Output[];
  execution_count: number | null;
  state: CellState;
  truncatedAt?: number;
  disabled: boolean;
  /** The snapshot left this cell's outputs out; `fetch_outputs` brings them. */
  deferred?: boolean;
  /** Why it is stale or blocked. */
  cause: StateCause | null;
  last_run: RunRecord | null;
}

/** Whether cells of this kind run in the kernel (code and SQL). */
function runs(kind: CellKind): boolean {
  return kind === "code" || kind === "sql";
}

function newRuntime(): Runtime {
  return { outputs: [], execution_count: null, state: "idle", disabled: false, cause: null, last_run: null };
}

class CellUI {
  readonly root: HTMLElement;
  readonly outputs: OutputArea;
  readonly editor: CellEditor;
  private readonly prompt = h("div", { class: "prompt" });
  private readonly badge = h("span", { class: "state-badge" });
  private readonly ran = h("span", { class: "last-run" });
  private readonly people = h("div", { class: "cell-people" });
  private readonly rendered = h("div", { class: "markdown rendered", attrs: { tabindex: "-1" } });
  private readonly deps = h("div", { class: "deps" });
  private readonly typeSelect: HTMLSelectElement;
  private readonly editorHost = h("div", { class: "editor" });
  private readonly away = h("span", { class: "away-tag", text: "changed while you were away" });
  /** A SQL cell's result name, from its first line. */
  private readonly result = h("span", { class: "sql-result", title: "The query's result is this Python name (its first line, -- result: name)" });
  editing = false;
  private renderTimer = 0;
  private readonly observer: () => void;

  constructor(
    private readonly app: Notebook,
    readonly id: string,
    public kind: CellKind,
    readonly ytext: Y.Text,
  ) {
    // Table outputs ask the kernel for their pages.
    this.outputs = new OutputArea(app.assist);
    const editable = app.canEdit;
    this.typeSelect = h("select", { class: "cell-type", attrs: { "aria-label": "cell type", "data-action": "cell-type" } }, [
      h("option", { text: "Code", attrs: { value: "code" } }),
      h("option", { text: "SQL", attrs: { value: "sql" } }),
      h("option", { text: "Markdown", attrs: { value: "markdown" } }),
      h("option", { text: "Raw", attrs: { value: "raw" } }),
    ]);
    this.typeSelect.value = kind;
    this.offerSql(app.language);
    this.typeSelect.addEventListener("change", () => app.setKind(this.id, this.typeSelect.value as CellKind));
    const tools = editable
      ? h("div", { class: "cell-tools" }, [
          button("▶", "Run this cell (Ctrl-Enter)", () => app.runCell(this.id), "run-cell"),
          button("↑", "Move up", () => app.moveBy(this.id, -1), "move-up"),
          button("↓", "Move down", () => app.moveBy(this.id, 1), "move-down"),
          this.typeSelect,
          button("⊘", "Disable or enable this cell (a disabled cell does not run, nor do its dependents)", () => app.toggleDisabled(this.id), "toggle-disabled"),
          button("Clear", "Clear outputs", () => app.send({ type: "clear_outputs", cell_id: this.id }), "clear-cell"),
          button("✕", "Delete cell (D, D)", () => app.deleteCell(this.id), "delete-cell"),
        ])
      : null;
    this.root = h("section", { class: `cell kind-${kind}`, attrs: { "data-cell-id": id, "aria-label": "cell", tabindex: "-1" } }, [
      h("div", { class: "gutter" }, [this.prompt, this.people]),
      h("div", { class: "body" }, [
        h("div", { class: "cell-head" }, [this.badge, this.result, this.away, h("span", { class: "spacer" }), this.ran, tools]),
        this.editorHost,
        this.rendered,
        this.deps,
        this.outputs.root,
      ]),
    ]);
    this.away.hidden = true;
    this.root.addEventListener("mousedown", () => app.select(this.id, false));
    this.rendered.addEventListener("dblclick", () => {
      if (app.canEdit) this.edit();
    });
    this.root.addEventListener("focusout", (e) => {
      const to = (e as FocusEvent).relatedTarget as Node | null;
      if (this.kind === "markdown" && this.editing && !(to && this.root.contains(to))) {
        this.editing = false;
        this.refreshMarkdown();
      }
    });
    const runKeys = Prec.highest(
      keymap.of([
        { key: "Shift-Enter", run: () => (app.runAndAdvance(this.id), true) },
        { key: "Mod-Enter", run: () => (app.runCell(this.id), true) },
        { key: "Alt-Enter", run: () => (app.runAndInsert(this.id), true) },
        { key: "Escape", run: () => (app.commandMode(this.id), true) },
      ]),
    );
    this.editor = new CellEditor(this.editorHost, {
      ytext,
      awareness: app.conn.awareness,
      kind,
      language: app.language,
      readOnly: !editable,
      keys: runKeys,
      assist: { cellId: id, ask: (request) => app.assist.ask(request) },
      onFocus: () => {
        this.editing = true;
        app.select(this.id, true);
        this.refreshMarkdown();
      },
    });
    this.observer = () => {
      if (this.kind === "sql") this.showResultName();
      if (this.kind !== "markdown" || this.renderTimer) return;
      this.renderTimer = window.setTimeout(() => {
        this.renderTimer = 0;
        this.refreshMarkdown();
      }, 150);
    };
    ytext.observe(this.observer);
    this.refreshMarkdown();
    this.showResultName();
  }

  destroy(): void {
    this.ytext.unobserve(this.observer);
    window.clearTimeout(this.renderTimer);
    this.editor.destroy();
    this.root.remove();
  }

  setKind(kind: CellKind): void {
    if (kind === this.kind) return;
    this.root.classList.replace(`kind-${this.kind}`, `kind-${kind}`);
    this.kind = kind;
    this.typeSelect.value = kind;
    this.editor.setKind(kind);
    this.offerSql(this.app.language);
    this.refreshMarkdown();
    this.showResultName();
  }

  /** The document's kernel changed: code in its language, SQL offered to Python's only. */
  setLanguage(lang: CodeLanguage): void {
    this.editor.setLanguage(lang);
    this.offerSql(lang);
  }

  /** Turning a cell into SQL is offered where SQL cells run (a SQL cell keeps its kind shown). */
  private offerSql(lang: CodeLanguage): void {
    const option = this.typeSelect.querySelector<HTMLOptionElement>('option[value="sql"]');
    if (option) option.disabled = !lang.sqlCells && this.kind !== "sql";
  }

  private showResultName(): void {
    const name = this.kind === "sql" ? resultName(this.ytext.toString()) : null;
    this.result.textContent = name ? `→ ${name}` : "";
    this.result.hidden = name === null;
  }

  /** Editing on purpose (Enter, a double click, a new cell): Tab indents here. */
  edit(): void {
    this.editing = true;
    this.refreshMarkdown();
    this.editor.focus();
    this.editor.setTabMovesFocus(false);
  }

  stopEditing(): void {
    this.editing = false;
    this.refreshMarkdown();
  }

  refreshMarkdown(): void {
    const source = this.ytext.toString();
    const showRendered = this.kind === "markdown" && !this.editing && source.trim() !== "";
    this.rendered.hidden = !showRendered;
    this.editorHost.hidden = showRendered;
    if (showRendered) renderMarkdown(source, this.rendered);
  }

  showRuntime(rt: Runtime): void {
    const state = rt.disabled ? "disabled" : rt.state;
    for (const c of Array.from(this.root.classList)) if (c.startsWith("state-")) this.root.classList.remove(c);
    this.root.classList.add(`state-${state}`);
    this.badge.textContent = rt.disabled ? "disabled" : badgeText(rt.state, rt.cause, (id) => this.app.cellName(id));
    this.badge.hidden = this.badge.textContent === "";
    this.root.classList.toggle("not-in-kernel", rt.cause?.kind === "not_in_kernel");
    const ran = runs(this.kind) ? runText(rt.last_run, this.app.kernelSession) : { text: "", title: "" };
    this.ran.textContent = ran.text;
    this.ran.title = ran.title;
    this.ran.hidden = ran.text === "";
    if (runs(this.kind)) {
      const n = rt.state === "running" ? "*" : rt.state === "queued" ? "…" : rt.execution_count !== null ? String(rt.execution_count) : " ";
      this.prompt.textContent = `[${n}]`;
    } else {
      this.prompt.textContent = "";
    }
  }

  showDeps(text: string, error: string): void {
    this.deps.replaceChildren();
    if (error) this.deps.append(h("span", { class: "graph-error", text: error }));
    if (text) this.deps.append(h("span", { text }));
    this.deps.hidden = !text && !error;
  }

  showPeople(people: PresenceInfo[]): void {
    this.people.replaceChildren(
      ...people.map((p) => h("span", { class: `dot ${colorClass(p.color)}`, title: `${p.name} is here`, text: initials(p.name) })),
    );
  }

  markAway(on: boolean): void {
    this.away.hidden = !on;
    this.root.classList.toggle("changed-away", on);
  }
}

interface AwaySummary {
  since: number;
  session: string | null;
  sources: Map<string, string>;
  outputs: number;
  finished: number;
  events: number;
  touched: Set<string>;
}

export class Notebook {
  readonly conn: Connection;
  private readonly yCells: Y.Array<Y.Map<unknown>>;
  private readonly cells = new Map<string, CellUI>();
  private order: string[] = [];
  private readonly rt = new Map<string, Runtime>();
  private readonly execCell = new Map<string, string>();
  private readonly graph = new Map<string, GraphCell>();
  private readonly presence = new Map<number, PresenceInfo>();
  private queue: ExecutionSummary[] = [];
  private kernelState: KernelState = "starting";
  private kernelReason = "";
  /** The kernel session running now: a cell last run in another has no results in the kernel. */
  kernelSession = "";
  private reactivity: Reactivity = "autorun";
  private graphRule: GraphRule = "positional";
  private welcome: Welcome | null = null;
  /** The language of code cells, from the kernel the welcome describes. */
  language: CodeLanguage = codeLanguage(null);
  private selected: string | null = null;
  private pendingFocus: string | null = null;
  /** insert_cell requests of this page: edit the new cell, or only select it (paste, undo). */
  private readonly myRequests = new Map<string, "edit" | "select">();
  /** execute_cell requests of this page, then their executions: their input() prompts take focus. */
  private readonly myRuns = new Set<string>();
  private readonly myExecutions = new Set<string>();
  private readonly cellKeys: CellKeys;
  private requestCounter = 0;
  private pendingInput: PendingInput | null = null;
  private readonly myAnswers = new Map<string, string>();
  private away: AwaySummary | null = null;
  /** Completion, inspection and table pages: questions to the kernel answered to this page. */
  readonly assist: Assist;
  private synced = false;
  private lastKey = "";
  private lastKeyAt = 0;
  private presenceTimer = 0;

  // Page parts.
  private readonly root: HTMLElement;
  private readonly linkEl = h("span", { class: "link", attrs: { "data-role": "link" } });
  private readonly kernelEl = h("span", { class: "kernel", attrs: { "data-role": "kernel" } });
  private readonly peopleEl = h("div", { class: "people", attrs: { "data-role": "people" } });
  private readonly meEl = h("span", { class: "me" });
  private readonly titleEl = h("span", { class: "doc-title" });
  private readonly queueEl = h("span", { class: "queue", attrs: { "data-role": "queue" } });
  private readonly bannerEl = h("div", { class: "banners" });
  private readonly cellsEl = h("main", { class: "cells", attrs: { "aria-label": "notebook" } });
  private readonly toolbar = h("nav", { class: "toolbar", attrs: { "aria-label": "notebook actions" } });
  private readonly toasts: Toasts;
  private readonly modeSelect: HTMLSelectElement;
  private readonly ruleSelect: HTMLSelectElement;
  private readonly staleButton: HTMLButtonElement;
  private readonly fileInput: HTMLInputElement;
  private readonly files: FilesPanel;

  constructor(
    root: HTMLElement,
    conn: Connection,
    private readonly token: string,
  ) {
    this.root = root;
    this.conn = conn;
    this.assist = new Assist((m) => conn.send(m));
    this.yCells = conn.doc.getArray<Y.Map<unknown>>("cells");
    this.yCells.observeDeep((events) => {
      if (events.some((e) => e.target === this.yCells || e.target instanceof Y.Map)) this.reconcile();
    });
    this.modeSelect = h("select", { attrs: { "aria-label": "reactivity", "data-action": "reactivity" } }, [
      h("option", { text: "Autorun dependents", attrs: { value: "autorun" } }),
      h("option", { text: "Lazy: mark stale", attrs: { value: "lazy" } }),
    ]);
    this.modeSelect.addEventListener("change", () => this.send({ type: "set_reactivity", mode: this.modeSelect.value as Reactivity }));
    this.ruleSelect = h("select", { attrs: { "aria-label": "definitions", "data-action": "graph-rule", title: "Positional: a cell reads each name from the nearest cell above that defines it (notebooks written for Jupyter run as they are). Strict: each name is defined in one cell, order does not matter." } }, [
      h("option", { text: "Names: nearest above", attrs: { value: "positional" } }),
      h("option", { text: "Names: one definition", attrs: { value: "strict" } }),
    ]);
    this.ruleSelect.addEventListener("change", () => this.send({ type: "set_graph_rule", rule: this.ruleSelect.value as GraphRule }));
    this.staleButton = button("Run stale", "Run every stale cell in dependency order", () => this.send({ type: "run_stale" }), "run-stale");
    this.fileInput = h("input", { attrs: { type: "file", accept: ".ipynb,application/x-ipynb+json,application/json", hidden: true, "data-action": "import-file" } });
    this.fileInput.addEventListener("change", () => void this.importFile());
    this.toasts = new Toasts({ label: (id) => this.label(id), jumpTo: (id) => this.jumpTo(id), element: (id) => this.cells.get(id)?.root });
    this.cellKeys = new CellKeys({
      order: () => this.order,
      copy: (id) => {
        const ui = this.cells.get(id);
        return ui ? { kind: ui.kind, source: ui.ytext.toString() } : undefined;
      },
      send: (m) => this.send(m),
      insert: (index, c) => this.insertAt(index, c.kind, c.source, "select"),
      remove: (id) => this.deleteCell(id),
      toast: (text) => this.toast(text, "info"),
    });
    this.files = new FilesPanel(token);
    root.replaceChildren(
      h("header", { class: "topbar" }, [
        h("span", { class: "brand", text: "nbplat" }),
        this.titleEl,
        this.linkEl,
        this.kernelEl,
        h("span", { class: "spacer" }),
        this.peopleEl,
        this.meEl,
      ]),
      this.toolbar,
      this.bannerEl,
      this.files.el,
      this.cellsEl,
      this.toasts.root,
      this.fileInput,
    );
    this.cellsEl.append(h("p", { class: "loading", text: "Loading the document…" }));
    this.buildToolbar();
    this.showLink("connecting", "");
    this.showKernel();
    document.addEventListener("keydown", (e) => this.onKey(e));
  }

  get canEdit(): boolean {
    return this.welcome?.role === "editor";
  }

  send(message: ClientMessage): void {
    if (!this.conn.send(message)) this.toast("Not connected: try again when the connection is back.", "warn");
  }

  // ---- connection events ------------------------------------------------------------------------

  onLink(state: LinkState, detail: string): void {
    if (state !== "connected") this.assist.dropAll();
    if (state !== "connected" && this.welcome && !this.away) {
      this.away = {
        since: Date.now(),
        session: this.conn.session,
        sources: new Map(this.order.map((id) => [id, this.cells.get(id)?.ytext.toString() ?? ""])),
        outputs: 0,
        finished: 0,
        events: 0,
        touched: new Set(),
      };
    }
    if (state !== "connected") this.synced = false;
    this.showLink(state, detail);
  }

  onSynced(): void {
    this.synced = true;
    this.reconcile();
    if (this.away) this.summariseAway();
  }

  onFrame(f: Frame, missed: boolean): void {
    if (missed && this.away) {
      this.away.events += 1;
      if (f.type === "output") {
        this.away.outputs += 1;
        const c = this.execCell.get(f.execution_id);
        if (c) this.away.touched.add(c);
      }
      if (f.type === "execution_finished") this.away.finished += 1;
    }
    switch (f.type) {
      case "welcome":
        return this.onWelcome(f);
      case "cells": {
        const ids = new Set(f.cells.map((c) => c.id));
        for (const id of this.rt.keys()) if (!ids.has(id)) this.rt.delete(id);
        for (const c of f.cells) if (!this.rt.has(c.id)) this.rt.set(c.id, newRuntime());
        return;
      }
      case "cell_created":
        if (f.request_id && this.myRequests.has(f.request_id)) {
          const then = this.myRequests.get(f.request_id);
          this.myRequests.delete(f.request_id);
          if (then === "edit") {
            this.pendingFocus = f.cell_id;
            this.focusPending();
          } else if (this.cells.has(f.cell_id)) this.jumpTo(f.cell_id);
          else this.pendingSelect = f.cell_id;
        }
        return;
      case "cell_state": {
        const rt = this.runtime(f.cell_id);
        rt.state = f.state;
        rt.cause = f.cause ?? null;
        if (f.last_run) rt.last_run = f.last_run;
        if (f.execution_count !== undefined) rt.execution_count = f.execution_count;
        this.cells.get(f.cell_id)?.showRuntime(rt);
        this.refreshToolbar();
        this.refreshDeps();
        return;
      }
      case "cell_outputs": {
        const rt = this.runtime(f.cell_id);
        // Only if nothing newer came meanwhile (a run clears the cell first).
        if (!rt.deferred) return;
        rt.deferred = false;
        rt.outputs = f.outputs.slice();
        this.cells.get(f.cell_id)?.outputs.set(rt.outputs, rt.truncatedAt);
        return;
      }
      case "outputs_cleared": {
        const rt = this.runtime(f.cell_id);
        rt.deferred = false;
        rt.outputs = [];
        rt.truncatedAt = undefined;
        this.cells.get(f.cell_id)?.outputs.clear();
        return;
      }
      case "graph":
        this.graph.clear();
        for (const g of f.cells) this.graph.set(g.id, g);
        this.refreshDeps();
        return;
      case "reactivity":
        this.reactivity = f.mode;
        this.refreshToolbar();
        return;
      case "graph_rule":
        this.graphRule = f.rule;
        this.refreshToolbar();
        return;
      case "cell_disabled": {
        const rt = this.runtime(f.cell_id);
        rt.disabled = f.disabled;
        this.cells.get(f.cell_id)?.showRuntime(rt);
        return;
      }
      case "presence": {
        const { type: _type, seq: _seq, ...p } = f;
        this.presence.set(p.client, p);
        this.showPeople();
        return;
      }
      case "presence_left":
        this.presence.delete(f.client);
        this.showPeople();
        return;
      case "kernel_status":
        this.kernelState = f.state;
        this.kernelReason = f.reason ?? "";
        if (f.kernel_session) {
          this.kernelSession = f.kernel_session;
          for (const [id, ui] of this.cells) ui.showRuntime(this.runtime(id));
        }
        this.showKernel();
        return;
      case "queue":
        this.queue = f.executions;
        for (const e of f.executions) if (e.cell_id) this.execCell.set(e.id, e.cell_id);
        this.showQueue();
        return;
      case "execution_queued":
        if (f.execution.cell_id) this.execCell.set(f.execution.id, f.execution.cell_id);
        if (f.request_id && this.myRuns.delete(f.request_id)) this.myExecutions.add(f.execution.id);
        return;
      case "execution_started":
        return;
      case "output": {
        const cell = this.execCell.get(f.execution_id);
        if (!cell) return;
        const rt = this.runtime(cell);
        if (rt.outputs.length > 0 && this.pendingClear.has(cell)) rt.outputs = [];
        this.pendingClear.delete(cell);
        rt.outputs.push(f.output);
        this.cells.get(cell)?.outputs.add(f.output);
        return;
      }
      case "update_display":
        for (const [id, rt] of this.rt) {
          let hit = false;
          rt.outputs = rt.outputs.map((o) => {
            if (o.output_type === "display_data" && o.display_id === f.display_id) {
              hit = true;
              return { ...o, data: f.data };
            }
            return o;
          });
          if (hit) this.cells.get(id)?.outputs.updateDisplay(f.display_id, f.data);
        }
        return;
      case "clear_output": {
        const cell = this.execCell.get(f.execution_id);
        if (!cell) return;
        const rt = this.runtime(cell);
        const ui = this.cells.get(cell);
        if (f.wait) {
          this.pendingClear.add(cell);
          ui?.outputs.clearWhenNext();
        } else {
          rt.outputs = [];
          ui?.outputs.clear();
        }
        return;
      }
      case "output_truncated": {
        const cell = this.execCell.get(f.execution_id);
        if (!cell) return;
        this.runtime(cell).truncatedAt = f.limit_bytes;
        this.cells.get(cell)?.outputs.truncated(f.limit_bytes);
        return;
      }
      case "input_request": {
        const { type: _t, seq: _s, ...input } = f;
        this.pendingInput = input;
        this.showPrompt(this.myExecutions.has(input.execution_id));
        return;
      }
      case "input_resolved": {
        const cell = this.execCell.get(f.execution_id);
        const ui = cell ? this.cells.get(cell) : undefined;
        const pending = this.pendingInput;
        this.pendingInput = null;
        const mine = this.myAnswers.get(f.execution_id);
        this.myAnswers.delete(f.execution_id);
        let after = "";
        if (pending) {
          if (f.outcome === "cancelled") after = `${pending.prompt}(input cancelled)`;
          else if (mine !== undefined) after = `${pending.prompt}${pending.password ? "••••••" : mine}`;
          else after = `${pending.prompt}(answered by ${f.by ?? "someone"})`;
        }
        ui?.outputs.hidePrompt(after);
        return;
      }
      case "execution_finished": {
        const cell = this.execCell.get(f.execution_id);
        if (cell && f.status !== "ok" && f.status !== "error" && f.reason) {
          const label = { aborted: "Not run", interrupted: "Interrupted", timed_out: "Timed out", kernel_died: "Kernel died" }[f.status];
          this.cells.get(cell)?.outputs.notice(finishedNotice(label, f.status, f.reason), `finished-${f.status}`);
        }
        this.execCell.delete(f.execution_id);
        this.myExecutions.delete(f.execution_id);
        return;
      }
      case "error":
        this.toast(namePositions(f.message, this.order, (id) => this.label(id), f.cell_id ?? undefined), "error", f.cell_id ?? undefined);
        return;
      case "assist":
        this.assist.answer(f.request_id, f.answer);
        return;
      case "pong":
        return;
      case "shutdown":
        this.showLink("reconnecting", `Middleman is shutting down: ${f.reason}`);
        return;
      case "resumed":
        this.showResume(f);
        return;
      case "checkpoint_status":
        if (f.failing) this.banner(f.reason ?? "Checkpoints cannot be saved; retrying.", "warn", "checkpoint");
        else this.bannerEl.querySelector('[data-key="checkpoint"]')?.remove();
        return;
    }
  }

  /** What came back from the checkpoint when the document resumed on a new kernel. */
  private showResume(r: Resume): void {
    const restored = r.restored.reduce((n, c) => n + c.names.length, 0);
    const parts = [r.fallback ? `Resumed on a new kernel without its checkpoint: ${r.fallback}` : `Resumed on a new kernel: ${restored} ${restored === 1 ? "name" : "names"} restored`];
    for (const c of r.rerun) {
      const names = c.names.length ? ` to rebuild ${c.names.join(", ")}` : "";
      parts.push(`running ${this.label(c.cell_id)} again${names} (${c.reason})`);
    }
    for (const l of r.lost) parts.push(`${l.name} is lost (${l.reason})`);
    if (r.files_restored) parts.push(`${r.files_restored} workspace ${r.files_restored === 1 ? "file" : "files"} restored`);
    for (const f of r.files_lost ?? []) parts.push(`${f.path} is not restored (${f.reason})`);
    const warn = r.fallback || r.lost.length || r.files_lost?.length;
    this.banner(parts.join("; ") + ".", warn ? "warn" : "info", "resumed");
  }

  private readonly pendingClear = new Set<string>();

  private onWelcome(w: Welcome): void {
    const first = this.welcome === null;
    this.welcome = w;
    this.conn.readOnly = w.role !== "editor";
    if (first) {
      this.titleEl.textContent = w.document;
      document.title = `${w.document} · notebook`;
      this.buildToolbar();
      if (!this.canEdit) this.banner("You are a viewer: the notebook is read-only.", "info", "viewer");
    }
    this.showLanguage(w);
    this.meEl.replaceChildren(
      h("span", { class: `avatar me-avatar ${colorClass(this.myColor(w))}`, text: initials(w.name), title: `${w.name} (you)` }),
      h("span", { class: "me-name", text: `${w.name} · ${w.role}` }),
    );
    const s = w.snapshot;
    if (s) {
      this.kernelState = s.kernel_state;
      this.kernelReason = "";
      this.kernelSession = s.kernel_session ?? "";
      this.rt.clear();
      this.pendingClear.clear();
      for (const c of s.cells) {
        this.rt.set(c.id, {
          outputs: c.outputs.slice(),
          execution_count: c.execution_count,
          state: c.state,
          truncatedAt: c.truncated ? w.limits.max_output_bytes : undefined,
          disabled: c.disabled ?? false,
          deferred: c.deferred != null,
          cause: c.cause ?? null,
          last_run: c.last_run ?? null,
        });
      }
      this.execCell.clear();
      for (const e of s.executions) if (e.cell_id) this.execCell.set(e.id, e.cell_id);
      this.queue = s.executions;
      this.graph.clear();
      for (const g of s.graph ?? []) this.graph.set(g.id, g);
      this.reactivity = s.reactivity ?? "autorun";
      this.graphRule = s.graph_rule ?? "positional";
      this.presence.clear();
      for (const p of s.presence) this.presence.set(p.client, p);
      this.pendingInput = s.input ?? null;
      for (const [id, ui] of this.cells) {
        const rt = this.runtime(id);
        ui.outputs.set(rt.outputs, rt.truncatedAt);
        if (rt.deferred) ui.outputs.notice("Loading outputs…", "deferred");
        ui.showRuntime(rt);
      }
      // The document's structure is on screen; its large outputs follow, a few cells a message,
      // in document order.
      const deferred = s.cells.filter((c) => c.deferred != null).map((c) => c.id);
      for (let i = 0; i < deferred.length; i += 8) this.send({ type: "fetch_outputs", cell_ids: deferred.slice(i, i + 8) });
      this.showPrompt(false);
      this.showPeople();
      this.showQueue();
      this.refreshDeps();
      if (s.resumed && first) this.showResume(s.resumed);
    }
    this.showKernel();
    this.refreshToolbar();
    this.sendPresence();
  }

  /**
   * Code cells follow the kernel the welcome describes (each welcome: after a reconnection the
   * document may run on another kernel); SQL cells are a Python kernel's, so where there are
   * none the page offers none (style.css hides the buttons under `.no-sql`).
   */
  private showLanguage(w: Welcome): void {
    const lang = codeLanguage(w.kernel);
    this.root.classList.toggle("no-sql", !lang.sqlCells);
    if (lang.name === this.language.name && lang.label === this.language.label) return;
    this.language = lang;
    for (const ui of this.cells.values()) ui.setLanguage(lang);
  }

  private myColor(w: Welcome): string {
    for (const p of this.presence.values()) if (p.client === w.client) return p.color;
    return "#4363d8";
  }

  private summariseAway(): void {
    const a = this.away;
    const w = this.welcome;
    if (!a || !w) return;
    this.away = null;
    const secs = Math.max(1, Math.round((Date.now() - a.since) / 1000));
    const changed = new Set(a.touched);
    for (const id of this.order) {
      const before = a.sources.get(id);
      const now = this.cells.get(id)?.ytext.toString() ?? "";
      if (before === undefined || before !== now) changed.add(id);
    }
    for (const id of a.sources.keys()) if (!this.cells.has(id)) changed.add(id);
    for (const id of changed) this.cells.get(id)?.markAway(true);
    const parts: string[] = [];
    const cellsChanged = Array.from(changed).filter((id) => this.cells.has(id)).length;
    const removed = Array.from(a.sources.keys()).filter((id) => !this.cells.has(id)).length;
    if (w.resumed_from !== undefined) {
      parts.push(`Reconnected after ${secs} s and caught up on ${a.events} missed event${a.events === 1 ? "" : "s"}`);
      if (a.outputs) parts.push(`${a.outputs} output${a.outputs === 1 ? "" : "s"}`);
      if (a.finished) parts.push(`${a.finished} run${a.finished === 1 ? "" : "s"} finished`);
    } else if (a.session !== null && a.session !== w.session) {
      parts.push(`Reconnected after ${secs} s. Middleman restarted while you were away: the document was reloaded from its saved copy (${this.order.length} cell${this.order.length === 1 ? "" : "s"}); the kernel is new, so earlier variables are gone`);
    } else {
      parts.push(`Reconnected after ${secs} s with a fresh copy of the document`);
    }
    if (cellsChanged) parts.push(`${cellsChanged} cell${cellsChanged === 1 ? "" : "s"} changed (marked)`);
    if (removed) parts.push(`${removed} cell${removed === 1 ? "" : "s"} removed`);
    if (!cellsChanged && !removed && a.events === 0) parts.push("nothing changed");
    this.banner(parts.join("; ") + ".", "reconnected", "away");
  }

  // ---- the cell list ----------------------------------------------------------------------------

  private runtime(id: string): Runtime {
    let rt = this.rt.get(id);
    if (!rt) {
      rt = newRuntime();
      this.rt.set(id, rt);
    }
    return rt;
  }

  private reconcile(): void {
    if (!this.synced && this.cells.size === 0) return;
    const seen = new Set<string>();
    const order: string[] = [];
    this.cellsEl.querySelector(".loading")?.remove();
    let prev: Element | null = null;
    for (const ymap of this.yCells.toArray()) {
      if (!(ymap instanceof Y.Map)) continue;
      const id = ymap.get("id");
      const source = ymap.get("source");
      const kindRaw = ymap.get("cell_type");
      if (typeof id !== "string" || !(source instanceof Y.Text) || seen.has(id)) continue;
      const kind: CellKind = kindRaw === "sql" || kindRaw === "markdown" || kindRaw === "raw" ? kindRaw : "code";
      seen.add(id);
      order.push(id);
      const name = `cell ${order.length}`;
      let ui = this.cells.get(id);
      if (ui && ui.ytext !== source) {
        // Moved: Middleman re-creates the cell's map, so the editor binds to the new text.
        const hadFocus = ui.root.contains(document.activeElement);
        ui.destroy();
        this.cells.delete(id);
        ui = undefined;
        if (hadFocus) this.pendingFocus = id;
      }
      if (!ui) {
        ui = new CellUI(this, id, kind, source);
        this.cells.set(id, ui);
        if (id === this.selected) ui.root.classList.add("selected");
        const rt = this.runtime(id);
        ui.outputs.set(rt.outputs, rt.truncatedAt);
        ui.showRuntime(rt);
      }
      if (ui.kind !== kind) {
        ui.setKind(kind);
        // A prompt and a last-run line are for cells that run only.
        ui.showRuntime(this.runtime(id));
      }
      if (ui.root.getAttribute("aria-label") !== name) ui.root.setAttribute("aria-label", name);
      const want: Element | null = prev ? prev.nextElementSibling : this.cellsEl.firstElementChild;
      if (want !== ui.root) this.cellsEl.insertBefore(ui.root, want);
      prev = ui.root;
    }
    for (const [id, ui] of this.cells) {
      if (!seen.has(id)) {
        ui.destroy();
        this.cells.delete(id);
      }
    }
    this.order = order;
    let adder = this.cellsEl.querySelector(".add-cells");
    if (!adder && this.canEdit) {
      adder = h("div", { class: "add-cells" }, [
        button("+ Code", "Add a code cell at the end", () => this.insertAt(this.order.length, "code"), "add-code"),
        button("+ SQL", "Add a SQL cell at the end", () => this.insertSql(this.order.length), "add-sql"),
        button("+ Markdown", "Add a markdown cell at the end", () => this.insertAt(this.order.length, "markdown"), "add-markdown"),
      ]);
    }
    if (adder) this.cellsEl.append(adder);
    if (this.selected === null || !this.cells.has(this.selected)) this.select(order[0] ?? null, false);
    this.refreshDeps();
    this.showPrompt(false);
    this.showPeople();
    this.refreshToolbar();
    this.focusPending();
  }

  private pendingSelect: string | null = null;

  private focusPending(): void {
    if (this.pendingSelect && this.cells.has(this.pendingSelect)) {
      const id = this.pendingSelect;
      this.pendingSelect = null;
      this.jumpTo(id);
    }
    if (!this.pendingFocus) return;
    const ui = this.cells.get(this.pendingFocus);
    if (!ui) return;
    this.pendingFocus = null;
    this.select(ui.id, true);
    ui.edit();
  }

  private index(id: string): number {
    return this.order.indexOf(id);
  }

  /** A cell as messages name it (by position). */
  cellName(id: string): string {
    return this.label(id);
  }

  /**
   * One banner while `lost` cells show results the kernel does not have (after a restart, or when the
   * document came back on a new kernel), offering to run them again.
   */
  private showLostResults(lost: number): void {
    const el = this.bannerEl.querySelector<HTMLElement>('[data-key="not-in-kernel"]');
    if (lost === 0 || !this.welcome) {
      el?.remove();
      return;
    }
    const text = `The kernel is new: ${lost} cell${lost === 1 ? " shows results" : "s show results"} it does not have.`;
    if (el) {
      const span = el.querySelector("span");
      if (span) span.textContent = text;
      return;
    }
    const actions = this.canEdit
      ? [
          button("Run all", "Run every code cell once, in dependency order", () => this.runAll(), "banner-run-all"),
          button("Run stale", "Run the cells that are stale, in dependency order", () => this.send({ type: "run_stale" }), "banner-run-stale"),
        ]
      : [];
    this.banner(text, "warn", "not-in-kernel", actions);
  }

  private label(id: string): string {
    const i = this.index(id);
    return i < 0 ? "a deleted cell" : `cell ${i + 1}`;
  }

  /** Scrolls to a cell and selects it (command mode). */
  jumpTo(id: string): void {
    const ui = this.cells.get(id);
    if (!ui) return;
    this.select(id, false);
    ui.root.scrollIntoView({ block: "center" });
    ui.root.focus({ preventScroll: true });
  }

  // ---- actions ----------------------------------------------------------------------------------

  select(id: string | null, editing: boolean): void {
    if (this.selected !== id) {
      if (this.selected) this.cells.get(this.selected)?.root.classList.remove("selected");
      this.selected = id;
      if (id) {
        const ui = this.cells.get(id);
        ui?.root.classList.add("selected");
        ui?.markAway(false);
      }
      this.sendPresence();
    }
    this.root.classList.toggle("edit-mode", editing);
  }

  commandMode(id: string): void {
    const ui = this.cells.get(id);
    if (!ui) return;
    ui.editor.view.contentDOM.blur();
    ui.stopEditing();
    this.select(id, false);
    ui.root.focus();
  }

  runCell(id: string): void {
    const ui = this.cells.get(id);
    if (!ui) return;
    if (ui.kind === "markdown") {
      ui.stopEditing();
      return;
    }
    if (!runs(ui.kind) || !this.canEdit) return;
    const request_id = this.requestId();
    this.myRuns.add(request_id);
    this.send({ type: "execute_cell", cell_id: id, request_id });
  }

  runAndAdvance(id: string): void {
    const wasEditing = this.cells.get(id)?.editing ?? false;
    this.runCell(id);
    const i = this.index(id);
    const next = this.order[i + 1];
    if (next === undefined) {
      if (this.canEdit) this.insertAt(i + 1, "code");
      return;
    }
    const ui = this.cells.get(next);
    if (wasEditing && ui && runs(ui.kind) && this.canEdit) {
      this.select(next, true);
      ui.edit();
    } else {
      this.commandMode(id);
      this.select(next, false);
      ui?.root.scrollIntoView({ block: "nearest" });
    }
  }

  runAndInsert(id: string): void {
    this.runCell(id);
    if (this.canEdit) this.insertAt(this.index(id) + 1, "code");
  }

  runAll(): void {
    // One plan on the server: every code cell once, in dependency order, merged with what
    // autorun schedules.
    this.send({ type: "run_all" });
  }

  private requestId(): string {
    return `r${++this.requestCounter}-${Date.now().toString(36)}`;
  }

  insertAt(index: number, kind: CellKind, source?: string, then: "edit" | "select" = "edit"): void {
    const request_id = this.requestId();
    this.myRequests.set(request_id, then);
    this.send({ type: "insert_cell", index: Math.max(0, Math.min(index, this.order.length)), cell_type: kind, source, request_id });
  }

  /** Inserts a SQL cell whose result gets a name unused in the document. */
  insertSql(index: number): void {
    this.insertAt(index, "sql", sqlTemplate(this.sources()));
  }

  private sources(): string[] {
    return Array.from(this.cells.values(), (ui) => ui.ytext.toString());
  }

  deleteCell(id: string): void {
    if (this.order.length <= 1) {
      this.toast("A notebook keeps at least one cell.", "warn");
      return;
    }
    const i = this.index(id);
    const neighbour = this.order[i + 1] ?? this.order[i - 1] ?? null;
    const ui = this.cells.get(id);
    if (ui) this.cellKeys.noteDeleted(i, { kind: ui.kind, source: ui.ytext.toString() });
    this.send({ type: "delete_cell", cell_id: id });
    this.select(neighbour, false);
  }

  moveBy(id: string, delta: number): void {
    const i = this.index(id);
    const to = i + delta;
    if (i < 0 || to < 0 || to >= this.order.length) return;
    this.send({ type: "move_cell", cell_id: id, index: to });
  }

  setKind(id: string, kind: CellKind): void {
    const ui = this.cells.get(id);
    if (!ui || ui.kind === kind) return;
    this.send({ type: "set_cell_type", cell_id: id, cell_type: kind });
    // An empty cell turned to SQL starts as a new SQL cell does.
    if (kind === "sql" && ui.ytext.length === 0) this.send({ type: "set_source", cell_id: id, source: sqlTemplate(this.sources()) });
  }

  toggleDisabled(id: string): void {
    this.send({ type: "set_cell_disabled", cell_id: id, disabled: !this.runtime(id).disabled });
  }

  private sendPresence(): void {
    window.clearTimeout(this.presenceTimer);
    this.presenceTimer = window.setTimeout(() => {
      if (this.conn.open) this.conn.send({ type: "presence", cell_id: this.selected ?? undefined });
    }, 120);
  }

  private async exportFile(): Promise<void> {
    try {
      const r = await fetch(podUrl("api/notebook"), { headers: { Authorization: `Bearer ${this.token}` }, cache: "no-store" });
      if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
      const blob = await r.blob();
      const url = URL.createObjectURL(blob);
      const a = h("a", { attrs: { href: url, download: `${(this.welcome?.document ?? "notebook").replace(/[^A-Za-z0-9._-]/g, "_")}.ipynb` } });
      document.body.append(a);
      a.click();
      a.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      this.toast(`Export failed: ${String(e)}`, "error");
    }
  }

  private async importFile(): Promise<void> {
    const file = this.fileInput.files?.[0];
    this.fileInput.value = "";
    if (!file) return;
    try {
      const body = await file.text();
      const r = await fetch(podUrl("api/notebook"), {
        method: "PUT",
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" },
        body,
      });
      const answer = (await r.json().catch(() => ({}))) as { cells?: number; message?: string };
      if (!r.ok) throw new Error(answer.message ?? `${r.status}`);
      this.toast(`Imported ${file.name}: ${answer.cells ?? "?"} cells.`, "info");
    } catch (e) {
      this.toast(`Import failed: ${e instanceof Error ? e.message : String(e)}`, "error");
    }
  }

  // ---- keyboard ---------------------------------------------------------------------------------

  private onKey(e: KeyboardEvent): void {
    const target = e.target as HTMLElement | null;
    if (target && (target.closest(".cm-editor") || /^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(target.tagName))) return;
    if (e.defaultPrevented || e.isComposing) return;
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "s") {
      e.preventDefault();
      this.toast("Saved: every change is saved as you go.", "info");
      return;
    }
    const id = this.selected;
    if (!id) return;
    const ui = this.cells.get(id);
    const twice = (k: string) => {
      const now = Date.now();
      const hit = this.lastKey === k && now - this.lastKeyAt < 600;
      this.lastKey = hit ? "" : k;
      this.lastKeyAt = now;
      return hit;
    };
    const i = this.index(id);
    const key = e.key;
    let handled = true;
    if (key === "Enter" && e.shiftKey) this.runAndAdvance(id);
    else if (key === "Enter" && (e.ctrlKey || e.metaKey)) this.runCell(id);
    else if (key === "Enter" && e.altKey) this.runAndInsert(id);
    else if (key === "Enter") ui?.edit();
    else if (e.ctrlKey || e.metaKey || e.altKey) handled = false;
    else if (key === "ArrowUp" || key === "k") this.selectAt(i - 1);
    else if (key === "ArrowDown" || key === "j") this.selectAt(i + 1);
    else if (!this.canEdit) handled = false;
    else if (key === "a") this.insertAt(i, "code");
    else if (key === "b") this.insertAt(i + 1, "code");
    else if (key === "m") this.setKind(id, "markdown");
    else if (key === "y") this.setKind(id, "code");
    else if (key === "r") this.setKind(id, "raw");
    else if (key === "q" && this.language.sqlCells) this.setKind(id, "sql");
    else if (key === "d") {
      if (twice("d")) this.deleteCell(id);
    } else if (key === "i") {
      if (twice("i")) this.send({ type: "interrupt" });
    } else if (key === "0") {
      if (twice("0")) this.send({ type: "restart" });
    } else if (!this.cellKeys.handle(key, id)) handled = false;
    if (handled) e.preventDefault();
  }

  private selectAt(i: number): void {
    const id = this.order[Math.max(0, Math.min(i, this.order.length - 1))];
    if (!id) return;
    this.select(id, false);
    const ui = this.cells.get(id);
    ui?.root.scrollIntoView({ block: "nearest" });
    ui?.root.focus();
  }

  // ---- views ------------------------------------------------------------------------------------

  private buildToolbar(): void {
    const t = this.toolbar;
    t.replaceChildren();
    // On a phone the less frequent controls fold behind "More" (style.css), so the toolbar
    // keeps to two rows.
    const more = h("div", { class: "toolbar-more", attrs: { id: "toolbar-more" } });
    const toggle = button("⋯ More", "More actions", () => {
      const open = t.classList.toggle("open");
      toggle.setAttribute("aria-expanded", String(open));
    }, "more");
    toggle.setAttribute("aria-expanded", "false");
    toggle.setAttribute("aria-controls", "toolbar-more");
    if (this.welcome && !this.canEdit) {
      t.append(h("span", { class: "readonly-tag", text: "Read-only" }));
    } else if (this.welcome) {
      const sel = () => this.selected;
      t.append(
        button("▶ Run", "Run the selected cell and select the next (Shift-Enter)", () => {
          const id = sel();
          if (id) this.runAndAdvance(id);
        }, "run"),
        button("Run all", "Run every code cell in order", () => this.runAll(), "run-all"),
        this.staleButton,
        button("■ Interrupt", "Interrupt the running cell and drop the queue (I, I)", () => this.send({ type: "interrupt" }), "interrupt"),
        button("↻ Restart", "Restart the kernel (0, 0)", () => this.send({ type: "restart" }), "restart"),
        h("span", { class: "sep" }),
        button("+ Code", "Insert a code cell below the selected one (B)", () => this.insertAt(this.selected ? this.index(this.selected) + 1 : this.order.length, "code"), "insert-code"),
        button("+ SQL", "Insert a SQL cell below the selected one (a DuckDB query over DataFrames and workspace files; Q turns a cell into SQL)", () => this.insertSql(this.selected ? this.index(this.selected) + 1 : this.order.length), "insert-sql"),
      );
      more.append(
        button("+ Markdown", "Insert a markdown cell below the selected one", () => this.insertAt(this.selected ? this.index(this.selected) + 1 : this.order.length, "markdown"), "insert-markdown"),
        h("span", { class: "sep" }),
        this.modeSelect,
        this.ruleSelect,
        h("span", { class: "sep" }),
        button("Import", "Replace this notebook with an .ipynb file", () => this.fileInput.click(), "import"),
      );
    }
    if (this.welcome) {
      more.append(button("Export", "Download this notebook as .ipynb", () => void this.exportFile(), "export"));
      t.append(this.files.toggle);
    }
    if (more.childElementCount) t.append(toggle, more);
    t.append(h("span", { class: "spacer" }), this.queueEl);
  }

  private refreshToolbar(): void {
    this.modeSelect.value = this.reactivity;
    this.ruleSelect.value = this.graphRule;
    let stale = 0;
    let lost = 0;
    for (const r of this.rt.values()) {
      if (r.state === "stale") stale += 1;
      if (r.cause?.kind === "not_in_kernel") lost += 1;
    }
    this.staleButton.textContent = stale ? `Run stale (${stale})` : "Run stale";
    this.staleButton.disabled = stale === 0;
    this.showLostResults(lost);
    for (const b of Array.from(this.cellsEl.querySelectorAll<HTMLButtonElement>("button.delete-cell"))) b.disabled = this.order.length <= 1;
  }

  private showLink(state: LinkState, detail: string): void {
    const text = { connecting: "connecting", connected: "connected", reconnecting: "reconnecting", refused: "refused" }[state];
    this.linkEl.className = `link link-${state}`;
    this.linkEl.textContent = text;
    this.linkEl.title = detail || text;
    this.root.classList.toggle("offline", state !== "connected");
    if (state === "refused") this.banner(`Middleman refused this page: ${detail}. Open the document again from where you got its link.`, "error", "refused");
  }

  private showKernel(): void {
    const name = this.welcome?.kernel.display_name ?? "kernel";
    this.kernelEl.className = `kernel kernel-${this.kernelState}`;
    this.kernelEl.textContent = `${name}: ${this.kernelState}`;
    this.kernelEl.title = this.kernelReason || `the kernel is ${this.kernelState}`;
    if (this.kernelState === "dead") {
      this.banner(`The kernel is dead${this.kernelReason ? `: ${this.kernelReason}` : ""}. Restart it to go on.`, "error", "kernel-dead");
    } else {
      this.bannerEl.querySelector('[data-key="kernel-dead"]')?.remove();
    }
  }

  private showQueue(): void {
    const running = this.queue.find((e) => e.running);
    const waiting = this.queue.filter((e) => !e.running);
    this.queueEl.replaceChildren();
    if (!running && waiting.length === 0) {
      this.queueEl.textContent = "queue empty";
      this.queueEl.classList.remove("busy");
      return;
    }
    this.queueEl.classList.add("busy");
    const where = (e: ExecutionSummary) => (e.cell_id ? this.label(e.cell_id) : "console");
    if (running) this.queueEl.append(h("span", { class: "q-running", text: `running ${where(running)} (${running.by})` }));
    if (waiting.length) {
      this.queueEl.append(h("span", { text: ` · ${waiting.length} waiting: ` }));
      this.queueEl.append(h("span", { class: "q-waiting", text: waiting.slice(0, 6).map(where).join(", ") + (waiting.length > 6 ? "…" : "") }));
    }
  }

  private showPeople(): void {
    const me = this.welcome?.client;
    const people = Array.from(this.presence.values());
    this.peopleEl.replaceChildren(
      ...people
        .filter((p) => p.client !== me)
        .map((p) =>
          h("span", {
            class: `avatar ${colorClass(p.color)}${p.role === "viewer" ? " viewer" : ""}`,
            text: initials(p.name),
            title: `${p.name} (${p.role})${p.cell_id ? ` at ${this.label(p.cell_id)}` : ""}`,
            attrs: { "data-name": p.name },
          }),
        ),
    );
    const others = people.filter((p) => p.client !== me);
    this.peopleEl.dataset.count = String(others.length);
    for (const [id, ui] of this.cells) ui.showPeople(others.filter((p) => p.cell_id === id));
    if (this.welcome) {
      const mine = people.find((p) => p.client === me);
      if (mine) this.meEl.querySelector(".me-avatar")?.classList.add(colorClass(mine.color));
    }
  }

  private refreshDeps(): void {
    for (const [id, ui] of this.cells) {
      if (!runs(ui.kind)) {
        ui.showDeps("", "");
        continue;
      }
      const g = this.graph.get(id);
      if (!g) {
        ui.showDeps("", "");
        continue;
      }
      const parts: string[] = [];
      if (g.defs.length) parts.push(`defines ${g.defs.join(", ")}`);
      if (g.parents.length) parts.push(`uses ${g.parents.map((p) => this.label(p)).join(", ")}`);
      else if (g.refs.length) parts.push(`reads ${g.refs.join(", ")}`);
      if (g.children.length) parts.push(`feeds ${g.children.map((c) => this.label(c)).join(", ")}`);
      let error = "";
      if (g.error?.kind === "syntax") error = `Syntax error: ${g.error.message}`;
      else if (g.error?.kind === "multiple_definitions")
        error = `${g.error.names.join(", ")} also defined in ${g.error.cells.filter((c) => c !== id).map((c) => this.label(c)).join(", ")}: under "one definition" each name is defined in one cell (switch to "nearest above" to read each name from the nearest cell above)`;
      else if (g.error?.kind === "cycle") error = `Dependency cycle with ${g.error.cells.filter((c) => c !== id).map((c) => this.label(c)).join(", ")}`;
      if (g.warnings?.length) parts.push(g.warnings.join("; "));
      ui.showDeps(parts.join(" · "), error);
    }
  }

  private showPrompt(focus: boolean): void {
    const input = this.pendingInput;
    for (const ui of this.cells.values()) if (ui.outputs.hasPrompt && (!input || this.execCell.get(input.execution_id) !== ui.id)) ui.outputs.hidePrompt();
    if (!input) return;
    const cell = this.execCell.get(input.execution_id);
    const ui = cell ? this.cells.get(cell) : undefined;
    if (!ui || ui.outputs.promptFor === input.execution_id) return;
    const answer = this.canEdit
      ? (value: string) => {
          this.myAnswers.set(input.execution_id, value);
          this.send({ type: "input_reply", execution_id: input.execution_id, value });
        }
      : undefined;
    // Focus goes to the prompt only when this page asked for the run (then even from an editor):
    // someone else's input() never takes the keyboard away from what this person is doing.
    ui.outputs.showPrompt(input, answer, focus);
    if (focus) ui.root.scrollIntoView({ block: "nearest" });
  }

  /** One banner per `key` (a new one replaces it), with optional action buttons. */
  banner(text: string, kind: string, key: string, actions: HTMLElement[] = []): void {
    this.bannerEl.querySelector(`[data-key="${key}"]`)?.remove();
    const close = button("×", "Dismiss", () => el.remove(), "dismiss");
    const el = h("div", { class: `banner banner-${kind}`, attrs: { "data-key": key, role: "status" } }, [h("span", { text }), ...actions, close]);
    this.bannerEl.append(el);
  }

  /** A passing message; `cell` puts a "cell n" link in front and keeps the toast off that cell. */
  toast(text: string, kind: ToastKind, cell?: string): void {
    this.toasts.show(text, kind, cell);
  }
}
