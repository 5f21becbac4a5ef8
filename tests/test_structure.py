"""Import directions inside `rest/` (docs/design.md, "The contract between modules"): models <- diffusion, streaming <-
pipelines <- serve, commands; training beside pipelines, never under them; metrics score and train nothing; the
networks a loss uses live with the models; the stage hand-offs (rest/exports.py) sit between models and both sides.

Every module is parsed with `ast`, so imports inside functions count too, and a relative import is resolved against
the module's package. A failure names each offending file:line.
"""

import ast
from pathlib import Path

import pytest

REST = Path(__file__).resolve().parents[1] / "rest"

# Where a module lives (a package of rest/, or a top-level module) -> the parts of rest it must not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "rest.models": (
        "rest.data",
        "rest.diffusion",
        "rest.streaming",
        "rest.exports",
        "rest.pipelines",
        "rest.training",
        "rest.metrics",
        "rest.serve",
        "rest.commands",
        "rest.bench",
    ),
    "rest.diffusion": (
        "rest.streaming",
        "rest.exports",
        "rest.pipelines",
        "rest.training",
        "rest.metrics",
        "rest.serve",
        "rest.commands",
        "rest.bench",
    ),
    "rest.streaming": (
        "rest.exports",
        "rest.pipelines",
        "rest.training",
        "rest.metrics",
        "rest.serve",
        "rest.commands",
        "rest.bench",
    ),
    "rest.exports": (
        "rest.streaming",
        "rest.pipelines",
        "rest.training",
        "rest.metrics",
        "rest.serve",
        "rest.commands",
        "rest.bench",
    ),
    "rest.data": ("rest.pipelines", "rest.training", "rest.metrics", "rest.serve", "rest.commands", "rest.bench"),
    "rest.pipelines": ("rest.training", "rest.metrics", "rest.serve", "rest.commands", "rest.bench"),
    "rest.serve": ("rest.training", "rest.metrics", "rest.commands", "rest.bench"),
    "rest.bench": ("rest.training", "rest.commands"),
    "rest.training": ("rest.metrics", "rest.pipelines", "rest.serve", "rest.commands", "rest.bench"),
    "rest.metrics": ("rest.training", "rest.serve", "rest.commands", "rest.bench"),
    "rest.avatar": ("rest.serve", "rest.commands", "rest.bench"),
}


def module_name(path: Path, root: Path = REST) -> str:
    """rest/metrics/fid.py -> rest.metrics.fid; rest/metrics/__init__.py -> rest.metrics."""
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `source`, at any depth. `from a import b` yields `a.b` as well as
    `a` (b may be a submodule); a relative import is resolved against `module`'s package."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            found.append((node.lineno, origin))
            found += [(node.lineno, f"{origin}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(source_prefix: str) -> list[str]:
    """file:line lines of the modules under `source_prefix` that import one of its forbidden parts of rest."""
    out: dict[tuple[str, int, str], str] = {}  # one line per import statement and rule
    for path in sorted(REST.rglob("*.py")):
        module = module_name(path, REST)
        if not _within(module, source_prefix):
            continue
        where = str(path.relative_to(REST.parent))
        for line, name in imported_modules(path.read_text(), module, path.name == "__init__.py"):
            for bad in FORBIDDEN[source_prefix]:
                if _within(name, bad) and (where, line, bad) not in out:
                    out[where, line, bad] = f"{where}:{line}: imports {name} ({source_prefix} -/-> {bad})"
    return [out[key] for key in sorted(out)]


@pytest.mark.parametrize("source_prefix", sorted(FORBIDDEN))
def test_import_directions(source_prefix):
    found = violations(source_prefix)
    assert not found, "imports against the layering (tests/test_structure.py, FORBIDDEN):\n" + "\n".join(found)


def test_every_forbidden_layer_exists():
    """A renamed package would make its rule pass vacuously."""
    names = {module_name(p) for p in REST.rglob("*.py")}
    for prefix in {*FORBIDDEN, *(bad for bads in FORBIDDEN.values() for bad in bads)}:
        assert any(_within(n, prefix) for n in names), f"{prefix} matches no module under rest/"


def test_the_checker_sees_every_form_of_import():
    """Plain, from, relative, aliased, and inside a function: all resolve to the module imported."""
    source = (
        "import rest.metrics.fid as fid\n"
        "from rest.metrics import syncnet\n"
        "from rest import training\n"
        "def f():\n"
        "    from ..metrics.lipsync_gt import MouthRegressor\n"
        "    from . import student\n"
    )
    names = imported_modules(source, "rest.training.vae")
    assert (1, "rest.metrics.fid") in names and (2, "rest.metrics.syncnet") in names
    assert (3, "rest.training") in names
    assert (5, "rest.metrics.lipsync_gt") in names and (6, "rest.training.student") in names
    assert (2, "rest.metrics") in imported_modules("x = 1\nfrom .. import metrics\n", "rest.training", True)
    assert module_name(REST / "metrics" / "__init__.py") == "rest.metrics"
    assert module_name(REST / "exports.py") == "rest.exports"


def test_metrics_train_nothing():
    """Training code (an optimizer, a backward pass) lives in rest/training; rest/metrics only scores. A metric may
    fit a closed-form read-out (a ridge regression), never run gradient steps."""
    found = []
    for path in sorted((REST / "metrics").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and (
                node.attr == "backward" or (node.attr == "optim" and getattr(node.value, "id", "") == "torch")
            ):
                found.append(f"{path.relative_to(REST.parent)}:{node.lineno}: {node.attr}")
    assert not found, "training code in rest/metrics:\n" + "\n".join(found)
