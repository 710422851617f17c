Plot.plot({
  marginLeft: 120,
  x: { grid: true, label: "units" },
  marks: [
    Plot.barX(topProducts, { x: ([, u]) => u, y: ([p]) => p, sort: { y: "-x" } }),
    Plot.ruleX([0]),
  ],
});
