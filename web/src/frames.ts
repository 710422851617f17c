// HTML outputs run in sandboxed frames: `sandbox="allow-scripts"` without `allow-same-origin`
// gives each frame an opaque origin, so its scripts cannot reach this page, its DOM, storage or
// token. The frame document (/output-frame.html) is served with its own CSP (inline scripts
// allowed, no network), and receives the HTML by postMessage; it reports its height back.

interface FrameInfo {
  html: string;
}

const frames = new Map<HTMLIFrameElement, FrameInfo>();
let listening = false;
const MAX_HEIGHT = 4000;

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
  const msg = data as { type?: unknown; height?: unknown };
  // A frame reloads when its cell moves in the page; it then asks again.
  if (msg.type === "nb-frame-ready") {
    frame.contentWindow?.postMessage({ type: "nb-frame-render", html: info.html }, "*");
  } else if (msg.type === "nb-frame-height" && typeof msg.height === "number" && Number.isFinite(msg.height)) {
    const hgt = Math.max(8, Math.min(MAX_HEIGHT, Math.ceil(msg.height)));
    frame.style.height = `${hgt}px`;
    frame.classList.toggle("clipped", msg.height > MAX_HEIGHT);
  }
}

export function htmlFrame(html: string): HTMLIFrameElement {
  if (!listening) {
    window.addEventListener("message", onMessage);
    listening = true;
  }
  const frame = document.createElement("iframe");
  frame.className = "html-output";
  frame.setAttribute("sandbox", "allow-scripts");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.setAttribute("title", "HTML output");
  frame.src = "/output-frame.html";
  frames.set(frame, { html });
  return frame;
}

/** Drops frames no longer in the page (called after outputs are cleared). */
export function forgetDetachedFrames(): void {
  for (const f of frames.keys()) if (!f.isConnected) frames.delete(f);
}
