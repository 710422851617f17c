enum Flags {
  A = 1,
  B = A * 2,
  C = other,
}
declare const injected: number;
import fs = require("node:fs");
const both = injected + Flags.B + fs.constants.F_OK;
