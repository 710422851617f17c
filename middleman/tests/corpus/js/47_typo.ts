const broken = sales.map((s) => s.units;
