"""The stages import only what comes before them (export < compile < runtime < engine < pipelines <
api < serve < tools), and the neutral modules (store, registries, backends, dtypes, the DiT graph
contract, media, checkpoints...) import no stage. The layout cannot drift back: every pipelines/ module
is a registered pipeline or an input only pipelines read, and no library code imports a command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ltx_ascend"
STAGES = ("export", "compile", "runtime", "engine", "pipelines", "api", "serve", "tools")
NEUTRAL = (
    "store", "components", "dtypes", "graph_lint", "shapes", "errors", "console", "atomic", "metrics", "checkpoints",
    "validation", "cpu_isa", "backends", "dit_graph", "media",
    "data",
)  # fmt: skip


def _imports(path: Path) -> set[str]:
    """ltx_ascend modules `path` imports at run time (imports under `if TYPE_CHECKING:` are types only)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ltx_ascend"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ltx_ascend")}
    return found


def _part(module: str) -> str:
    """The top-level part of ltx_ascend a dotted name is in (a stage, a neutral module or a tool)."""
    return [*module.split("."), ""][1]  # "" for the package itself


def _violations(allowed: dict[str, set[str]]) -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if part not in allowed:
            continue
        for module in sorted(_imports(path)):
            if _part(module) not in allowed[part] | {part}:
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    return bad


# Each stage may import the neutral modules and the stages before it, except that the runtime does not
# import export: a deployment host runs artifacts without the tracing machinery (ltx-core's export patches).
# The engine may (ltx-run --build-missing exports on demand); the pipelines drive the engine, not export.
ALLOWED = {
    **{n: set(NEUTRAL) for n in NEUTRAL},
    "export": set(NEUTRAL),
    "compile": {*NEUTRAL, "export"},
    "runtime": {*NEUTRAL, "compile"},
    "engine": {*NEUTRAL, "export", "compile", "runtime"},
    "pipelines": {*NEUTRAL, "runtime", "engine"},
    "api": {*NEUTRAL, "engine"},
    "__init__": {"api"},
    "serve": {*NEUTRAL, "runtime", "engine", "pipelines", "api"},
}


def test_imports_point_down_the_stages():
    assert _violations(ALLOWED) == []


def test_the_check_sees_a_wrong_way_import(tmp_path):
    """A runtime module importing export (what issue 9 removed) is reported."""
    fake = tmp_path / "ltx_ascend"
    (fake / "runtime").mkdir(parents=True)
    (fake / "runtime" / "x.py").write_text("from ltx_ascend.export.items import ExportItem\n")
    (fake / "runtime" / "y.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ltx_ascend.export import dit\n"
    )
    globals()["PACKAGE"] = fake
    try:
        assert _violations(ALLOWED) == ["ltx_ascend/runtime/x.py imports ltx_ascend.export.items.ExportItem"]
    finally:
        globals()["PACKAGE"] = Path(__file__).resolve().parents[1] / "ltx_ascend"


