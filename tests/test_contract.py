"""The method contract (methods/base.py) and the package's layering, checked against the registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import ModuleType

import pytest

from reasondistill.cli import build_parser
from reasondistill.config import ConfigError, build_config
from reasondistill.methods import METHODS, get_method
from reasondistill.methods.base import Method, as_method

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "reasondistill"
NOT_METHODS = {"__init__", "base", "onpolicy"}  # the registry, the contract, the shared RL stack


def test_every_method_file_is_registered_and_every_registered_method_loads():
    files = {p.stem for p in (PKG / "methods").glob("*.py")} - NOT_METHODS
    assert files == set(METHODS)
    for name in METHODS:
        m = get_method(name)
        assert isinstance(m, Method) and m.name == name and m.doc


def test_every_method_has_a_readme_row_naming_its_file():
    rows = dict(re.findall(r"^\| `(\w+)` \| `(methods/\w+\.py)` \|", (ROOT / "README.md").read_text(), re.M))
    assert set(rows) == set(METHODS), f"README method table vs registry: {set(rows) ^ set(METHODS)}"
    for name, path in rows.items():
        assert (PKG / path).exists() and path == f"methods/{name}.py"


def test_cli_method_choices_are_the_registry():
    sub = next(a for a in build_parser()._actions if a.dest == "cmd" or getattr(a, "choices", None)
               and "train" in (a.choices or {}))
    train = sub.choices["train"]
    method_arg = next(a for a in train._actions if a.dest == "method")
    assert tuple(method_arg.choices) == METHODS


def test_needs_teacher_is_derived_from_the_config_only():
    assert {n for n in METHODS if not get_method(n).needs_teacher} == {"sft", "grpo", "grpo_pp"}
    for name in METHODS:  # declared once: no module-level flag beside the config
        assert not hasattr(get_method(name).module, "NEEDS_TEACHER")


def test_optional_hooks_get_defaults_and_missing_pieces_are_refused():
    mod = ModuleType("reasondistill.methods.toy", "A toy method (docstring required).")
    from dataclasses import dataclass

    from reasondistill.config import TrainConfig

    @dataclass
    class Config(TrainConfig):
        teacher: str | None = None

    mod.Config, mod.prepare = Config, lambda ctx, ex: None
    with pytest.raises(TypeError, match="lacks loss"):
        as_method(mod)
    mod.loss = lambda ctx, micro, totals: (0.0, {})
    m = as_method(mod)
    assert m.setup(None) is None and m.finalize_step(None, []) is None
    assert m.required_fields(Config()) == ("question",) and not m.needs_teacher
    mod.__doc__ = ""
    with pytest.raises(TypeError, match="docstring"):
        as_method(mod)


@pytest.mark.parametrize("name,key,value", [("grpo", "loss_type", "ppo"), ("cmdp", "budget_mode", "mean"),
                                            ("gkd", "beta", "2"), ("kd", "temperature", "0"),
                                            ("sft", "optim", "sgd"), ("gkd_grpo", "lmbda", "-1"),
                                            ("cmdp", "scale_rewards", "batch"), ("grpo", "bootstrap_steps", "3"),
                                            ("sft", "tokenizer_compat", "loose"), ("sft", "report_to", "mlflow"),
                                            ("sft", "prompt_template", "no placeholder"),
                                            ("sft", "load_in_4bit", "true"), ("sft", "num_iterations", "0"),
                                            ("sft", "dataset", "arith:foo=1"), ("sft", "lora_dropout", "1.5"),
                                            ("sft", "eval_size", "-5"), ("sft", "num_train_epochs", "-2"),
                                            ("sft", "save_total_limit", "0"), ("sft", "eval_dataset", "arith:size=x"),
                                            ("cmdp", "bootstrap_steps", "3|num_iterations=2")])
def test_every_config_error_is_a_config_error_naming_the_key(name, key, value):
    first, *more = value.split("|")
    with pytest.raises(ConfigError, match=key):
        build_config(get_method(name).Config, overrides=[f"{key}={first}", *more])


def _imports(path: Path, module: str) -> set[str]:
    """Every reasondistill module ``path`` imports (module level and inside functions)."""
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out |= {f"{target}.{a.name}" for a in node.names} | {target}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("reasondistill")}


def _graph() -> dict[str, set[str]]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return {m: {d for d in _imports(p, m) if d in mods and d != m} for m, p in mods.items()}


def test_the_import_graph_has_no_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(u, stack):
        state[u] = "open"
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack + [v])
        state[u] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_only_the_top_layer_imports_the_engine():
    """The loop is imported by the CLI and the orchestrators (demo, pipelines/) only: no module
    below them reaches into it for a helper."""
    importers = {m for m, deps in _graph().items() if "reasondistill.engine" in deps}
    assert importers <= {"reasondistill.cli", "reasondistill.demo"} | {m for m in importers if ".pipelines." in m}
    # the orchestrators are imported by the CLI only (and by each other: api_commands wires the API stages)
    assert {m for m, deps in _graph().items() if any(".pipelines" in d for d in deps)
            and ".pipelines." not in m} <= {"reasondistill.cli"}
