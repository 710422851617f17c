// Inspection, as Jupyter's Shift-Tab (IPython's `?`): what the kernel knows of the name at the
// cursor (IPython: its signature and docstring), asked of it (`inspect`) and shown in a tooltip
// under the cursor with its ANSI colours. The tooltip goes away with Escape, any edit, a caret
// move, or leaving the editor.
// The same tooltip carries the short hints of explicit requests that got no answer.
import { type EditorState, StateEffect, StateField } from "@codemirror/state";
import { EditorView, showTooltip, type Tooltip } from "@codemirror/view";
import { renderAnsi } from "./ansi";
import type { Assist } from "./assist";
import { h } from "./dom";
import type { AssistAnswer } from "./protocol";

const setTip = StateEffect.define<Tooltip | null>();

const tipField = StateField.define<Tooltip | null>({
  create: () => null,
  update(tip, tr) {
    for (const e of tr.effects) if (e.is(setTip)) return e.value;
    return tip && (tr.docChanged || tr.selection) ? null : tip;
  },
  provide: (f) => showTooltip.from(f),
});

/** The tooltip's state, and its closing when the editor loses focus. */
export const inspection = [tipField, EditorView.focusChangeEffect.of((state, focusing) => (!focusing && state.field(tipField) ? setTip.of(null) : null))];

function tip(pos: number, fill: (dom: HTMLElement) => void, cls: string): Tooltip {
  return {
    pos,
    create: () => {
      const dom = h("div", { class: `assist-tip ${cls}`, attrs: { role: "tooltip" } });
      fill(dom);
      // Scrolling it with the wheel is fine; a click must not take focus from the editor (which
      // would close it).
      dom.addEventListener("mousedown", (e) => e.preventDefault());
      return { dom };
    },
  };
}

/** A one-line hint at the cursor (a question that got no answer). */
export function showHint(view: EditorView, text: string): void {
  const pos = view.state.selection.main.head;
  view.dispatch({ effects: setTip.of(tip(pos, (dom) => (dom.textContent = text), "assist-hint")) });
}

/** Closes the tooltip; false when none was open. */
export function closeTip(view: EditorView): boolean {
  if (!view.state.field(tipField, false)) return false;
  view.dispatch({ effects: setTip.of(null) });
  return true;
}

/** What a refusal means to the person who asked (only explicit requests show it). */
export function refusalHint(a: Extract<AssistAnswer, { kind: "refused" }>): string {
  switch (a.reason) {
    case "busy":
      return "No answer: the kernel is running a cell.";
    case "no_kernel":
      return "No answer: the kernel is not running.";
    case "rate_limited":
      return "Too many questions at once: try again.";
    case "timeout":
      return "The kernel did not answer in time.";
    default:
      return `No answer: ${a.message}`;
  }
}

/** Whether the caret is in a line's leading whitespace (where Shift-Tab dedents instead). */
export function inIndentation(state: EditorState): boolean {
  const sel = state.selection.main;
  if (!sel.empty) return true;
  const line = state.doc.lineAt(sel.head);
  return /^\s*$/.test(line.text.slice(0, sel.head - line.from));
}

/**
 * Asks the kernel about the name at the caret and shows the answer; an answer that arrives after
 * the text or the caret changed, or the editor lost focus, is dropped.
 */
export function inspectAt(view: EditorView, ask: Assist["ask"], cellId: string): boolean {
  const { doc } = view.state;
  const pos = view.state.selection.main.head;
  void ask({ type: "inspect", cell_id: cellId, code: doc.toString(), cursor: pos, detail: 0 }).then((a) => {
    if (!view.hasFocus || view.state.doc !== doc || view.state.selection.main.head !== pos) return;
    if (a.kind === "inspect" && a.found && a.text) {
      view.dispatch({ effects: setTip.of(tip(pos, (dom) => renderAnsi(a.text, dom.appendChild(h("pre"))), "assist-doc")) });
    } else if (a.kind === "inspect") showHint(view, "Nothing is known about this name.");
    else if (a.kind === "refused") showHint(view, refusalHint(a));
  });
  return true;
}
