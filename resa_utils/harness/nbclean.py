"""The git clean filter for notebooks: what git stores for `notebooks/*.ipynb` is the notebook
without outputs, execution counts or per-session metadata, with one fixed kernelspec. Opening or
running a notebook in JupyterLab (which rewrites the kernelspec's display name and the kernel's
`language_info`, and saves outputs) therefore leaves `git status` clean, and runs record
`dirty=False`. `make setup` registers the filter; `.gitattributes` applies it.

    python -m resa_utils.harness.nbclean < notebook.ipynb > clean.ipynb
"""

from __future__ import annotations

import json
import sys

KERNELSPEC = {"display_name": "Python (resa)", "language": "python", "name": "resa"}
"""The kernel `make setup` registers, as JupyterLab writes it."""
LANGUAGE_INFO = {"name": "python"}
CELL_METADATA_KEPT = ("tags",)
"""Cell metadata that matters (papermill's `parameters` tag); the rest (collapsed, scrolled,
execution timings) is session state."""


def clean(text: str) -> str:
    """The stored form of a notebook's JSON text (idempotent). Plain `json`, not nbformat: git
    runs this once per notebook it re-reads, and nbformat's schema validation takes seconds."""
    nb = json.loads(text)
    meta = {k: v for k, v in nb.get("metadata", {}).items()
            if k not in ("kernelspec", "language_info", "widgets", "papermill")}
    nb["metadata"] = {**meta, "kernelspec": KERNELSPEC, "language_info": LANGUAGE_INFO}
    for cell in nb.get("cells", []):
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in CELL_METADATA_KEPT}
        if isinstance(cell.get("source"), str):
            cell["source"] = cell["source"].splitlines(keepends=True)
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False, separators=(",", ": ")) + "\n"


def main() -> None:
    sys.stdout.write(clean(sys.stdin.read()))


if __name__ == "__main__":
    main()
