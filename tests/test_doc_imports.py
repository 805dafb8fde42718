"""Every `import` line of a Python example in the Markdown docs names modules and names that exist
(deploy/jupyterhub/README.md imported ensure_tutorials from engine.workspace.store, which never held it)."""
from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(p for p in [*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md"), *ROOT.glob("deploy/**/*.md")])
FENCE = re.compile(r"```python\n(.*?)```", re.S)
IMPORT = re.compile(r"^\s*(?:from\s+((?:engine|qwidgets)[\w.]*)\s+import\s+([\w, ]+)"
                    r"|import\s+((?:engine|qwidgets)[\w.]*))", re.M)


def _imports():
    for doc in DOCS:
        for block in FENCE.findall(doc.read_text()):
            for m in IMPORT.finditer(block):
                module, names, plain = m.groups()
                yield doc.relative_to(ROOT), module or plain, [n.strip() for n in (names or "").split(",") if n.strip()]


CASES = list(_imports())


def test_the_docs_have_python_examples_to_check():
    assert {str(doc) for doc, _, _ in CASES} >= {"README.md", "deploy/jupyterhub/README.md"}


@pytest.mark.parametrize("doc, module, names", CASES, ids=[f"{d}:{m}" for d, m, _ in CASES])
def test_doc_imports_resolve(doc, module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, \
            f"{doc}: `from {module} import {name}`: {module} has no {name}"
