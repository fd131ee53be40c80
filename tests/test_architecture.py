"""The package keeps the shape ARCHITECTURE.md describes: small modules, no import cycles, one merge-method table
from which everything else is derived."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dtm_hf"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
    return {t for t in targets & known if t != name and not name.startswith(t + ".")}


def test_no_module_over_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_no_import_cycles():
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    cycles, done = [], set()

    def visit(node, path):
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert cycles == []


def test_steps_are_entry_modules_over_subpackages():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert {"distribute", "train", "merge", "evaluate", "run"} <= top
    for package in ("data", "training", "merging", "evaluation", "pipeline", "demo"):
        assert (PACKAGE / package / "__init__.py").is_file()
    # The subpackages do the work; the pipeline drives the steps through their entry modules only.
    found = modules()
    for name, path in found.items():
        if name.startswith(("dtm_hf.data", "dtm_hf.training", "dtm_hf.merging", "dtm_hf.evaluation")):
            entries = {f"dtm_hf.{s}" for s in ("distribute", "train", "merge", "evaluate", "run")}
            assert not imports(name, path, set(found)) & entries, name


@pytest.mark.parametrize("name", ["linear", "ties", "task_arithmetic", "dare_ties", "paper"])
def test_merge_method_table_drives_every_use(name):
    from dtm_hf.merge import MergeArguments
    from dtm_hf.merging.mergekit_config import MergeRecipe, build
    from dtm_hf.merging.methods import METHODS

    method = METHODS[name]
    assert method.mergekit is not None or method.adapter, "a method must be writable somehow"
    field = next(f for f in MergeArguments.__dataclass_fields__.values() if f.name == "method")
    assert name in field.metadata["choices"]
    if method.mergekit:
        config = build(MergeRecipe(method=name, base="/b", submodels=["/s0", "/s1"], weights=[0.5, 0.5],
                                   density=0.5, normalize=None, dtype=None, chat_template=None))
        assert config.merge_method == name
        assert all(("density" in m.parameters) == method.density for m in config.models)
