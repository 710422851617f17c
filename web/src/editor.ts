// A cell's CodeMirror 6 editor bound to its Y.Text (y-codemirror.next's sync and undo), with
// collaborators' cursors and selections from Yjs awareness. The remote-selection decorations
// are this project's own: y-codemirror.next's put colours in style attributes, which the CSP
// refuses; these use classes whose colours live in a constructed style sheet. For people who may
// edit, the kernel completes (completion.ts) and inspects (inspect.ts) what they type. Code cells
// are in the language of the document's kernel (language.ts): Python, TypeScript or JavaScript.
import { closeBrackets, closeBracketsKeymap } from "@codemirror/autocomplete";
import { defaultKeymap, indentWithTab } from "@codemirror/commands";
import { PostgreSQL, sql } from "@codemirror/lang-sql";
import { bracketMatching, indentOnInput, indentUnit, syntaxHighlighting } from "@codemirror/language";
import { highlightSelectionMatches, searchKeymap } from "@codemirror/search";
import { Compartment, EditorState, type Extension, Prec, type Range, RangeSet } from "@codemirror/state";
import { Decoration, type DecorationSet, drawSelection, dropCursor, EditorView, highlightSpecialChars, keymap, placeholder, ViewPlugin, type ViewUpdate, WidgetType } from "@codemirror/view";
import type { Awareness } from "y-protocols/awareness";
import { yCollab, yUndoManagerKeymap } from "y-codemirror.next";
import * as Y from "yjs";
import type { Assist } from "./assist";
import { closeList, kernelCompletion, tabCompletes } from "./completion";
import { colorClass, safeColor } from "./dom";
import { readableHighlight } from "./highlight";
import { closeTip, inIndentation, inspectAt, inspection } from "./inspect";
import { type CodeLanguage, codeExtension } from "./language";
import type { CellKind } from "./protocol";

class CaretWidget extends WidgetType {
  constructor(
    readonly color: string,
    readonly name: string,
  ) {
    super();
  }
  toDOM(): HTMLElement {
    const caret = document.createElement("span");
    caret.className = `remote-caret ${colorClass(this.color)}`;
    caret.append("\u2060");
    const label = document.createElement("span");
    label.className = "remote-caret-label";
    label.textContent = this.name;
    caret.append(label, "\u2060");
    return caret;
  }
  eq(other: CaretWidget): boolean {
    return other.color === this.color && other.name === this.name;
  }
  ignoreEvent(): boolean {
    return true;
  }
}

interface CursorState {
  anchor: unknown;
  head: unknown;
}

