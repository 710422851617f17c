// Builds the web client into middleman/web-dist/ (or the directory given as the first argument):
// index.html, output-frame.html, chart-frame.html, assets/app.js, assets/app.css,
// assets/chart.js (Vega, Vega-Lite and vega-embed, loaded only by chart frames),
// assets/licenses.txt, assets/fonts/KaTeX_*.woff2 (math in markdown; KaTeX's style sheet goes
// into app.css, its font URLs carry each font's content hash), and assets/app.js.gz,
// assets/app.css.gz, assets/chart.js.gz (gzip level 9, no name, mtime 0; Middleman serves them
// to browsers that accept gzip). Deterministic: same sources and lockfile, same bytes. Asset URLs
// carry a content hash (?v=...) so Middleman can let browsers cache them for a year.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { constants, gzipSync } from "node:zlib";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, "..", "middleman", "web-dist"));
const hash = (b) => createHash("sha256").update(b).digest("hex").slice(0, 16);

const common = {
  bundle: true,
  minify: true,
  write: false,
  metafile: true,
  legalComments: "none",
  charset: "utf8",
  target: ["chrome111", "firefox115", "safari16.4"],
  absWorkingDir: here,
  logLevel: "warning",
};
const js = await esbuild.build({ ...common, entryPoints: ["src/main.ts"], outfile: "app.js", format: "iife", platform: "browser" });
const css = await esbuild.build({ ...common, entryPoints: ["src/style.css"], outfile: "app.css" });
const chart = await esbuild.build({ ...common, entryPoints: ["src/chart-frame.ts"], outfile: "chart.js", format: "iife", platform: "browser" });
const jsBytes = js.outputFiles[0].contents;
const chartBytes = chart.outputFiles[0].contents;

// KaTeX's fonts, woff2 only (every browser the bundle targets reads it), served by Middleman
// from /assets/fonts/ (middleman/src/server/web.rs embeds each by name).
const katexDist = join(here, "node_modules", "katex", "dist");
const fonts = new Map();
const katexCss = readFileSync(join(katexDist, "katex.min.css"), "utf8").replace(
  /src:url\(fonts\/(KaTeX_[A-Za-z0-9-]+)\.woff2\) format\("woff2"\)(?:,url\([^)]*\) format\("[a-z]+"\))*/g,
  (_, name) => {
    const bytes = readFileSync(join(katexDist, "fonts", `${name}.woff2`));
    fonts.set(name, bytes);
    return `src:url(fonts/${name}.woff2?v=${hash(bytes)}) format("woff2")`;
  },
);
if (fonts.size === 0 || /\.(woff|ttf)\)/.test(katexCss)) throw new Error("build: KaTeX's font rules changed; update build.mjs");
const cssBytes = Buffer.concat([Buffer.from(katexCss + "\n"), css.outputFiles[0].contents]);

// Third-party licences of every package in each bundle, in a stable order.
function packagesOf(build) {
  const packages = new Map();
  for (const input of Object.keys(build.metafile.inputs)) {
    const m = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
    if (!m) continue;
    const dir = join(here, input.slice(0, input.indexOf(m[0]) + m[0].length));
    if (packages.has(m[1])) continue;
    const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
    const file = readdirSync(dir).filter((f) => /^(licen[cs]e|copying)(\..*)?$/i.test(f)).sort()[0];
    packages.set(m[1], { version: pkg.version, license: pkg.license ?? "see package", text: file ? readFileSync(join(dir, file), "utf8").trim() : "" });
  }
  return packages;
}
const packages = packagesOf(js);
const chartPackages = packagesOf(chart);
let licenses = "";
for (const [bundle, pkgs] of [["assets/app.js", packages], ["assets/chart.js", chartPackages]]) {
  licenses += `${licenses ? "\n" : ""}Third-party software in ${bundle}\n\n`;
  for (const name of [...pkgs.keys()].sort()) {
    const p = pkgs.get(name);
    licenses += `== ${name} ${p.version} (${p.license})\n\n${p.text}\n\n`;
  }
}

const index = readFileSync(join(here, "static", "index.html"), "utf8")
  .replace("__JS_HASH__", hash(jsBytes))
  .replace("__CSS_HASH__", hash(cssBytes));

if (existsSync(out)) rmSync(out, { recursive: true });
mkdirSync(join(out, "assets", "fonts"), { recursive: true });
for (const [name, bytes] of [...fonts].sort(([a], [b]) => a.localeCompare(b))) writeFileSync(join(out, "assets", "fonts", `${name}.woff2`), bytes);
writeFileSync(join(out, "assets", "app.js"), jsBytes);
writeFileSync(join(out, "assets", "app.css"), cssBytes);
// Node's gzip header has no file name and mtime 0, so these bytes depend on the input only.
const gzip = (b) => gzipSync(b, { level: constants.Z_BEST_COMPRESSION });
const jsGz = gzip(jsBytes);
writeFileSync(join(out, "assets", "app.js.gz"), jsGz);
writeFileSync(join(out, "assets", "app.css.gz"), gzip(cssBytes));
const chartGz = gzip(chartBytes);
writeFileSync(join(out, "assets", "chart.js"), chartBytes);
writeFileSync(join(out, "assets", "chart.js.gz"), chartGz);
writeFileSync(join(out, "assets", "licenses.txt"), licenses);
writeFileSync(join(out, "index.html"), index);
writeFileSync(join(out, "output-frame.html"), readFileSync(join(here, "static", "output-frame.html")));
writeFileSync(join(out, "chart-frame.html"), readFileSync(join(here, "static", "chart-frame.html"), "utf8").replace("__CHART_HASH__", hash(chartBytes)));
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
console.log(
  `web: built ${out} (app.js ${kib(jsBytes.length)}, ${kib(jsGz.length)} gzipped, app.css ${kib(cssBytes.length)}, ` +
    `chart.js ${kib(chartBytes.length)}, ${kib(chartGz.length)} gzipped, ${fonts.size} fonts, ${packages.size} + ${chartPackages.size} packages)`,
);
