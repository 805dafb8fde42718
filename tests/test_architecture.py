"""The floor plan, enforced (docs/architecture.md): what engine/ may import, no import cycles, small
modules, a small engine/ root, Darknet layer kinds known by their classes, not by lists, and a map
that names every module of the tree (its module index) and every root module in its import diagram,
whose rows the imports follow.

Imports are read with `ast`, at module level and inside functions alike (a lazy import is still a
dependency). Each rule is a function of a source tree, so the self-checks below run it on a
synthetic tree that breaks it: a rule that cannot fail would prove nothing.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import networkx as nx

from helpers import ROOT

WIDGET_PACKAGES = ("qwidgets", "ipywidgets", "traitlets", "IPython", "ipycytoscape")
MAX_LINES = 450
MAX_ROOT_MODULES = 12
MAX_YOLO_MODULES = 3         # engine modules outside engine/layers/ that spell the literal "yolo"
MAP = ROOT / "docs" / "architecture.md"
INDEX_BEGIN = "<!-- module index: begin -->"
INDEX_END = "<!-- module index: end -->"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` under `root`."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` in `module` reads from (a relative import resolved)."""
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
    return base


def imported_names(path: Path, module: str, known: set[str] = frozenset()) -> set[str]:
    """Every module name `path` imports, anywhere in the file (relative imports resolved).

    `from pkg import name` depends on pkg/__init__ (which defines `name`), unless `pkg.name` is one
    of the `known` modules: then, as with `import pkg.name`, on that module only.
    """
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = import_base(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.add(sub if sub in known else base)
    return names


def import_graph(root: Path, package: str) -> tuple[nx.DiGraph, dict[str, set[str]]]:
    """(edges between the package's modules, every name each module imports)."""
    mods = modules(root, package)
    graph, raw = nx.DiGraph(), {}
    graph.add_nodes_from(mods)
    for name, path in mods.items():
        raw[name] = imported_names(path, name, set(mods))
        for target in raw[name]:
            # importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer is inside them
            # (its packages are initialised before it runs)
            if target in mods and target != name:
                graph.add_edge(name, target)
            parts = target.split(".")
            for k in range(1, len(parts)):
                step = ".".join(parts[:k])
                if step in mods and step != name and not name.startswith(step + "."):
                    graph.add_edge(name, step)
    return graph, raw


def widget_imports(raw: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, targets in raw.items() for t in targets
                  if t.split(".")[0] in WIDGET_PACKAGES)


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    return sorted(sorted(c) for c in nx.simple_cycles(graph))


def long_modules(root: Path, packages: tuple[str, ...], limit: int = MAX_LINES) -> list[str]:
    out = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > limit:
                out.append(f"{path.relative_to(root)}: {n} lines")
    return out


def root_modules(root: Path, package: str) -> list[str]:
    return sorted(p.name for p in (root / package).glob("*.py"))


def modules_spelling(root: Path, package: str, literal: str, outside: str) -> list[str]:
    """Modules (outside the subpackage `outside`) whose code holds the string constant `literal`."""
    out = []
    for name, path in modules(root, package).items():
        if name == f"{package}.{outside}" or name.startswith(f"{package}.{outside}."):
            continue
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(n, ast.Constant) and n.value == literal for n in ast.walk(tree)):
            out.append(name)
    return sorted(out)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(root: Path, packages: tuple[str, ...] = ("engine", "qwidgets")) -> list[str]:
    """Private names one module takes from another: `from m import _x`, or `m._x` on an imported module m.

    A private name is one module's business; another module that needs it needs a public, documented
    helper. Private *modules* (`qwidgets/_encode.py`) are their package's own: importing one from inside
    the same top package is allowed, and so are a module's dunders.
    """
    known = {name: path for package in packages for name, path in modules(root, package).items()}
    out = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        top = module.split(".")[0]
        is_package = path.name == "__init__.py"
        bound: dict[str, str] = {}                  # local name -> the project module it is bound to

        def allowed(base: str, name: str) -> bool:
            sub = f"{base}.{name}"
            return sub in known and sub.split(".")[0] == top      # a private module of this package

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in known:
                        if alias.asname:
                            bound[alias.asname] = alias.name
                        else:
                            bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
                    parts = alias.name.split(".")
                    for k in range(1, len(parts)):
                        if is_private(parts[k]) and not allowed(".".join(parts[:k]), parts[k]):
                            out.append(f"{module}:{node.lineno} imports {alias.name}")
            elif isinstance(node, ast.ImportFrom):
                base = import_base(node, module, is_package)
                if base.split(".")[0] not in packages:
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" in known:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
                    if base != module and is_private(alias.name) and not allowed(base, alias.name):
                        out.append(f"{module}:{node.lineno} imports {alias.name} from {base}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                chain, value = [], node.value
                while isinstance(value, ast.Attribute):
                    chain.insert(0, value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id in bound:
                    target = ".".join([bound[value.id], *chain])
                    if target in known and target != module and not allowed(target, node.attr):
                        out.append(f"{module}:{node.lineno} uses {target}.{node.attr}")
    return sorted(out)


def module_index(root: Path, packages: tuple[str, ...] = ("engine", "qwidgets")) -> str:
    """The map's module index: per folder, every module with the first line of its docstring (what
    `python tests/test_architecture.py --write-index` writes between the index markers)."""
    lines = []
    for package in packages:
        folders: dict[Path, list[Path]] = {}
        for path in sorted((root / package).rglob("*.py")):
            folders.setdefault(path.parent.relative_to(root), []).append(path)
        for folder, paths in sorted(folders.items()):
            lines += ["", f"**`{folder.as_posix()}/`**", ""]
            for path in paths:
                doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
                first = first_sentence(doc)
                lines.append(f"- `{path.name}`" + (f": {first}" if first else ""))
    return "\n".join(lines[1:])


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, its lines joined (a docstring's summary
    line often wraps)."""
    para = " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())
    # a sentence ends where the next one starts with a capital, a backtick or a quote: a period inside a
    # formula ("y = W . x") or before a year ("Nagel et al. 2019") is not an end
    for m in re.finditer(r"[.!?](?=$|\s+[A-Z`'\"*\[])", para):
        if not re.search(r"\b(e\.g|i\.e|etc|vs|cf|al)\.$", para[:m.end()]):
            return para[:m.end()]
    return para


def indexed_modules(text: str) -> set[str]:
    """The module paths a map's index names (folder headings + their items)."""
    if INDEX_BEGIN not in text or INDEX_END not in text:
        return set()
    body = text.split(INDEX_BEGIN, 1)[1].split(INDEX_END, 1)[0]
    out, folder = set(), None
    for line in body.splitlines():
        head = re.fullmatch(r"\*\*`([^`]+)/`\*\*", line.strip())
        if head:
            folder = head.group(1)
            continue
        item = re.match(r"- `([^`]+\.py)`", line.strip())
        if item and folder is not None:
            out.add(f"{folder}/{item.group(1)}")
    return out


def diagram_problems(text: str, graph: nx.DiGraph, roots: list[str], package: str = "engine") -> list[str]:
    """What the map's import diagram ("What may import what") gets wrong: a root module it does not name, and a
    module of its bottom row ("import nothing above them") that imports a module of the package outside that row."""
    block = text.split("## What may import what", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"[A-Za-z_][\w.]*", block))
    problems = [f"{package}/{name}.py is not in the diagram" for name in roots
                if name not in named and f"{package}/{name}" not in named]
    bottom = next(line for line in block.splitlines() if "import nothing above them" in line)
    row = {f"{package}.{name}" for name in re.findall(r"\w+", bottom.split("─>", 1)[1].split("(", 1)[0])}
    problems += [f"{m} (bottom row) imports {t}" for m in sorted(row & set(graph)) for t in sorted(graph.successors(m))
                 if t not in row]
    return problems


def diagram_places(text: str, package: str = "engine") -> dict[str, tuple[int, int]]:
    """Where the import diagram puts each engine module or package it names (the qwidgets line aside): (row,
    arrow segment); a name on a later row, or after a `─>` on the same row, sits lower. Text in parentheses
    (a room's own inner order, remarks) is left out. `engine/__init__`-style names are that one module."""
    block = text.split("## What may import what", 1)[1].split("```", 2)[1]
    places = {}
    for row, line in enumerate(line for line in block.splitlines() if line.strip() and not line.startswith("qwidgets")):
        while re.search(r"\([^()]*\)", line):
            line = re.sub(r"\([^()]*\)", "", line)
        for seg, part in enumerate(line.replace("└─>", "").split("─>")):
            for name in re.findall(r"[A-Za-z_][\w./]*", part):
                key = name.replace("/", ".").replace(f"{package}.__init__", package) if "/" in name \
                    else f"{package}.{name}"
                places[key] = (row, seg)
    return places


def row_problems(text: str, graph: nx.DiGraph, package: str = "engine") -> list[str]:
    """Imports that go up the import diagram: a module importing one the diagram places on a higher row (a
    module takes the place of the longest name it is, or is inside of; names with `/` only themselves)."""
    places = diagram_places(text, package)

    def place(module: str) -> tuple[int, int] | None:
        owners = [n for n in places if module == n or (n != package and not n.endswith("__main__")
                                                        and module.startswith(n + "."))]
        return places[max(owners, key=len)] if owners else None

    problems = []
    for a, b in sorted(graph.edges()):
        pa, pb = place(a), place(b)
        if pa is not None and pb is not None and pb < pa:
            problems.append(f"{a} imports {b}, which the diagram places above it")
    return problems


def tree_modules(root: Path, packages: tuple[str, ...] = ("engine", "qwidgets")) -> set[str]:
    return {p.relative_to(root).as_posix() for package in packages for p in (root / package).rglob("*.py")}


# ------------------------------------------------------------------------------ the rules on engine/
def test_engine_never_imports_widget_code():
    _, raw = import_graph(ROOT, "engine")
    assert widget_imports(raw) == []


def test_no_import_cycle_among_engine_modules():
    graph, _ = import_graph(ROOT, "engine")
    assert graph.number_of_edges() > 100          # the graph really was read
    assert cycles(graph) == []


def test_no_module_over_the_line_limit():
    assert long_modules(ROOT, ("engine", "qwidgets")) == []


def test_engine_root_stays_small():
    names = root_modules(ROOT, "engine")
    assert "__init__.py" in names and len(names) <= MAX_ROOT_MODULES, names


def test_layer_kinds_are_traits_not_lists():
    spelled = modules_spelling(ROOT, "engine", "yolo", outside="layers")
    assert len(spelled) <= MAX_YOLO_MODULES, spelled


def test_no_module_takes_a_private_name_from_another():
    # tests may reach into privates; engine/ and qwidgets/ modules use each other's public names only
    assert private_imports(ROOT) == []


def test_the_map_names_every_module_and_no_other():
    # docs/architecture.md stays true: a new, renamed or deleted module fails here until the index is
    # rewritten (python tests/test_architecture.py --write-index); its descriptions are the docstrings'
    named, present = indexed_modules(MAP.read_text()), tree_modules(ROOT)
    assert len(present) > 150
    assert sorted(present - named) == [] and sorted(named - present) == []


def test_the_import_diagram_names_every_root_module_and_its_bottom_row_imports_nothing_above_it():
    # filekind.py and mounts.py were in no row, and filekind (which reads darknet.weights) is no bottom-row module
    graph, _ = import_graph(ROOT, "engine")
    roots = [name[:-3] for name in root_modules(ROOT, "engine")]
    assert diagram_problems(MAP.read_text(), graph, roots) == []


def test_no_module_imports_one_the_diagram_places_above_it():
    # the diagram put workspace (and imaging, which imports it) below layers, but workspace's upload checks
    # build a cfg's layers and read .weights (darknet.build, darknet.weights): a newcomer reading it would
    # import layers from workspace code and think it a cycle, or put a workspace import under layers
    graph, _ = import_graph(ROOT, "engine")
    assert row_problems(MAP.read_text(), graph) == []



def thread_makers(root: Path, package: str = "qwidgets") -> list[str]:
    """File names of `package`'s modules that make a `threading.Thread` themselves."""
    out = []
    for name, path in modules(root, package).items():
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(n, ast.Attribute) and n.attr == "Thread" and isinstance(n.value, ast.Name)
               and n.value.id == "threading" for n in ast.walk(tree)):
            out.append(path.name)
    return sorted(out)


