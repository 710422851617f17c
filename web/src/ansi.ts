// ANSI SGR escape sequences (colours, bold, italic, underline) to DOM spans, as kernels print
// them in streams and tracebacks. Other escape sequences are dropped. Colours use classes for the
// 16 standard colours and CSSOM properties for 256-colour and true-colour codes.

interface Style {
  fg?: string | number;
  bg?: string | number;
  bold?: boolean;
  dim?: boolean;
  italic?: boolean;
  underline?: boolean;
  inverse?: boolean;
}

const NAMES = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

function xterm256(n: number): string {
  if (n < 16) {
    return "";
  }
  if (n < 232) {
    const i = n - 16;
    const steps = [0, 95, 135, 175, 215, 255];
    const r = steps[Math.floor(i / 36)], g = steps[Math.floor(i / 6) % 6], b = steps[i % 6];
    return `rgb(${r}, ${g}, ${b})`;
  }
  const v = 8 + (n - 232) * 10;
  return `rgb(${v}, ${v}, ${v})`;
}

function colorFrom(params: number[], i: number): { color?: string | number; used: number } {
  const mode = params[i + 1];
  if (mode === 5 && params.length > i + 2) {
    const n = params[i + 2];
    if (n >= 0 && n < 16) return { color: n, used: 2 };
    if (n >= 16 && n < 256) return { color: xterm256(n), used: 2 };
    return { used: 2 };
  }
  if (mode === 2 && params.length > i + 4) {
    const [r, g, b] = params.slice(i + 2, i + 5).map((x) => Math.max(0, Math.min(255, x)));
    return { color: `rgb(${r}, ${g}, ${b})`, used: 4 };
  }
  return { used: 0 };
}

function apply(style: Style, params: number[]): Style {
  const s = { ...style };
  if (params.length === 0) params = [0];
  for (let i = 0; i < params.length; i++) {
    const p = params[i];
    if (p === 0) {
      for (const k of Object.keys(s) as (keyof Style)[]) delete s[k];
    } else if (p === 1) s.bold = true;
    else if (p === 2) s.dim = true;
    else if (p === 3) s.italic = true;
    else if (p === 4) s.underline = true;
    else if (p === 7) s.inverse = true;
    else if (p === 22) {
      s.bold = false;
      s.dim = false;
    } else if (p === 23) s.italic = false;
    else if (p === 24) s.underline = false;
    else if (p === 27) s.inverse = false;
    else if (p >= 30 && p <= 37) s.fg = p - 30;
    else if (p === 38) {
      const c = colorFrom(params, i);
      s.fg = c.color;
      i += c.used;
    } else if (p === 39) delete s.fg;
    else if (p >= 40 && p <= 47) s.bg = p - 40;
    else if (p === 48) {
      const c = colorFrom(params, i);
      s.bg = c.color;
      i += c.used;
    } else if (p === 49) delete s.bg;
    else if (p >= 90 && p <= 97) s.fg = p - 90 + 8;
    else if (p >= 100 && p <= 107) s.bg = p - 100 + 8;
  }
  return s;
}

function plain(style: Style): boolean {
  return style.fg === undefined && style.bg === undefined && !style.bold && !style.dim && !style.italic && !style.underline && !style.inverse;
}

function span(text: string, style: Style): Node {
  if (plain(style)) return document.createTextNode(text);
  const el = document.createElement("span");
  el.textContent = text;
  let fg = style.fg, bg = style.bg;
  if (style.inverse) {
    [fg, bg] = [bg ?? 7, fg ?? 0];
  }
  const classes: string[] = [];
  if (typeof fg === "number") classes.push(`ansi-${fg >= 8 ? "bright-" : ""}${NAMES[fg % 8]}-fg`);
  else if (typeof fg === "string") el.style.color = fg;
  if (typeof bg === "number") classes.push(`ansi-${bg >= 8 ? "bright-" : ""}${NAMES[bg % 8]}-bg`);
  else if (typeof bg === "string") el.style.backgroundColor = bg;
  if (style.bold) classes.push("ansi-bold");
  if (style.dim) classes.push("ansi-dim");
  if (style.italic) classes.push("ansi-italic");
  if (style.underline) classes.push("ansi-underline");
  el.className = classes.join(" ");
  return el;
}

// CSI sequences (ESC [ params final), OSC sequences (ESC ] ... BEL/ST), and lone ESC pairs.
// eslint-disable-next-line no-control-regex
const ESCAPE = /\u001b\[([0-9;:?]*)([@-~])|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|\u001b[@-Z\\-_]?/g;

/** Renders text with ANSI escapes into `parent`. */
export function renderAnsi(text: string, parent: Node): void {
  let style: Style = {};
  let last = 0;
  const frag = document.createDocumentFragment();
  ESCAPE.lastIndex = 0;
  for (let m = ESCAPE.exec(text); m; m = ESCAPE.exec(text)) {
    if (m.index > last) frag.append(span(text.slice(last, m.index), style));
    last = ESCAPE.lastIndex;
    if (m[2] === "m") {
      const params = (m[1] ?? "")
        .split(/[;:]/)
        .filter((x) => x !== "")
        .map((x) => parseInt(x, 10))
        .filter((x) => Number.isFinite(x));
      style = apply(style, params);
    }
  }
  if (last < text.length) frag.append(span(text.slice(last), style));
  parent.appendChild(frag);
}

/** Text without escapes, for searching and copying. */
export function stripAnsi(text: string): string {
  ESCAPE.lastIndex = 0;
  return text.replace(ESCAPE, "");
}

/**
 * Applies carriage returns and backspaces the way a terminal would, line by line, so progress
 * bars that redraw one line show only their last state.
 */
export function applyControl(text: string): string {
  if (!/[\r\b]/.test(text)) return text;
  const lines = text.split("\n");
  return lines
    .map((line) => {
      if (line.includes("\r")) {
        const parts = line.split("\r");
        // A trailing \r (before \n) keeps the line; otherwise the last part overwrites the start.
        let out = "";
        for (const part of parts) {
          if (part === "") continue;
          out = part + out.slice(part.length);
        }
        line = out;
      }
      if (line.includes("\b")) {
        const chars: string[] = [];
        for (const ch of line) {
          if (ch === "\b") chars.pop();
          else chars.push(ch);
        }
        line = chars.join("");
      }
      return line;
    })
    .join("\n");
}
