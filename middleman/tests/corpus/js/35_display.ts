Deno.jupyter.md`## Sales summary

- ${summaryLine}
- regions: ${regionLabels.join(", ")}
- mean price: ${priceStats.mean.toFixed(2)}
`;
