const byRegion = groupBy(sales, (s) => s.region);
const totals = Object.fromEntries(
  [...byRegion].map(([region, rows]) => [region, d3.sum(rows, (r) => r.units * r.price)]),
) as Totals;
totals;
