const escapeHtml = (s: string) =>
  s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);

const rowsHtml = topProducts
  .map(([p, u]) => `<tr><td>${escapeHtml(p)}</td><td>${u}</td></tr>`)
  .join("");
Deno.jupyter.html`<table><tr><th>product</th><th>units</th></tr>${rowsHtml}</table>`;
