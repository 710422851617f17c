// Where this document's server is: beside the page. Middleman serves the page at `/`, the
// gateway at `/pods/<pod>/`; the WebSocket and the data endpoints (`api/...`) are relative to
// it, so the same client works both ways. The page's assets and frames are at the root, where
// Middleman and the gateway both serve them.

/** The URL of `path` (`api/notebook`, `ws`) for this page's document. */
export function podUrl(path: string): URL {
  return new URL(path.replace(/^\/+/, ""), location.href);
}
