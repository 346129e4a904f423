"""The import graph's rules (docs/ARCHITECTURE.md, "Imports"), read from the source with `ast`.

Every import counts, the lazy ones inside functions too: a rule is about what a module depends
on, not about when Python loads it.
  - no module of bert_jax/tasks/, bert_jax/modeling/ or experiments/ imports the trainer
    (bert_jax.train): tasks get a Predictor passed in, configs come from bert_jax.run_config;
  - bert_jax imports nothing from experiments/ (experiments name what to run; the library runs it);
  - bert_jax.run_config imports only ml_collections, the config dataclasses and the standard library;
  - data_pipelines does not import the model (bert_jax.modeling);
  - no import cycle inside data_pipelines;
  - bert_jax.sweep.plan imports no subprocess, scipy or matplotlib, and bert_jax.sweep.report no
    subprocess: only bert_jax.sweep.launch starts processes (docs/ARCHITECTURE.md, "Ablations").
"""

from __future__ import annotations

import ast
import sys

from tests.train_helpers import REPO

PACKAGES = ("bert_jax", "data_pipelines", "experiments")


def module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, object]:
    """{dotted module name: path} of every .py file under `package`."""
    return {module_name(p): p for p in sorted((REPO / package).rglob("*.py"))}


ALL = {name: path for package in PACKAGES for name, path in modules(package).items()}


def imports(name: str) -> set[str]:
    """The dotted names `name` imports. `from a import b` gives a.b when that is a module of
    ours, else a; relative imports are resolved against the module's package."""
    path = ALL[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in ALL else base)
    return found


def offenders(importers, imported) -> list[str]:
    """'a imports b' for every module a of `importers` importing a module b that `imported` accepts."""
    return [f"{a} imports {b}" for a in importers for b in sorted(imports(a)) if imported(b)]


def test_the_rules_read_lazy_and_relative_imports():
    # The readers must see what the rules are about, or the rules below pass vacuously.
    assert "bert_jax.tasks.pretraining" in ALL and "data_pipelines" in ALL
    assert "bert_jax.modeling.models" in imports("bert_jax.tasks.pretraining")  # a lazy import in make_model
    assert "bert_jax.train" in imports("bert_jax.main")


def test_no_task_model_or_experiment_imports_the_trainer():
    importers = [m for m in ALL if m.startswith(("bert_jax.tasks", "bert_jax.modeling", "experiments"))]
    assert offenders(importers, lambda b: b == "bert_jax.train") == []


def test_bert_jax_imports_nothing_from_experiments():
    importers = [m for m in ALL if m.startswith("bert_jax")]
    assert offenders(importers, lambda b: b == "experiments" or b.startswith("experiments.")) == []


def test_run_config_imports_only_ml_collections_and_the_config_dataclasses():
    allowed = {"ml_collections", "bert_jax.config", "__future__"}
    stdlib = set(sys.stdlib_module_names)
    assert offenders(["bert_jax.run_config"],
                     lambda b: b not in allowed and b.split(".")[0] not in stdlib) == []


def test_data_pipelines_does_not_import_the_model():
    importers = [m for m in ALL if m.startswith("data_pipelines")]
    assert offenders(importers, lambda b: b == "bert_jax.modeling" or b.startswith("bert_jax.modeling.")) == []


def test_no_import_cycle_inside_data_pipelines():
    ours = [m for m in ALL if m.startswith("data_pipelines")]
    graph = {m: sorted(b for b in imports(m) if b in ours and b != m) for m in ours}
    cycles, state = [], {}  # state: 1 = on the current path, 2 = done

    def visit(module, path):
        state[module] = 1
        for b in graph[module]:
            if state.get(b) == 1:
                cycles.append(" -> ".join(path[path.index(b):] + [b]))
            elif b not in state:
                visit(b, path + [b])
        state[module] = 2

    for module in ours:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_only_the_sweeps_launcher_starts_processes():
    assert "subprocess" in imports("bert_jax.sweep.launch")  # the reader sees the one that may
    sweep = ("bert_jax.sweep.launch", "bert_jax.sweep.cli", "bert_jax.sweep")
    assert offenders(["bert_jax.sweep.plan"], lambda b: b in ("subprocess", *sweep) or
                     b.split(".")[0] in ("scipy", "matplotlib") or b.startswith("bert_jax.sweep.report")) == []
    assert offenders(["bert_jax.sweep.report"], lambda b: b in ("subprocess", *sweep)) == []
