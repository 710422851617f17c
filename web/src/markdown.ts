// Markdown (cells and text/markdown outputs) to sanitised DOM: marked renders, DOMPurify keeps
// only inert elements. The CSP would block scripts anyway; sanitising also drops forms, frames,
// styles and event handlers, so a collaborator's markdown cannot restyle or overlay the page.
// TeX is taken out first and rendered after sanitising (math.ts).
import DOMPurify from "dompurify";
import { Marked } from "marked";
import { extractMath, insertMath } from "./math";

const marked = new Marked({ gfm: true, breaks: false, async: false });

const purify = DOMPurify(window);
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node instanceof HTMLAnchorElement) {
    const href = node.getAttribute("href") ?? "";
    if (href.startsWith("#")) return;
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  if (node instanceof HTMLImageElement) {
    // Only embedded images: the CSP refuses other origins, and relative URLs would ask Middleman.
    const src = node.getAttribute("src") ?? "";
    if (!/^data:image\/(png|jpeg|gif|webp);base64,/i.test(src)) node.removeAttribute("src");
  }
});

export function renderMarkdown(source: string, into: HTMLElement): void {
  const { text, pieces } = extractMath(source);
  const html = marked.parse(text) as string;
  const fragment = purify.sanitize(html, {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed", "link", "meta", "base"],
    FORBID_ATTR: ["style", "srcset", "action", "formaction"],
    ALLOW_DATA_ATTR: false,
  });
  if (pieces.length) insertMath(fragment, pieces);
  // Code blocks scroll sideways: reachable by keyboard.
  for (const pre of Array.from(fragment.querySelectorAll("pre"))) pre.tabIndex = 0;
  into.replaceChildren(fragment);
}