def _all_imports(path: Path) -> set[str]:
    """Every ltx_ascend module `path` names in an import, wherever: inside functions and under
    `if TYPE_CHECKING:` too (relative imports resolved against the file's package)."""
    package = ".".join(path.relative_to(PACKAGE.parent).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            if base.startswith("ltx_ascend"):
                found |= {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ltx_ascend")}
    return found


def _files(*parts: str) -> list[Path]:
    files = []
    for part in parts:
        target = PACKAGE / part
        files += sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
    return [f for f in files if f.exists()]


def test_the_dit_graph_contract_imports_no_stage():
    """ltx_ascend/dit_graph: what export traces and the runner feeds; neither side's code, not even for types."""
    files = _files("dit_graph")
    assert files, "ltx_ascend/dit_graph is gone"
    bad = [f"{f.name} imports {m}" for f in files for m in _all_imports(f) if _part(m) in STAGES]
    assert bad == []


def test_the_runtime_never_imports_export():
    """Not at run time, not inside a function, not for type checking: a deployment host has no export."""
    bad = [f"{f} imports {m}" for f in _files("runtime") for m in _all_imports(f) if _part(m) == "export"]
    assert bad == []


@pytest.mark.parametrize("module", ["engine/dit_runner", "engine/parallel"])
def test_the_dit_runner_reads_the_graph_contract_not_export(module):
    """The DiT runner and its parallel seams take the graphs' names and modules from ltx_ascend.dit_graph."""
    (path,) = _files(module)
    assert [m for m in _all_imports(path) if _part(m) == "export"] == []


def test_the_whole_file_check_sees_hidden_imports(tmp_path):
    """An import inside a function or under TYPE_CHECKING, and a relative one, are all seen."""
    fake = tmp_path / "ltx_ascend" / "runtime"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ltx_ascend.export import dit\n"
        "def f():\n    from ..export.items import ExportItem\n    import ltx_ascend.export.dit_split\n"
    )
    globals()["PACKAGE"] = tmp_path / "ltx_ascend"
    try:
        assert _all_imports(fake / "x.py") == {
            "ltx_ascend.export.dit",
            "ltx_ascend.export.items.ExportItem",
            "ltx_ascend.export.dit_split",
        }
    finally:
        globals()["PACKAGE"] = Path(__file__).resolve().parents[1] / "ltx_ascend"


@pytest.mark.parametrize("part", STAGES)
def test_no_stage_imports_a_cli_module(part):
    """Library code never reaches into another stage's command-line module."""
    for path in (PACKAGE / part).rglob("*.py"):
        for module in _imports(path):
            stage = _part(module)
            assert not (stage != part and module.split(".")[2:3] == ["cli"]), f"{path} imports {module}"


def test_every_registered_component_has_its_loader_builder_and_runtime_method():
    """The registry is the one place a component is described: each entry names things that exist."""
    import importlib

    from ltx_ascend.checkpoints.loader import configurator_of
    from ltx_ascend.components import REGISTRY
    from ltx_ascend.engine.stack import ModelStack

    for spec in REGISTRY.values():
        if spec.export is not None:
            module, _, fn = spec.export.partition(":")
            assert callable(getattr(importlib.import_module(module), fn)), spec.name
        assert callable(getattr(ModelStack, spec.runtime)), spec.name
        if spec.weights is not None:
            assert configurator_of(spec.name) is not None


def test_pipelines_holds_the_pipelines_and_what_only_they_use():
    """pipelines/ is what a user opens first: the registered pipelines and the inputs only they read."""
    from ltx_ascend.engine.stages import PIPELINES

    registered = {path.rsplit(".", 1)[1] for path in PIPELINES.values()}
    modules = {p.stem for p in (PACKAGE / "pipelines").glob("*.py")} - {"__init__"}
    assert registered <= modules, registered - modules
    used_elsewhere = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "pipelines":
            continue
        for module in _imports(path):
            parts = module.split(".")
            if parts[1:2] == ["pipelines"] and len(parts) > 2 and parts[2] in modules - registered:
                used_elsewhere.setdefault(parts[2], []).append(str(path.relative_to(PACKAGE)))
    assert used_elsewhere == {}, used_elsewhere
    users = {m: 0 for m in modules - registered}
    for path in (PACKAGE / "pipelines").glob("*.py"):
        for module in _imports(path):
            name = module.split(".")[2] if module.startswith("ltx_ascend.pipelines.") else None
            if name in users:
                users[name] += 1
    assert all(users.values()), f"pipelines/ modules no pipeline imports: {[m for m, n in users.items() if not n]}"


def test_library_code_never_imports_a_command():
    """tools/ are the commands (ltx-run is tools/run.py): nothing below them imports one. The flags ltx-run,
    ltx-prepare and ltx-serve share are engine/argv.py."""
    bad = [
        f"{path.relative_to(PACKAGE.parent)} imports {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "tools"
        for module in sorted(_imports(path))
        if _part(module) == "tools"
    ]
    assert bad == []


def test_every_registered_pipeline_resolves_to_a_spec():
    """The pipeline registry names only modules that exist, each declaring its stages."""
    from ltx_ascend.engine.stages import PIPELINES, PipelineSpec, pipeline_spec

    for name in PIPELINES:
        assert isinstance(pipeline_spec(name), PipelineSpec), name
