const DATA_DIR = join(Deno.cwd(), "data");
const YEARS = [2019, 2020, 2021, 2022, 2023] as const;
let verbose = false;
