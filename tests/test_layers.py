"""The package's layers (docs/ARCHITECTURE.md) as a test: each module of src/ctfgen imports only the
modules its layer may, at the top of a file or inside a function alike."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ctfgen"

# What each top-level module or package may import from ctfgen (besides itself). Lower layers first;
# docs/ARCHITECTURE.md explains the order.
BASE = {"errors", "config", "filecheck", "lazy", "memory", "progress", "__version__"}
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "filecheck": {"errors"},
    "dist": {"errors"},
    "lazy": set(),
    "memory": set(),
    "progress": set(),
    "run_state": set(),
    "safe_write": {"errors"},
    "artifacts": BASE | {"run_state", "safe_write"},
    "data": BASE | {"artifacts"},
    "llamagen_files": BASE | {"artifacts"},
    "tokenizer": BASE | {"artifacts", "data", "dist", "llamagen_files", "run_state"},
    "cluster": BASE | {"artifacts", "tokenizer"},
    "models": BASE | {"artifacts"},
    "llamagen_gpt": BASE | {"artifacts", "llamagen_files", "models", "tokenizer"},
    "codes": BASE | {"artifacts", "data", "dist"},
    "sample": BASE | {"artifacts", "cluster", "data", "dist", "models", "tokenizer"},
    "train": BASE | {"artifacts", "cluster", "codes", "data", "dist", "models", "run_state", "tokenizer"},
    "evaluate": BASE | {"artifacts", "cluster", "codes", "data", "models", "sample"},
    "analyze": BASE | {"cluster"},
    "reporting": BASE | {"artifacts"},
    "report": BASE | {"artifacts", "reporting"},
    "recipe": BASE | {"cluster", "data", "models"},
    "experiment_scores": BASE | {"artifacts", "evaluate", "sample"},
    "experiment": BASE | {"artifacts", "cluster", "codes", "data", "evaluate", "experiment_scores", "models", "recipe",
                          "reporting", "sample", "tokenizer", "train"},
    "demo": BASE | {"artifacts", "data", "evaluate", "experiment", "recipe", "report", "sample"},
    "quality": BASE | {"artifacts", "data", "evaluate", "experiment", "models", "recipe", "reporting", "sample"},
    "scaling": BASE | {"artifacts", "cluster", "codes", "data", "evaluate", "experiment", "gpucheck", "models",
                       "recipe", "reporting", "sample", "tokenizer", "train"},
    "gpucheck": BASE | {"artifacts", "cluster", "codes", "dist", "models", "sample", "train"},
    "web": BASE | {"artifacts", "data", "sample"},
    "cli": None,  # the top: anything
    "__main__": {"cli"},
    "__init__": {"errors"},
}


def top_level(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def ctfgen_imports(path: Path, root: Path = SRC) -> set[str]:
    """The top-level ctfgen modules a file imports (relative or absolute imports, anywhere in it)."""
    rel = path.relative_to(root)
    package = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                found.add(parts[0])
            else:  # `from . import x` at the top of the package
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ctfgen":
            parts = node.module.split(".")
            found.add(parts[1] if len(parts) > 1 else node.names[0].name)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("ctfgen.") and len(a.name.split(".")) > 1)
    return {m.removesuffix(".py") for m in found}


def test_every_module_imports_only_its_layers():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        mod = top_level(path)
        assert mod in ALLOWED, f"{path.relative_to(SRC)}: module '{mod}' has no layer in ALLOWED (and ARCHITECTURE.md)"
        allowed = ALLOWED[mod]
        if allowed is None:
            continue
        extra = ctfgen_imports(path) - allowed - {mod}
        if extra:
            bad.append(f"{path.relative_to(SRC)} imports {sorted(extra)}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_layers_have_no_cycle():
    # a module's allowed imports, followed transitively, never lead back to it
    graph = {m: (deps if deps is not None else set()) - {m} for m, deps in ALLOWED.items()}
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            assert m != start, f"the layering lets '{start}' reach itself"
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))


def test_the_checker_sees_imports_anywhere(tmp_path):
    # the test above must be able to fail: imports inside functions, relative and absolute, are seen
    (tmp_path / "models").mkdir()
    f = tmp_path / "models" / "x.py"
    f.write_text("from ..errors import CtfgenError\n\n\ndef g():\n    from ..sample.sampler import pick\n"
                 "    import ctfgen.train.checkpoint\n    from ctfgen import demo\n    from . import gpt\n")
    assert ctfgen_imports(f, root=tmp_path) == {"errors", "sample", "train", "demo", "models"}
