const monthKey = (d: Date) => `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}`;
const monthly = new Map<string, number>();
for (const { date, units, price } of sales) {
  const key = monthKey(date);
  monthly.set(key, (monthly.get(key) ?? 0) + units * price);
}
const months = [...monthly.keys()].sort();
