// Small DOM helpers. Nothing here sets a `style` attribute or innerHTML: the page's
// Content-Security-Policy forbids inline styles, and text is always text.

type Attrs = Record<string, string | boolean | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: { class?: string; text?: string; title?: string; attrs?: Attrs; on?: Partial<Record<keyof HTMLElementEventMap, (e: Event) => void>> } = {},
  children: (Node | string | null | undefined | false)[] = [],
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props.class) el.className = props.class;
  if (props.text !== undefined) el.textContent = props.text;
  if (props.title) el.title = props.title;
  if (props.attrs) {
    for (const [k, v] of Object.entries(props.attrs)) {
      if (k === "style") throw new Error("inline styles are forbidden by the CSP");
      if (v === true) el.setAttribute(k, "");
      else if (typeof v === "string") el.setAttribute(k, v);
    }
  }
  if (props.on) {
    for (const [k, f] of Object.entries(props.on)) if (f) el.addEventListener(k, f);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c);
  }
  return el;
}

/**
 * A button. An icon (no letters) is named by `title`; a worded one by its words, so that the
 * name people see is the one speech input and screen readers use, with `title` as its
 * description.
 */
export function button(label: string, title: string, onClick: () => void, cls = ""): HTMLButtonElement {
  const icon = !/\p{L}/u.test(label);
  const b = h("button", { class: cls, text: label, title, attrs: { type: "button", "aria-label": icon ? title : undefined, "data-action": cls || undefined } });
  b.addEventListener("click", (e) => {
    e.preventDefault();
    onClick();
  });
  return b;
}

/** A colour the server assigned (`#rrggbb`), or a neutral grey for anything else. */
export function safeColor(c: unknown): string {
  return typeof c === "string" && /^#[0-9a-fA-F]{6}$/.test(c) ? c.toLowerCase() : "#888888";
}

let sheet: CSSStyleSheet | null = null;
const colorClasses = new Set<string>();

/**
 * A class that gives an element a collaborator's colour. Rules go into a constructed style sheet
 * (CSSOM, which the CSP allows), never into style attributes.
 */
export function colorClass(color: string): string {
  const c = safeColor(color).slice(1);
  const name = `uc-${c}`;
  if (!colorClasses.has(name)) {
    colorClasses.add(name);
    if (!sheet) {
      sheet = new CSSStyleSheet();
      document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
    }
    sheet.insertRule(`.${name}{--user:#${c};--user-light:#${c}33;--user-ink:${inkOn(c)}}`);
  }
  return name;
}

/** Black or white, whichever reads better on the colour `rrggbb` (WCAG relative luminance). */
function inkOn(rrggbb: string): string {
  const [r, g, b] = [0, 2, 4].map((i) => {
    const v = parseInt(rrggbb.slice(i, i + 2), 16) / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  const l = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  // Contrast with white is 1.05/(l+.05), with black (l+.05)/.05: equal at l ≈ 0.179.
  return l > 0.179 ? "#000" : "#fff";
}

export function initials(name: string): string {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  if (parts.length === 0) return "?";
  const first = Array.from(parts[0])[0] ?? "?";
  const second = parts.length > 1 ? (Array.from(parts[parts.length - 1])[0] ?? "") : "";
  return (first + second).toUpperCase();
}
