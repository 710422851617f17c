class Gauge {
  constructor(private value: number, private max = 100) {}
  [Deno.jupyter.$display]() {
    const pct = Math.round((this.value / this.max) * 100);
    return { "text/plain": `${pct}%`, "text/html": `<meter value="${this.value}" max="${this.max}"></meter>` };
  }
}
new Gauge(runs, 50);
