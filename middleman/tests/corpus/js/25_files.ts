const reports: string[] = [];
for await (const entry of Deno.readDir(DATA_DIR)) {
  if (entry.isFile && entry.name.endsWith(".json")) {
    reports.push(entry.name);
  }
}
reports.sort();