function remoteSelections(ytext: Y.Text, awareness: Awareness): Extension {
  return ViewPlugin.fromClass(
    class {
      decorations: DecorationSet = RangeSet.empty;
      private live = true;
      private readonly listener: (changes: { added: number[]; updated: number[]; removed: number[] }) => void;
      constructor(readonly view: EditorView) {
        this.listener = ({ added, updated, removed }) => {
          const me = awareness.doc.clientID;
          if ([...added, ...updated, ...removed].some((c) => c !== me)) {
            // Recompute on the next frame, outside whatever update is running.
            requestAnimationFrame(() => {
              if (this.live) this.view.dispatch({});
            });
          }
        };
        awareness.on("change", this.listener);
        this.decorations = this.build();
      }
      destroy(): void {
        this.live = false;
        awareness.off("change", this.listener);
      }
      update(update: ViewUpdate): void {
        const local = awareness.getLocalState();
        if (local !== null && update.view.hasFocus && (update.selectionSet || update.focusChanged || update.docChanged)) {
          const sel = update.state.selection.main;
          const anchor = Y.createRelativePositionFromTypeIndex(ytext, sel.anchor);
          const head = Y.createRelativePositionFromTypeIndex(ytext, sel.head);
          const cur = local.cursor as CursorState | null | undefined;
          const same =
            cur != null &&
            Y.compareRelativePositions(Y.createRelativePositionFromJSON(cur.anchor), anchor) &&
            Y.compareRelativePositions(Y.createRelativePositionFromJSON(cur.head), head);
          if (!same) awareness.setLocalStateField("cursor", { anchor, head });
        }
        this.decorations = this.build();
      }
      build(): DecorationSet {
        const doc = ytext.doc;
        if (!doc) return RangeSet.empty;
        const ranges: Range<Decoration>[] = [];
        const length = this.view.state.doc.length;
        awareness.getStates().forEach((state, client) => {
          if (client === awareness.doc.clientID) return;
          const cursor = state.cursor as CursorState | null | undefined;
          if (!cursor || cursor.anchor == null || cursor.head == null) return;
          let anchor, head;
          try {
            anchor = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(cursor.anchor), doc);
            head = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(cursor.head), doc);
          } catch {
            return;
          }
          if (!anchor || !head || anchor.type !== ytext || head.type !== ytext) return;
          const user = (state.user ?? {}) as { name?: unknown; color?: unknown };
          const color = safeColor(user.color);
          const name = typeof user.name === "string" ? user.name.slice(0, 40) : "someone";
          const from = Math.min(anchor.index, head.index, length);
          const to = Math.min(Math.max(anchor.index, head.index), length);
          if (from < to) ranges.push(Decoration.mark({ class: `remote-selection ${colorClass(color)}` }).range(from, to));
          ranges.push(Decoration.widget({ widget: new CaretWidget(color, name), side: head.index > anchor.index ? -1 : 1 }).range(Math.min(head.index, length)));
        });
        return Decoration.set(ranges, true);
      }
    },
    { decorations: (v) => v.decorations },
  );
}

/**
 * Whether focus is arriving by the Tab key (keyboard navigation) rather than a click or a
 * command. An editor entered this way lets Tab move focus on (WCAG 2.1.2, no keyboard trap)
 * instead of indenting the shared source; Enter in command mode or a click makes Tab indent.
 */
let tabPressedAt = 0;
document.addEventListener("keydown", (e) => {
  if (e.key === "Tab") tabPressedAt = Date.now();
}, true);
document.addEventListener("mousedown", () => {
  tabPressedAt = 0;
}, true);
const focusByTab = () => Date.now() - tabPressedAt < 500;

/** The page's style nonce (Middleman puts a fresh one in each page and its CSP). */
const cspNonce = document.querySelector<HTMLMetaElement>('meta[name="csp-nonce"]')?.content ?? "";

export interface EditorOptions {
  ytext: Y.Text;
  awareness: Awareness;
  kind: CellKind;
  /** The language of code cells (the document's kernel's). */
  language: CodeLanguage;
  readOnly: boolean;
  /** Key bindings that take precedence (run, modes). */
  keys: Extension;
  onFocus: () => void;
  /** The cell's id and the kernel to ask for completion and inspection (editors only). */
  assist?: { cellId: string; ask: Assist["ask"] };
}

/**
 * Tab completes after a non-space character (else indents), Shift-Tab inspects outside a line's
 * indentation (else dedents), Escape closes a list or tooltip on screen before it leaves the
 * editor. These come before the cell's keys; the completion's own keys (arrows, Enter, and an
 * Escape that would also cancel a pending question) after them.
 */
function assistKeys(cellId: string, ask: Assist["ask"]): Extension {
  return Prec.highest(
    keymap.of([
      { key: "Tab", run: tabCompletes },
      { key: "Shift-Tab", run: (view) => !inIndentation(view.state) && inspectAt(view, ask, cellId) },
      { key: "Escape", run: (view) => closeList(view) || closeTip(view) },
    ]),
  );
}

export class CellEditor {
  readonly view: EditorView;
  private readonly language = new Compartment();
  private readonly placeholder = new Compartment();
  private readonly readOnly: boolean;
  private kind: CellKind;
  private code: CodeLanguage;