def long_work_paragraph(text: str) -> str:
    """The sentence of the page saying where the views' long work runs, to its full stop."""
    start = text.index("Long work runs through")
    return text[start:text.index(".\n", start)]


def test_the_page_names_every_view_that_runs_long_work_on_a_thread_of_its_own():
    # the page said all long work runs through LongTask; the Quantization tab's Compare and sweep run on a
    # thread of their own (QuantizationView._run), which a newcomer looking for their progress would not find
    own = [m for m in thread_makers(ROOT) if m != "_long_task.py"]
    assert own, "no view makes a thread: simplify the page's sentence"
    said = long_work_paragraph(MAP.read_text())
    assert [m for m in own if f"`{m}`" not in said] == [], said

# ------------------------------------------------------------------------------ self-checks: the rules fail
def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_rules_catch_a_synthetic_violation_of_each(tmp_path):
    write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def lazy():\n    from pkg.sub.c import f\n    return f\n",   # cycle via a function
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from ..a import b\nimport ipywidgets\n",                 # relative import closes it
        "pkg/d.py": "KIND = 'yolo'\n" + "x = 1\n" * (MAX_LINES + 1),
        "pkg/e.py": "def f(layer):\n    return layer.kind == 'yolo'\n",
        "pkg/layers/__init__.py": "",
        "pkg/layers/yolo.py": "kind = 'yolo'\n",
    })
    graph, raw = import_graph(tmp_path, "pkg")
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert widget_imports(raw) == ["pkg.sub.c imports ipywidgets"]
    assert long_modules(tmp_path, ("pkg",)) == [f"pkg/d.py: {MAX_LINES + 2} lines"]
    assert modules_spelling(tmp_path, "pkg", "yolo", outside="layers") == ["pkg.d", "pkg.e"]
    assert len(modules_spelling(tmp_path, "pkg", "yolo", outside="nothing")) == 3
    write(tmp_path, {f"pkg/m{i}.py": "" for i in range(MAX_ROOT_MODULES)})
    assert len(root_modules(tmp_path, "pkg")) > MAX_ROOT_MODULES
    # the map: an index written before a module was added misses it; one naming a deleted module too
    index = module_index(tmp_path, ("pkg",))
    doc = f"# map\n{INDEX_BEGIN}\n{index}\n{INDEX_END}\n"
    assert indexed_modules(doc) == tree_modules(tmp_path, ("pkg",))
    write(tmp_path, {"pkg/sub/new.py": '"""New."""\n'})
    assert tree_modules(tmp_path, ("pkg",)) - indexed_modules(doc) == {"pkg/sub/new.py"}
    (tmp_path / "pkg" / "e.py").unlink()
    assert indexed_modules(doc) - tree_modules(tmp_path, ("pkg",)) == {"pkg/e.py"}
    assert "- `new.py`: New." in module_index(tmp_path, ("pkg",)).split("**`pkg/sub/`**")[1]


