// SQL cells: a DuckDB query whose first line `-- result: name` binds its result (a DataFrame) to
// a Python name. The kernel runs them (Middleman); the page names the result and starts new ones.

const RESULT = /^\s*--\s*result:\s*([\p{L}_][\p{L}\p{N}_]*)\s*$/u;

/** The name a SQL cell's first line binds its result to, if any. */
export function resultName(source: string): string | null {
  const nl = source.indexOf("\n");
  return RESULT.exec(nl < 0 ? source : source.slice(0, nl))?.[1] ?? null;
}

/** A new SQL cell's source: its result named `df<n>`, a name no cell's source mentions yet. */
export function sqlTemplate(sources: readonly string[]): string {
  let n = 1;
  while (sources.some((s) => new RegExp(`(?<![\\p{L}\\p{N}_])df${n}(?![\\p{L}\\p{N}_])`, "u").test(s))) n += 1;
  return `-- result: df${n}\nSELECT `;
}
