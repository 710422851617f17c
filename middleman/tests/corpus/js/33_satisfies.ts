const palette = {
  north: "#1f77b4",
  south: "#ff7f0e",
  east: "#2ca02c",
  west: "#d62728",
} as const satisfies Record<Region, string>;

const colorOf = (r: Region) => palette[r];
