function rolling(values: number[], window = 3): number[] {
  return values.map((_, i) => {
    const start = Math.max(0, i - window + 1);
    const slice = values.slice(start, i + 1);
    return slice.reduce((a, b) => a + b, 0) / slice.length;
  });
}
const revenue = months.map((m) => monthly.get(m)!);
const smoothed = rolling(revenue, 6);
