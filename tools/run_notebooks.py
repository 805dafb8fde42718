"""Execute the tutorial notebooks in place and keep only the outputs nbval checks.

Usage: python tools/run_notebooks.py [notebooks/NN_name.ipynb ...]
Cells marked `# NBVAL_CHECK_OUTPUT` keep their outputs (nbval compares them in CI); other outputs
are cleared so the repository does not carry megabytes of images, and so is the saved widget state
(`metadata.widgets`, about 1 MB for the Explorer), which nbval does not use.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" not in cell.source:
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    print(f"executed {path}")


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for p in paths:
        run(p)
