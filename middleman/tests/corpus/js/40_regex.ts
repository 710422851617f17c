const skuPattern = /^(?<family>[A-Z]{3})-(?<num>\d{4})$/;
const families = new Set<string>();
for (const { product } of sales) {
  const m = product.match(skuPattern);
  if (m?.groups) families.add(m.groups.family);
}
[...families].sort();