def test_an_index_summary_is_the_whole_first_sentence():
    # the index cut three summaries short at a period inside the sentence: connected.py's read
    # "Darknet [connected]: y = W ." and equalize.py's / gptq.py's stopped at "Nagel et al." / "Frantar et al."
    assert first_sentence("Darknet [connected]: y = W . flatten_CHW(x) + b (or batch norm), then an activation.\n\n"
                          "In `.weights` the order is biases.") == \
        "Darknet [connected]: y = W . flatten_CHW(x) + b (or batch norm), then an activation."
    assert first_sentence('Cross-layer equalization (CLE, Nagel et al. 2019, "Data-Free Quantization"), as NNCF\n'
                          "does it. More.") == \
        'Cross-layer equalization (CLE, Nagel et al. 2019, "Data-Free Quantization"), as NNCF does it.'
    assert first_sentence("Weight rounding (GPTQ, Frantar et al. 2022), `--refine gptq`.") == \
        "Weight rounding (GPTQ, Frantar et al. 2022), `--refine gptq`."
    # still a sentence per summary: the next one starts with a capital, a backtick or a quote
    assert first_sentence("One thing. Another thing.") == "One thing."
    assert first_sentence("One thing (e.g. this). `x` is another.") == "One thing (e.g. this)."
    assert first_sentence("Ends here!") == "Ends here!"


