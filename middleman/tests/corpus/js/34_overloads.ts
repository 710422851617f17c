function fmt(x: number): string;
function fmt(x: Date): string;
function fmt(x: number | Date): string {
  return x instanceof Date ? x.toISOString().slice(0, 10) : x.toLocaleString("en-US");
}

const summaryLine = `${fmt(sales.length)} sales from ${fmt(d3.min(sales, (s) => s.date)!)}`;
