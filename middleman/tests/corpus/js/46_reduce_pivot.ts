const pivot = sales.reduce<Record<string, Partial<Totals>>>((acc, { product, region, units }) => {
  const row = (acc[product] ??= {});
  row[region] = (row[region] ?? 0) + units;
  return acc;
}, {});
Object.entries(pivot).slice(0, 5);
