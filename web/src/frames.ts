// HTML outputs and charts run in sandboxed frames: `sandbox="allow-scripts"` without
// `allow-same-origin` gives each frame an opaque origin, so its scripts cannot reach this page,
// its DOM, storage or token. Each frame document is served with its own CSP (no network) and
// receives its content by postMessage; it reports its height back.
//
// - /output-frame.html: an HTML output, its inline scripts allowed.
// - /chart-frame.html: a Vega or Vega-Lite spec, drawn by the bundled Vega (assets/chart.js,
//   which only this frame loads), with Vega's expression interpreter instead of eval. A chart it
//   cannot draw is replaced by the output's other form (an image, or its text).

interface FrameInfo {
  /** What the frame is sent when it says it is ready. */
  content: Record<string, unknown>;
  /** A chart that failed: what to show instead. */
  fallback?: (reason: string) => HTMLElement;
  timer?: number;
}

const frames = new Map<HTMLIFrameElement, FrameInfo>();
let listening = false;
const MAX_HEIGHT = 4000;
/** A chart frame that has not drawn by then (its script did not load) gives way to the fallback. */
const CHART_DEADLINE_MS = 20_000;

function onMessage(e: MessageEvent): void {
  let frame: HTMLIFrameElement | undefined;
  for (const f of frames.keys()) {
    if (f.isConnected && f.contentWindow === e.source) {
      frame = f;
      break;
    }
  }
  if (!frame) return;
  const info = frames.get(frame);
  const data: unknown = e.data;
  if (!info || typeof data !== "object" || data === null) return;
  const msg = data as { type?: unknown; height?: unknown; reason?: unknown };
  // A frame reloads when its cell moves in the page; it then asks again.
  if (msg.type === "nb-frame-ready") {
    frame.contentWindow?.postMessage(info.content, "*");
  } else if (msg.type === "nb-frame-height" && typeof msg.height === "number" && Number.isFinite(msg.height)) {
    window.clearTimeout(info.timer);
    const hgt = Math.max(8, Math.min(MAX_HEIGHT, Math.ceil(msg.height)));
    frame.style.height = `${hgt}px`;
    frame.classList.toggle("clipped", msg.height > MAX_HEIGHT);
  } else if (msg.type === "nb-frame-failed" && info.fallback) {
    giveUp(frame, info, typeof msg.reason === "string" ? msg.reason : "");
  }
}

function giveUp(frame: HTMLIFrameElement, info: FrameInfo, reason: string): void {
  window.clearTimeout(info.timer);
  frames.delete(frame);
  if (frame.isConnected && info.fallback) frame.replaceWith(info.fallback(reason));
}

function sandboxed(src: string, cls: string, title: string, info: FrameInfo): HTMLIFrameElement {
  if (!listening) {
    window.addEventListener("message", onMessage);
    listening = true;
  }
  const frame = document.createElement("iframe");
  frame.className = cls;
  frame.setAttribute("sandbox", "allow-scripts");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.setAttribute("title", title);
  frame.src = src;
  frames.set(frame, info);
  return frame;
}

export function htmlFrame(html: string): HTMLIFrameElement {
  return sandboxed("/output-frame.html", "html-output", "HTML output", { content: { type: "nb-frame-render", html } });
}

/**
 * A chart of a Vega (`mode` "vega") or Vega-Lite spec; `fallback` builds what replaces it if it
 * cannot be drawn, given the reason.
 */
export function chartFrame(spec: unknown, mode: "vega" | "vega-lite", fallback: (reason: string) => HTMLElement): HTMLIFrameElement {
  const info: FrameInfo = { content: { type: "nb-chart-render", spec, mode }, fallback };
  const frame = sandboxed("/chart-frame.html", "chart-output", "Chart", info);
  info.timer = window.setTimeout(() => giveUp(frame, info, "the chart did not load"), CHART_DEADLINE_MS);
  return frame;
}

/** Drops frames no longer in the page (called after outputs are cleared). */
export function forgetDetachedFrames(): void {
  for (const [f, info] of frames) {
    if (!f.isConnected) {
      window.clearTimeout(info.timer);
      frames.delete(f);
    }
  }
}
