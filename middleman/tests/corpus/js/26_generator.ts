function* chunks<T>(xs: readonly T[], size: number): Generator<T[]> {
  for (let i = 0; i < xs.length; i += size) {
    yield xs.slice(i, i + size);
  }
}

const batches = [...chunks(sales, 500)].map((batch, n) => ({ n, units: d3.sum(batch, (s) => s.units) }));
