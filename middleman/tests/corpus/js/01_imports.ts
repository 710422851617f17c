import * as d3 from "npm:d3@7";
import * as Plot from "npm:@observablehq/plot";
import { parse as parseCsv } from "jsr:@std/csv";
import { join } from "jsr:@std/path";
import pl from "npm:nodejs-polars";
