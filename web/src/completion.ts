// Completion from the kernel (`complete`), in CodeMirror's autocompletion: as a name, `name.` or
// `name["` is typed (after a pause), and on Tab after a non-space character. SQL cells ask the
// same way; Middleman completes their SQL (keywords, DataFrames in scope, their columns).
//
// CodeMirror keeps an answer only for the text it was asked about: typing more of the same word
// filters it locally (`validFor`), any other change drops it and asks again. Refusals (the kernel
// is busy without a subshell, too many questions) are silent while typing; after Tab a hint says
// why nothing came.
import {
  acceptCompletion,
  autocompletion,
  closeCompletion,
  type Completion,
  type CompletionContext,
  type CompletionResult,
  completionStatus,
  currentCompletions,
  startCompletion,
} from "@codemirror/autocomplete";
import { syntaxTree } from "@codemirror/language";
import type { EditorState } from "@codemirror/state";
import type { EditorView } from "@codemirror/view";
import type { Assist } from "./assist";
import { h } from "./dom";
import { refusalHint, showHint } from "./inspect";
import type { Completion as KernelMatch } from "./protocol";

/** How long typing pauses before the kernel is asked. */
const TYPING_PAUSE_MS = 200;

/**
 * What is worth asking about while typing: a name, `name.` (or JavaScript's `name?.`), or a key
 * after `[` and a quote; and what typing more of keeps a list valid. Names are letters, digits
 * and `_`, plus the mode's own word characters (JavaScript's `$`).
 */
interface Patterns {
  name: RegExp;
  attribute: RegExp;
  key: RegExp;
  validFor: RegExp;
}

const patternCache = new Map<string, Patterns>();

function patterns(state: EditorState, pos: number): Patterns {
  const extra = state.languageDataAt<string>("wordChars", pos).join("").replace(/[\\\]^-]/g, "\\$&");
  let p = patternCache.get(extra);
  if (!p) {
    const w = `\\p{L}\\p{N}_${extra}`;
    p = {
      name: new RegExp(`(?:^|[^${w}])[\\p{L}_${extra}][${w}]*$`, "u"),
      attribute: new RegExp(`(?:[${w})\\]])\\??\\.$`, "u"),
      key: new RegExp(`\\[\\s*["'][${w} .-]*$`, "u"),
      validFor: new RegExp(`^["']?[${w}]*$`, "u"),
    };
    patternCache.set(extra, p);
  }
  return p;
}

function worthAsking(ctx: CompletionContext): boolean {
  const line = ctx.state.doc.lineAt(ctx.pos);
  const before = line.text.slice(Math.max(0, ctx.pos - line.from - 200), ctx.pos - line.from);
  const node = syntaxTree(ctx.state).resolveInner(ctx.pos, -1).name;
  const p = patterns(ctx.state, ctx.pos);
  if (/Comment/.test(node)) return false;
  if (/String/.test(node)) return p.key.test(before);
  return p.name.test(before) || p.attribute.test(before) || p.key.test(before);
}

function option(m: KernelMatch): Completion {
  return {
    label: m.text,
    // The kernel's kind (jedi says `<unknown>` when it does not know).
    type: m.type && !m.type.startsWith("<") ? m.type : undefined,
    detail: m.signature || undefined,
    // Private names after public ones, as IPython orders them (and `_` means private to
    // JavaScript's conventions too).
    boost: m.text.startsWith("__") ? -2 : m.text.startsWith("_") ? -1 : 0,
  };
}

function source(ask: Assist["ask"], cellId: string) {
  return async (ctx: CompletionContext): Promise<CompletionResult | null> => {
    if (!ctx.explicit && !worthAsking(ctx)) return null;
    const answer = await ask({ type: "complete", cell_id: cellId, code: ctx.state.doc.toString(), cursor: ctx.pos });
    // Dropped if the text changed meanwhile in a way CodeMirror cannot map, or the person left.
    if (ctx.aborted || !ctx.view?.hasFocus) return null;
    if (answer.kind === "refused" && ctx.explicit) showHint(ctx.view, refusalHint(answer));
    if (answer.kind !== "complete") return null;
    const from = Math.min(answer.cursor_start, ctx.pos);
    // While typing, a list that only repeats the word typed is not worth opening.
    const typed = ctx.state.sliceDoc(from, ctx.pos);
    if (answer.matches.every((m) => !ctx.explicit && m.text === typed)) return null;
    const length = ctx.state.doc.length;
    return {
      from,
      to: Math.min(Math.max(answer.cursor_end, ctx.pos), length),
      options: answer.matches.map(option),
      validFor: patterns(ctx.state, ctx.pos).validFor,
    };
  };
}

/** Kernel completion for the cell `cellId`. */
export function kernelCompletion(ask: Assist["ask"], cellId: string) {
  return autocompletion({
    override: [source(ask, cellId)],
    activateOnTypingDelay: TYPING_PAUSE_MS,
    // The kernel's kinds are not CodeMirror's icon names: shown as words instead.
    icons: false,
    addToOptions: [
      {
        render: (c) => (c.type ? h("span", { class: "cm-completionKind", text: c.type }) : null),
        position: 90,
      },
    ],
  });
}

/** Whether a list of completions is on screen. */
function listOpen(state: EditorState): boolean {
  return completionStatus(state) === "active" && currentCompletions(state).length > 0;
}

/** Escape: closes the list if one is on screen (a question still pending is left to run out). */
export function closeList(view: EditorView): boolean {
  return listOpen(view.state) && closeCompletion(view);
}

/**
 * Tab: accepts the open list's choice, or asks for completions after a non-space character;
 * elsewhere (a line's start, after whitespace, a selection) it is left to indentation.
 */
export function tabCompletes(view: EditorView): boolean {
  // Within the list's first moments acceptCompletion declines; Tab then does nothing.
  if (listOpen(view.state)) return acceptCompletion(view) || true;
  const sel = view.state.selection.main;
  if (!sel.empty || sel.head === 0) return false;
  const before = view.state.sliceDoc(sel.head - 1, sel.head);
  if (/\s/.test(before)) return false;
  return startCompletion(view);
}
