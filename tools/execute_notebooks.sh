#!/usr/bin/env bash
# Execute notebooks in place (tools/execute_notebooks.sh notebooks/*.ipynb), then drop the widget
# state, whose random ids would change the file on every run. Static figures stay.
for nb in "$@"; do
  /usr/bin/time -f "$nb %e s" jupyter nbconvert --to notebook --execute --inplace "$nb" 2>&1 | grep -E " s$|Error" || true
  python - "$nb" <<'PY'
import sys, nbformat
p = sys.argv[1]
nb = nbformat.read(p, as_version=4)
nb.metadata.pop("widgets", None)
for c in nb.cells:
    if c.cell_type == "code":
        for o in c.get("outputs", []):
            if "data" in o:
                o["data"].pop("application/vnd.jupyter.widget-view+json", None)
nbformat.write(nb, p)
PY
done
