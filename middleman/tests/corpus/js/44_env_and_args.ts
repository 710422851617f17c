const apiBase = Deno.env.get("API_BASE") ?? "http://localhost:8000";
const limit = Number(Deno.env.get("LIMIT") ?? 100);
const endpoint = new URL(`/v1/sales?limit=${limit}`, apiBase);
endpoint.searchParams.set("region", "north");
endpoint.href;
