"""The package's layers (docs/ARCHITECTURE.md) as a test: each module of src/ctfgen imports only the
modules its layer may, at the top of a file or inside a function alike."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ctfgen"

# What each top-level module or package, and each module or package of experiments/, benchmarks/
# and apps/, may import from ctfgen (besides itself). Lower layers first;
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
    # benchmarks: measure the stages (speed, memory, a loss's cost, edit quality, the GPU check)
    "benchmarks": set(),
    "benchmarks.aux_loss": BASE | {"artifacts", "cluster", "codes", "data", "dist", "models", "run_state", "tokenizer",
                                   "train"},
    "benchmarks.edit": BASE | {"artifacts", "benchmarks.edit_config", "cluster", "codes", "data", "evaluate", "models",
                               "sample"},
    "benchmarks.edit_config": BASE,  # torch-free settings: the command line reads them
    "benchmarks.gpucheck": BASE | {"artifacts", "benchmarks.aux_loss", "benchmarks.speed", "cluster", "codes", "dist",
                                   "models", "sample", "train"},
    "benchmarks.speed": BASE | {"artifacts", "benchmarks.speed_presets", "cluster", "data", "dist", "models", "sample",
                                "tokenizer"},
    # torch-free settings of the benches: the command line makes their flags from them
    "benchmarks.settings": BASE | {"benchmarks.speed_presets", "models"},
    "benchmarks.speed_presets": set(),  # torch-free: the command line checks --preset against it
    "benchmarks.speed_sweep": BASE | {"artifacts", "benchmarks.speed", "cluster", "data", "dist", "models", "sample",
                                      "tokenizer"},
    "benchmarks.train_speed": BASE | {"artifacts", "cluster", "codes", "data", "dist", "models", "run_state",
                                      "tokenizer", "train"},
    # experiments: run the line end to end for a result; they may use the benchmarks' tools
    "experiments": set(),
    "experiments.analyze": BASE | {"cluster", "tokenizer"},
    "experiments.demo": BASE | {"artifacts", "data", "evaluate", "experiments.demo_report", "experiments.recipe",
                                "experiments.workspace", "sample"},
    "experiments.demo_report": BASE | {"artifacts", "experiments.reporting"},
    "experiments.quality": BASE | {"artifacts", "data", "evaluate", "experiments.recipe", "experiments.reporting",
                                   "experiments.workspace", "models", "sample"},
    "experiments.recipe": BASE | {"cluster", "data", "models"},
    "experiments.reporting": BASE | {"artifacts"},
    "experiments.sample_scores": BASE | {"artifacts", "evaluate", "sample"},
    "experiments.scaling": BASE | {"artifacts", "benchmarks.gpucheck", "cluster", "codes", "data", "evaluate",
                                   "experiments.recipe", "experiments.reporting", "experiments.workspace", "models",
                                   "sample", "tokenizer", "train"},
    "experiments.workspace": BASE | {"artifacts", "cluster", "codes", "data", "evaluate", "experiments.recipe",
                                     "experiments.reporting", "experiments.sample_scores", "models", "sample",
                                     "tokenizer", "train"},
    # apps: the command line and the web page
    "apps": set(),
    "apps.cli": None,  # the top: anything
    "apps.web": BASE | {"artifacts", "data", "sample"},
    "__main__": {"apps.cli"},
    "__init__": {"errors"},
}


# The packages that hold one layer's units: each module or sub-package of these is a row of ALLOWED of
# its own ("experiments.demo"), so that the table can say, e.g., that the experiments do not import
# each other.
GROUPS = {"experiments", "benchmarks", "apps"}


def unit(parts: list[str]) -> str:
    """The row of ALLOWED of a module given by its path or dotted parts below ctfgen."""
    names = [p.removesuffix(".py") for p in parts]
    if names[0] in GROUPS and len(names) > 1 and names[1] != "__init__":
        return f"{names[0]}.{names[1]}"
    return names[0]


def top_level(path: Path) -> str:
    return unit(list(path.relative_to(SRC).parts))


def ctfgen_imports(path: Path, root: Path = SRC) -> set[str]:
    """The units of ctfgen (rows of ALLOWED) a file imports (relative or absolute imports, anywhere in it)."""
    rel = path.relative_to(root)
    package = list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ctfgen":
            parts = node.module.split(".")[1:]
        elif isinstance(node, ast.Import):
            found += [a.name.split(".")[1:] for a in node.names if a.name.startswith("ctfgen.")]
            continue
        else:
            continue
        if not parts or (len(parts) == 1 and parts[0] in GROUPS):
            found += [parts + [alias.name] for alias in node.names]  # `from . import x`: x is the module
        else:
            found.append(parts)
    return {unit(parts) for parts in found}


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
    # the test above must be able to fail: imports inside functions, relative and absolute, are seen,
    # and a module inside a group package counts as its own unit
    (tmp_path / "models").mkdir()
    f = tmp_path / "models" / "x.py"
    f.write_text("from ..errors import CtfgenError\n\n\ndef g():\n    from ..sample.sampler import pick\n"
                 "    import ctfgen.train.checkpoint\n    from ctfgen import demo\n    from . import gpt\n"
                 "    from ..experiments.scaling.study import ARMS\n    from ctfgen.benchmarks import speed\n"
                 "    from ..apps import cli\n")
    assert ctfgen_imports(f, root=tmp_path) == {"errors", "sample", "train", "demo", "models", "experiments.scaling",
                                                "benchmarks.speed", "apps.cli"}
