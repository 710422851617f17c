type Region = "north" | "south" | "east" | "west";

interface Sale {
  id: number;
  region: Region;
  product: string;
  units: number;
  price: number;
  date: Date;
}

type Totals = Record<Region, number>;
