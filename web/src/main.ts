// Entry point: take the session token from the URL (fragment or query), remove it from the
// visible URL at once, keep it for this tab only, and open the notebook.
import { Connection } from "./connection";
import { h } from "./dom";
import { Notebook } from "./notebook";

const STORAGE_KEY = "nbplat.token";

function takeToken(): string | null {
  const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
  const query = new URLSearchParams(location.search);
  const fromUrl = hash.get("token") ?? query.get("token");
  if (fromUrl) {
    query.delete("token");
    hash.delete("token");
    const q = query.toString();
    const f = hash.toString();
    history.replaceState(null, "", `${location.pathname}${q ? `?${q}` : ""}${f ? `#${f}` : ""}`);
    try {
      // Survives a reload of this tab, not other tabs or sites; sandboxed outputs have an opaque
      // origin and cannot read this storage.
      sessionStorage.setItem(STORAGE_KEY, fromUrl);
    } catch {
      /* storage disabled: the token lives in memory only */
    }
    return fromUrl;
  }
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

function main(): void {
  const root = document.getElementById("app");
  if (!root) return;
  const token = takeToken();
  if (!token) {
    root.replaceChildren(
      h("div", { class: "no-token" }, [
        h("h1", { text: "No document token" }),
        h("p", { text: "Open a document from the platform's landing page (make run prints its address), or with a URL that carries a token: /#token=…" }),
      ]),
    );
    return;
  }
  let notebook: Notebook | null = null;
  const conn = new Connection(token, {
    frame: (f, missed) => notebook?.onFrame(f, missed),
    link: (state, detail) => notebook?.onLink(state, detail),
    synced: () => notebook?.onSynced(),
  });
  notebook = new Notebook(root, conn, token);
  conn.start();
}

main();
