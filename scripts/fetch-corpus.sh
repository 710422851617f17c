#!/usr/bin/env bash
# The corpus of real public notebooks the document tests import, run and export: the notebooks
# shipped in the source distributions of four Jupyter projects on PyPI (pinned by version and
# checksum), extracted once into $NBP_CORPUS and kept there.
#   jupytext 1.19.6  (MIT)          real notebooks in some 30 languages: demos, RISE slides,
#                                   R magics, plotly, nteract parameters, raw cells of every kind
#   nbformat 5.11.1  (BSD-3-Clause) the format's own test notebooks (4.0 to 4.5, v3)
#   nbconvert 7.17.2 (BSD-3-Clause) notebooks with attachments, widgets, outputs of every type
#   papermill 2.7.0  (BSD-3-Clause) parameterised notebooks (the `parameters` tag)
# Each archive's licence travels with its notebooks (LICENSE next to them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

SOURCES=(
  "jupytext 1.19.6 79/7f/5d2cc9618eca61dbc2d76628da3622a311702abd6b15c824bbf2b53e0db6 ba1d143bb3751e054d3164376b148ee8fa74e1a860fc9411e1da93ff588b8a17"
  "nbformat 5.11.1 31/72/b3446efab8756e7df4b8ec587f8e611cb5a7249e4323db480802f1d3be04 32d4521c68c6e7d5b29c76defaeed9f42ea733142b9b19f88277ce10390b9c4d"
  "nbconvert 7.17.2 53/6a/252c7620305a9661205aed7a2a4b3592f5207bfca56ad11b7dea2c5ec2f6 344a218e8595117ce37396ed025d994f146d076226ebac59255a2fa085ab24d8"
  "papermill 2.7.0 f8/b6/92d770c5ced66ed0134256f8de781e98c824d3a0662af1643a91fcc36663 ec10b37594a060662f57269e1ebd108c209d204450f00fdfeb70a1c7cfb7fbc8"
)
want="$(printf '%s\n' "${SOURCES[@]}" | sha256sum | cut -c1-16)"
stamp="$NBP_CORPUS/.stamp"
[ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0

echo "fetch-corpus: extracting the notebook corpus into $NBP_CORPUS"
archives="$NBP_CACHE/corpus/archives"
mkdir -p "$archives"
rm -rf "$NBP_CORPUS"
mkdir -p "$NBP_CORPUS"
for source in "${SOURCES[@]}"; do
  read -r name version path sum <<<"$source"
  file="$archives/$name-$version.tar.gz"
  if ! echo "$sum  $file" | sha256sum -c --status 2>/dev/null; then
    curl -fsSL --retry 3 -o "$file.part" "https://files.pythonhosted.org/packages/$path/$name-$version.tar.gz"
    echo "$sum  $file.part" | sha256sum -c --status || { echo "fetch-corpus: $name-$version: checksum mismatch" >&2; exit 1; }
    mv "$file.part" "$file"
  fi
  out="$NBP_CORPUS/$name-$version"
  mkdir -p "$out"
  tar -xzf "$file" -C "$out" --strip-components=1 --wildcards '*.ipynb' "$name-$version/LICENSE*" 2>/dev/null ||
    tar -xzf "$file" -C "$out" --strip-components=1 --wildcards '*.ipynb'
done
echo "$want" >"$stamp"
echo "fetch-corpus: $(find "$NBP_CORPUS" -name '*.ipynb' | wc -l) notebooks"
