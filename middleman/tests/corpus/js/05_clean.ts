const sales: Sale[] = raw
  .filter((r) => r.units !== "" && r.price !== "")
  .map((r, i) => ({
    id: i,
    region: r.region.toLowerCase() as Region,
    product: r.product.trim(),
    units: Number(r.units),
    price: parseFloat(r.price),
    date: new Date(r.date),
  }));
console.log(`${sales.length} rows kept of ${raw.length}`);
