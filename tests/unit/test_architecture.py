"""The package's dependency rules, read from the source (every import statement, at module
level or inside a function): entry and orchestration -> stages -> services -> foundations,
stages never import another stage (they meet through storage, kakugo.layout), and no
import cycle anywhere in kakugo."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kakugo"
LAYERS = {  # what each top-level module or package is; a module imports its layer or below
    "foundation": {"config", "languages", "storage", "layout", "errors", "ids", "logs",
                   "prompts", "install_fixups", "accelerators", "vllm_plugin"},
    "service": {"teacher", "serving", "models", "costs", "steps"},
    "stage": {"generate", "dataset", "train", "serve", "evaluate"},
    "entry": {"cli", "run", "report", "results", "publish", "config_reference"},
}
RANK = {"foundation": 0, "service": 1, "stage": 2, "entry": 3}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The kakugo modules `name` imports (an imported name that is a module counts as it)."""
    def known_prefix(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            if target.startswith("kakugo"):
                module = known_prefix(target)
                if module and module != name:
                    out.add(module)
    return out


def top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def layer(module: str) -> str:
    unit = top(module)
    for kind, names in LAYERS.items():
        if unit in names:
            return kind
    raise AssertionError(f"{module}: not in any layer of test_architecture.LAYERS")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    for module in graph():
        if module != "kakugo":
            layer(module)


def test_stages_never_import_another_stage_and_layers_point_down():
    wrong = []
    for module, targets in graph().items():
        if module == "kakugo":
            continue
        for target in targets:
            if target == "kakugo":
                continue
            a, b = layer(module), layer(target)
            if a == b == "stage" and top(module) != top(target):
                wrong.append(f"{module} -> {target} (stage into another stage)")
            elif RANK[b] > RANK[a]:
                wrong.append(f"{module} ({a}) -> {target} ({b})")
    assert wrong == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_kakugo():
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_are_for():
    """The walker sees function-level imports, and a cycle and a stage-to-stage import are
    reported (on a made-up graph)."""
    known = modules()
    costs = imports("kakugo.costs", known["kakugo.costs"], known)
    assert "kakugo.layout" in costs
    assert "kakugo.accelerators" in imports(  # imported inside a function there
        "kakugo.evaluate.runner", known["kakugo.evaluate.runner"], known)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    with pytest.raises(AssertionError, match="not in any layer"):
        layer("kakugo.newthing")