def test_the_diagram_rule_catches_a_missing_root_module_and_an_import_from_the_bottom_row(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "", "pkg/errors.py": "", "pkg/model.py": "from pkg import errors\n",
                     "pkg/kind.py": "from pkg import model\n"})
    graph, _ = import_graph(tmp_path, "pkg")
    doc = ("## What may import what\n```\npkg/__init__\n  └─> model\n    └─> errors, kind (import nothing above them)\n"
           "```\n")
    roots = ["__init__", "errors", "kind", "model"]
    assert diagram_problems(doc, graph, roots, "pkg") == ["pkg.kind (bottom row) imports pkg.model"]
    assert diagram_problems(doc.replace(", kind", ""), graph, roots, "pkg") == ["pkg/kind.py is not in the diagram"]
    assert diagram_problems(doc.replace(", kind", "").replace("> model", "> model, kind"), graph, roots, "pkg") == []
    # an import up the rows (kind, on the bottom row, imports model) is caught; one down a row, or after a ─>, is not
    assert row_problems(doc, graph, "pkg") == ["pkg.kind imports pkg.model, which the diagram places above it"]
    assert row_problems(doc.replace(", kind", "").replace("> model", "> kind ─> model"), graph, "pkg") == []
    assert row_problems(doc.replace(", kind", "").replace("> model", "> model ─> kind"), graph, "pkg") == \
        ["pkg.kind imports pkg.model, which the diagram places above it"]
    assert diagram_places(doc, "pkg") == {"pkg": (0, 0), "pkg.model": (1, 0), "pkg.errors": (2, 0), "pkg.kind": (2, 0)}