  constructor(parent: HTMLElement, opts: EditorOptions) {
    this.readOnly = opts.readOnly;
    this.kind = opts.kind;
    this.code = opts.language;
    const assist = opts.readOnly ? undefined : opts.assist;
    const undo = new Y.UndoManager(opts.ytext);
    this.view = new EditorView({
      parent,
      state: EditorState.create({
        doc: opts.ytext.toString(),
        extensions: [
          assist ? assistKeys(assist.cellId, assist.ask) : [],
          opts.keys,
          assist ? [kernelCompletion(assist.ask, assist.cellId), inspection] : [],
          EditorView.cspNonce.of(cspNonce),
          highlightSpecialChars(),
          drawSelection(),
          dropCursor(),
          indentOnInput(),
          // Four spaces, unless a code cell's language says otherwise (language.ts).
          indentUnit.of("    "),
          bracketMatching(),
          closeBrackets(),
          highlightSelectionMatches(),
          syntaxHighlighting(readableHighlight, { fallback: true }),
          keymap.of([...closeBracketsKeymap, ...yUndoManagerKeymap, ...searchKeymap, indentWithTab, ...defaultKeymap]),
          this.language.of(CellEditor.languageFor(opts.kind, opts.language)),
          yCollab(opts.ytext, null, { undoManager: undo }),
          remoteSelections(opts.ytext, opts.awareness),
          EditorState.readOnly.of(opts.readOnly),
          EditorView.editable.of(!opts.readOnly),
          EditorView.contentAttributes.of({ "aria-label": "cell source", spellcheck: "false", autocorrect: "off", autocapitalize: "off" }),
          // A viewer's editor is not editable, but stays reachable by keyboard (to read and scroll).
          opts.readOnly ? EditorView.contentAttributes.of({ tabindex: "0" }) : [],
          this.placeholder.of(CellEditor.placeholderFor(opts.kind, opts.language, opts.readOnly)),
          EditorView.domEventHandlers({
            focus: (_e, view) => {
              view.setTabFocusMode(focusByTab());
              opts.onFocus();
              return false;
            },
            mousedown: (_e, view) => {
              view.setTabFocusMode(false);
              return false;
            },
          }),
        ],
      }),
    });
  }

  static languageFor(kind: CellKind, code: CodeLanguage): Extension {
    // DuckDB's SQL is closest to PostgreSQL's among lang-sql's dialects.
    return kind === "code" ? codeExtension(code) : kind === "sql" ? sql({ dialect: PostgreSQL }) : EditorView.lineWrapping;
  }

  static placeholderFor(kind: CellKind, code: CodeLanguage, readOnly: boolean): Extension {
    if (readOnly) return [];
    const text = { code: `${code.label} code`, sql: "SQL (DuckDB): -- result: name, then a query", markdown: "Markdown text", raw: "Raw text" }[kind];
    return placeholder(text);
  }

  setKind(kind: CellKind): void {
    this.kind = kind;
    this.reconfigure();
  }

  /** The document's kernel, and so its code cells' language, changed. */
  setLanguage(code: CodeLanguage): void {
    if (code.name === this.code.name && code.label === this.code.label) return;
    this.code = code;
    this.reconfigure();
  }

  private reconfigure(): void {
    this.view.dispatch({
      effects: [
        this.language.reconfigure(CellEditor.languageFor(this.kind, this.code)),
        this.placeholder.reconfigure(CellEditor.placeholderFor(this.kind, this.code, this.readOnly)),
      ],
    });
  }

  focus(atEnd = false): void {
    this.view.focus();
    if (atEnd) this.view.dispatch({ selection: { anchor: this.view.state.doc.length } });
  }

  /** Tab moves focus out of the editor (true) or indents (false). */
  setTabMovesFocus(on: boolean): void {
    this.view.setTabFocusMode(on);
  }

  destroy(): void {
    this.view.destroy();
  }
}
