#!/usr/bin/env bash
# Execute notebooks in place (tools/execute_notebooks.sh notebooks/*.ipynb), then drop the widget
# state and the per-cell execution timestamps, which would change the file on every run.
# Static figures stay.
# Stops with nbconvert's error at the first notebook that fails.
set -euo pipefail
for nb in "$@"; do
  start=$(date +%s)
  jupyter nbconvert --to notebook --execute --inplace --log-level=WARN "$nb"
  echo "$nb: executed in $(( $(date +%s) - start )) s"
  python - "$nb" <<'PY'
import sys, nbformat
p = sys.argv[1]
nb = nbformat.read(p, as_version=4)
nb.metadata.pop("widgets", None)
for c in nb.cells:
    if c.cell_type == "code":
        c.metadata.pop("execution", None)
        for o in c.get("outputs", []):
            if "data" in o:
                o["data"].pop("application/vnd.jupyter.widget-view+json", None)
nbformat.write(nb, p)
PY
done
