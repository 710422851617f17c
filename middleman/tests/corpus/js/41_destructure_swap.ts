let [lo, hi] = d3.extent(sales, (s) => s.price) as [number, number];
if (lo > hi) [lo, hi] = [hi, lo];
const { mean: avgPrice, variance: priceVar } = priceStats;
const spread = { lo, hi, avgPrice, priceVar, ...palette };
