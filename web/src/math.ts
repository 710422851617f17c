// TeX in markdown: `$…$`, `\(…\)` inline and `$$…$$`, `\[…\]` displayed, rendered by KaTeX.
// Math is taken out of the source before marked sees it (so `_` and `*` in TeX are not read as
// emphasis), stands in the markdown as a private-use placeholder, and is rendered into DOM nodes
// after DOMPurify. `katex.render` builds elements and sets their styles through CSSOM, which
// the page's CSP allows (HTML strings with style attributes would be refused).
import katex from "katex";

export interface MathPiece {
  tex: string;
  display: boolean;
  /** The source as written, delimiters included (shown when the TeX is bad). */
  raw: string;
}

const OPEN = "\uE000";
const CLOSE = "\uE001";
const PLACEHOLDER = /\uE000(\d+)\uE001/g;
const FENCE = /^ {0,3}(`{3,}|~{3,})/;

const isSpace = (c: string | undefined) => c === undefined || /\s/.test(c);

/** The closing `$` of inline math opened at `from`, or -1. */
function closingDollar(src: string, from: number): number {
  for (let j = from; j < src.length; j++) {
    const c = src[j];
    if (c === "\\") {
      j++;
      continue;
    }
    // Not across a blank line, nor into a code span.
    if ((c === "\n" && src[j + 1] === "\n") || c === "`") return -1;
    if (c === "$") {
      if (isSpace(src[j - 1]) || /[0-9]/.test(src[j + 1] ?? "")) return -1;
      return j;
    }
  }
  return -1;
}

/**
 * The source with each formula replaced by a placeholder, and the formulas. Fenced code blocks
 * and code spans are left alone; `\$` stays a literal dollar; an opening `$` followed by a space,
 * or a closing one preceded by a space or followed by a digit, is not math (`$5 and $6`).
 */
export function extractMath(src: string): { text: string; pieces: MathPiece[] } {
  const pieces: MathPiece[] = [];
  let out = "";
  let fence: string | null = null;
  let i = 0;
  let lineStart = true;
  const take = (tex: string, display: boolean, end: number) => {
    pieces.push({ tex, display, raw: src.slice(i, end) });
    out += `${OPEN}${pieces.length - 1}${CLOSE}`;
    i = end;
  };
  while (i < src.length) {
    if (lineStart) {
      const eol = src.indexOf("\n", i);
      const end = eol < 0 ? src.length : eol + 1;
      const line = src.slice(i, end);
      const m = FENCE.exec(line);
      if (fence !== null || m) {
        if (fence === null && m) fence = m[1];
        else if (fence !== null && m && m[1][0] === fence[0] && m[1].length >= fence.length && line.trim() === m[1]) fence = null;
        out += line;
        i = end;
        continue;
      }
      lineStart = false;
    }
    const c = src[i];
    if (c === "\n") {
      out += c;
      i++;
      lineStart = true;
    } else if (c === "\\") {
      const next = src[i + 1];
      const close = next === "(" ? "\\)" : next === "[" ? "\\]" : "";
      const end = close ? src.indexOf(close, i + 2) : -1;
      if (end > i + 2) take(src.slice(i + 2, end), next === "[", end + 2);
      else {
        out += src.slice(i, i + 2);
        i += 2;
      }
    } else if (c === "`") {
      let k = i;
      while (src[k] === "`") k++;
      const run = src.slice(i, k);
      let j = src.indexOf(run, k);
      while (j >= 0 && src[j + run.length] === "`") {
        let e = j;
        while (src[e] === "`") e++;
        j = src.indexOf(run, e);
      }
      const end = j < 0 ? k : j + run.length;
      out += src.slice(i, end);
      i = end;
    } else if (c === "$" && src[i + 1] === "$") {
      const end = src.indexOf("$$", i + 2);
      if (end > i + 2 && src.slice(i + 2, end).trim()) take(src.slice(i + 2, end), true, end + 2);
      else {
        out += "$$";
        i += 2;
      }
    } else if (c === "$" && !isSpace(src[i + 1])) {
      const end = closingDollar(src, i + 1);
      if (end > i + 1) take(src.slice(i + 1, end), false, end + 1);
      else {
        out += c;
        i++;
      }
    } else {
      out += c;
      i++;
    }
  }
  return { text: out, pieces };
}

/** One formula as DOM; bad TeX shows its source, marked, with KaTeX's message as a title. */
export function mathElement(piece: MathPiece): HTMLElement {
  const el = document.createElement("span");
  try {
    katex.render(piece.tex, el, { displayMode: piece.display, throwOnError: true, trust: false, strict: "ignore", maxSize: 50, maxExpand: 500 });
    el.className = piece.display ? "math math-display" : "math math-inline";
  } catch (e) {
    el.className = "math math-error";
    el.textContent = piece.raw;
    el.title = e instanceof Error ? e.message : String(e);
  }
  return el;
}

/** Replaces the placeholders in `root`'s text with rendered formulas (as source inside code). */
export function insertMath(root: Node, pieces: MathPiece[]): void {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const hits: Text[] = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) if (n.nodeValue?.includes(OPEN)) hits.push(n as Text);
  for (const node of hits) {
    const text = node.nodeValue ?? "";
    const inCode = !!node.parentElement?.closest("code, pre");
    const parts: (Node | string)[] = [];
    let last = 0;
    for (const m of text.matchAll(PLACEHOLDER)) {
      const piece = pieces[Number(m[1])];
      parts.push(text.slice(last, m.index));
      if (piece) parts.push(inCode ? piece.raw : mathElement(piece));
      last = (m.index ?? 0) + m[0].length;
    }
    parts.push(text.slice(last));
    node.replaceWith(...parts.filter((p) => p !== ""));
  }
}
