"""The package's shape, from its imports (read with ast; nothing runs): no circles, no
private name imported across modules, and every import goes down the stages (or stays in
its own folder). The stage order is the flow docs/design.md describes."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lowest first: a module may import from its own stage or from a lower one, never a higher.
STAGES = [
    ("slicer.errors", "slicer.version", "slicer.selection"),
    ("slicer.axes", "slicer.kernels"),
    ("slicer.io",),
    ("slicer.plan",),
    ("slicer.remote",),
    ("slicer.teacher",),
    ("slicer.hf",),
    ("slicer.run",),
    ("slicer.importance",),
    ("slicer.job",),
    ("slicer.corrections",),
    ("slicer.rotation", "slicer.distributed"),
    ("slicer.api", "slicer.verify"),
    ("slicer.cli", "slicer", "slicer.__main__"),
]


def modules() -> dict[str, Path]:
    found = {}
    for base, folder in (("slicer", REPO / "slicer"), ("slicer.kernels", REPO / "kernels")):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((base, *parts))] = path
    return found


def stage(module: str) -> int:
    best = None
    for i, names in enumerate(STAGES):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} belongs to no stage: add it to STAGES"
    return best[0]


def imports() -> list[tuple[str, str, str]]:
    """(importer, imported module, imported name or '') for every import inside the package."""
    mods = modules()
    out = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    target = ".".join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("slicer"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    out.append((mod, sub, "") if sub in mods else (mod, target, alias.name))
            elif isinstance(node, ast.Import):
                out += [(mod, a.name, "") for a in node.names if a.name.startswith("slicer")]
    return out


def test_no_private_name_is_imported_across_modules():
    bad = [f"{a} imports {b}.{name}" for a, b, name in imports()
           if name.startswith("_") and not name.startswith("__") and b != a]
    assert not bad, "\n".join(bad)


def test_every_import_goes_down_the_stages():
    bad = [f"{a} (stage {stage(a)}) imports {b} (stage {stage(b)})" for a, b, _ in imports()
           if b != a and stage(b) > stage(a)]
    assert not bad, "\n".join(bad)


def test_the_import_graph_has_no_circle():
    edges: dict[str, set[str]] = {}
    for a, b, _ in imports():
        if b != a:
            edges.setdefault(a, set()).add(b)
    # a package's __init__ re-exporting its own modules is not a circle of theirs
    circles, index, low, stack, on, counter = [], {}, {}, [], set(), [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_checks_above_can_fail(tmp_path, monkeypatch):
    """A module that imports a higher stage's private name is caught by both checks."""
    fake = REPO / "slicer" / "io" / "_house_probe.py"
    fake.write_text("from ..cli.app import _out\n")
    try:
        found = [(a, b, n) for a, b, n in imports() if a == "slicer.io._house_probe"]
        assert found == [("slicer.io._house_probe", "slicer.cli.app", "_out")]
        assert stage("slicer.cli.app") > stage("slicer.io._house_probe")
    finally:
        fake.unlink()
