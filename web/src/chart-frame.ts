// The script of /chart-frame.html (bundled as assets/chart.js, loaded only by chart frames): draws
// one Vega or Vega-Lite spec that the notebook page posts, and reports the frame's height. The
// frame is sandboxed (an opaque origin) and its CSP allows no eval, no inline script or style and
// no network, so Vega runs with its expression interpreter (`ast: true`), styles come from a
// constructed style sheet, and a spec that asks for data by URL fails here and the page shows the
// output's other form.
import embed from "vega-embed";
import type { Loader, LoggerInterface } from "vega";
import { loader as vegaLoader } from "vega";

const STYLE = `
body { margin: 0; font: 13px system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; background: #fff; }
.chart { overflow-x: auto; overflow-y: hidden; }
.vega-embed { position: relative; display: inline-block; box-sizing: border-box; }
.vega-embed.fit-x { display: block; width: 100%; }
#vg-tooltip-element { visibility: hidden; position: fixed; z-index: 1000; max-width: 360px; padding: 6px 8px; font-size: 12px;
  background: rgba(255, 255, 255, .95); border: 1px solid #d8dce3; border-radius: 4px; box-shadow: 0 2px 6px rgba(0, 0, 0, .12);
  pointer-events: none; overflow-wrap: anywhere; }
#vg-tooltip-element.visible { visibility: visible; }
#vg-tooltip-element h2 { margin: 0 0 4px; font-size: 13px; }
#vg-tooltip-element table { border-spacing: 0; }
#vg-tooltip-element td { padding: 1px 2px; vertical-align: top; }
#vg-tooltip-element td.key { color: #5b6475; text-align: right; padding-right: 6px; }
`;

let rendered = false;

function post(message: Record<string, unknown>): void {
  window.parent.postMessage(message, "*");
}

function fail(reason: string): void {
  post({ type: "nb-frame-failed", reason });
}

/** The chart's own height (the document's would never be less than the frame's). */
function reportHeight(host: HTMLElement): void {
  post({ type: "nb-frame-height", height: host.getBoundingClientRect().height });
}

/** Vega's errors end the chart (the page shows the output's other form); warnings are dropped. */
function logger(): LoggerInterface {
  let level = 1;
  const log: LoggerInterface = {
    level(l?: number) {
      if (l === undefined) return level;
      level = l;
      return log;
    },
    error: (...args: readonly unknown[]) => {
      fail(args.map(String).join(" "));
      return log;
    },
    warn: () => log,
    info: () => log,
    debug: () => log,
  } as LoggerInterface;
  return log;
}

/** Vega's loader with no network: data must be in the spec (Altair inlines it). */
function offlineLoader(): Loader {
  const l = vegaLoader();
  // Vega only warns when data fails to load, and would draw empty axes.
  l.http = (uri: string) => {
    const reason = `it loads ${uri}, and charts here have no network (put the data in the spec)`;
    fail(reason);
    return Promise.reject(new Error(reason));
  };
  return l;
}

async function draw(spec: unknown, mode: unknown): Promise<void> {
  const host = document.createElement("div");
  host.className = "chart";
  const target = document.createElement("div");
  host.append(target);
  document.body.append(host);
  await embed(target, spec as object, {
    mode: mode === "vega" ? "vega" : "vega-lite",
    ast: true,
    actions: false,
    defaultStyle: false,
    renderer: "svg",
    logger: logger(),
    loader: offlineLoader(),
    tooltip: { disableDefaultStyle: true },
  });
  new ResizeObserver(() => reportHeight(host)).observe(host);
  reportHeight(host);
}

const sheet = new CSSStyleSheet();
sheet.replaceSync(STYLE);
document.adoptedStyleSheets = [sheet];

window.addEventListener("message", (e) => {
  if (e.source !== window.parent || rendered) return;
  const d: unknown = e.data;
  if (typeof d !== "object" || d === null || (d as { type?: unknown }).type !== "nb-chart-render") return;
  rendered = true;
  const { spec, mode } = d as { spec?: unknown; mode?: unknown };
  draw(spec, mode).catch((err: unknown) => fail(err instanceof Error ? err.message : String(err)));
});
post({ type: "nb-frame-ready" });
