const df = pl.DataFrame(sales.map(({ date, ...rest }) => ({ ...rest, date: date.toISOString() })));
const perRegion = df
  .groupBy("region")
  .agg(pl.col("units").sum().alias("units"), pl.col("price").mean().alias("avg_price"))
  .sort("units", true);
perRegion;
