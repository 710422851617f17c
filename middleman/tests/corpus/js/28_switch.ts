function describe(region: Region): string {
  switch (region) {
    case "north":
    case "south":
      return `${region} (hemisphere)`;
    default: {
      const label = region.toUpperCase();
      return label;
    }
  }
}
const regionLabels = (Object.keys(totals) as Region[]).map(describe);