def test_private_imports_are_caught_in_every_spelling(tmp_path):
    write(tmp_path, {
        "pkg/__init__.py": "", "pkg/_helpers.py": "def _h():\n    pass\n",
        "pkg/a.py": "def _walk():\n    pass\n\ndef walk():\n    return _walk()\n",
        "pkg/b.py": "from pkg.a import _walk, walk\n",                        # a sibling's private name
        "pkg/c.py": "def f():\n    from .a import _walk\n    return _walk\n",  # lazy and relative
        "pkg/d.py": "from pkg import a\nimport pkg.a as aa\nimport pkg.a\n\n"
                    "def f():\n    return a._walk, aa._walk, pkg.a._walk, a.__name__\n",
        "pkg/e.py": "from pkg import _helpers\nfrom pkg._helpers import _h\nimport numpy\nx = numpy._globals\n",
        "other/__init__.py": "", "other/f.py": "from pkg import _helpers\n",   # another package's private module
    })
    found = private_imports(tmp_path, ("pkg", "other"))
    assert found == ["other.f:1 imports _helpers from pkg", "pkg.b:1 imports _walk from pkg.a",
                     "pkg.c:2 imports _walk from pkg.a", "pkg.d:6 uses pkg.a._walk", "pkg.d:6 uses pkg.a._walk",
                     "pkg.d:6 uses pkg.a._walk", "pkg.e:2 imports _h from pkg._helpers"]
    write(tmp_path, {"pkg/b.py": "from pkg.a import walk\n", "pkg/c.py": "", "pkg/d.py": "", "pkg/e.py": "",
                     "other/f.py": ""})
    assert private_imports(tmp_path, ("pkg", "other")) == []


def test_a_clean_synthetic_tree_passes_and_from_package_import_name_counts_its_init(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import numpy\n\ndef f():\n    from pkg import b\n    return b\n",
                     "pkg/b.py": "import os\n"})
    graph, raw = import_graph(tmp_path, "pkg")
    assert sorted(graph.edges) == [("pkg.a", "pkg.b")]
    assert cycles(graph) == [] and widget_imports(raw) == [] and long_modules(tmp_path, ("pkg",)) == []
    write(tmp_path, {"pkg/__init__.py": "from pkg.b import g\n", "pkg/b.py": "def g():\n    from pkg import g\n"})
    graph, _ = import_graph(tmp_path, "pkg")
    assert cycles(graph) == [["pkg", "pkg.b"]]          # `g` is a name pkg/__init__ defines
    # importing pkg.sub.y runs pkg/sub/__init__, which imports pkg.sub.x, which imports pkg.top lazily
    write(tmp_path, {"pkg/__init__.py": "", "pkg/b.py": "", "pkg/sub/__init__.py": "from pkg.sub.x import f\n",
                     "pkg/sub/x.py": "def f():\n    import pkg.top\n", "pkg/sub/y.py": "import numpy\n",
                     "pkg/top.py": "from pkg.sub.y import numpy\n"})
    graph, _ = import_graph(tmp_path, "pkg")
    assert cycles(graph) == [["pkg.sub", "pkg.sub.x", "pkg.top"]]


def write_index(path: Path = MAP) -> None:
    """Rewrite the map's module index from the tree (between the markers, the rest of the page kept)."""
    text = path.read_text()
    head, rest = text.split(INDEX_BEGIN, 1)
    tail = rest.split(INDEX_END, 1)[1]
    from engine.atomic import atomic_write
    atomic_write(path, f"{head}{INDEX_BEGIN}\n{module_index(ROOT)}\n{INDEX_END}{tail}".encode())


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-index"]:
        sys.exit("usage: python tests/test_architecture.py --write-index")
    write_index()
