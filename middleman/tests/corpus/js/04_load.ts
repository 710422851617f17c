const text = await Deno.readTextFile(join(DATA_DIR, "sales.csv"));
const raw = parseCsv(text, { skipFirstRow: true }) as Record<string, string>[];
raw.length;
