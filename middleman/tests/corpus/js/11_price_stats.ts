const priceStats = RunningStats.of(sales.map((s) => s.price));
({ mean: priceStats.mean, sd: Math.sqrt(priceStats.variance) });
