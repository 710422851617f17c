interface Customer {
  id: string;
  name: string;
  email?: string;
  spend: number;
}

const customers: Customer[] = JSON.parse(await Deno.readTextFile(`${DATA_DIR}/customers.json`));
const tiers = d3.group(customers, (c) => tierOf(c.spend));
