const outPath = join(DATA_DIR, "summary.json");
await Deno.writeTextFile(outPath, JSON.stringify({ totals, tierCounts, months: months.length }, null, 2));
const { size } = await Deno.stat(outPath);
console.log(`wrote ${size} bytes to ${outPath}`);
