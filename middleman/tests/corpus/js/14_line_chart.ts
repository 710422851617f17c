Plot.plot({
  y: { grid: true, tickFormat: "~s" },
  marks: [
    Plot.lineY(months.map((m, i) => ({ m: new Date(m), v: revenue[i] })), { x: "m", y: "v", stroke: "#bbb" }),
    Plot.lineY(months.map((m, i) => ({ m: new Date(m), v: smoothed[i] })), { x: "m", y: "v" }),
  ],
});
