const topProducts = d3
  .rollups(sales, (v) => d3.sum(v, (d) => d.units), (d) => d.product)
  .sort(([, a], [, b]) => b - a)
  .slice(0, 10);
topProducts.map(([name, units]) => `${name}: ${units}`).join("\n");
