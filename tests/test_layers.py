"""The import-layering contract: no module of ``canvas_ray/`` or ``serve/`` imports upward.

The layers, bottom to top (a module may import its own layer and those below it, never one above):

0. ``rows``: the row types and leaf utilities everything agrees on (:mod:`canvas_ray.schema`,
   :mod:`canvas_ray.rows`, :mod:`canvas_ray.records`, logs, the registry, compositing maths, URIs, image
   codecs).
1. ``config``: the config, styles, output profiles, backdrops, provenance.
2. ``io``: catalog readers, manifests, output writers, model loading and the tiny models.
3. ``outputs``: what reads a finished run (report, progress, publish).
4. ``quality``: the in-generation guard (it gets the segmenter and compositor it needs injected).
5. ``stages``: the stage classes.
6. ``spec``: the one pipeline spec (it names the stage classes).
7. ``drivers``: in-process, batch, cluster, training and evaluation drivers.
8. ``serve``: the online driver.
9. ``cli``: the command line, which starts every driver (``canvas-ray serve`` included).

Every import counts: module level, ``TYPE_CHECKING`` blocks and lazy imports inside functions. The graph is
read with :mod:`ast`, nothing is imported. A new module must be given a layer in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("canvas_ray", "serve")

# (layer name, module patterns): fnmatch patterns on dotted module names; the most specific match wins
# (an exact name over a pattern, a longer pattern over a shorter one).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "rows",
        (
            "canvas_ray",
            "canvas_ray.io",
            "canvas_ray.models",
            "canvas_ray.quality",
            "canvas_ray.stages",
            "canvas_ray.train",
            "canvas_ray.schema",
            "canvas_ray.rows",
            "canvas_ray.records",
            "canvas_ray.logs",
            "canvas_ray.registry",
            "canvas_ray.compose",
            "canvas_ray.matte",
            "canvas_ray.io.uris",
            "canvas_ray.io.images",
            "canvas_ray.testing",
            "canvas_ray.watch",
        ),
    ),
    (
        "config",
        (
            "canvas_ray.config",
            "canvas_ray.config_*",
            "canvas_ray.profiles",
            "canvas_ray.styles",
            "canvas_ray.style_*",
            "canvas_ray.backdrops",
            "canvas_ray.provenance",
            "canvas_ray.provenance_*",
        ),
    ),
    ("io", ("canvas_ray.io.*", "canvas_ray.models.*")),
    ("outputs", ("canvas_ray.report", "canvas_ray.progress", "canvas_ray.publish")),
    ("quality", ("canvas_ray.quality.*",)),
    ("stages", ("canvas_ray.stages.*",)),
    ("spec", ("canvas_ray.spec",)),
    (
        "drivers",
        (
            "canvas_ray.pipeline",
            "canvas_ray.batch",
            "canvas_ray.batch_*",
            "canvas_ray.cluster",
            "canvas_ray.pool_sizing",
            "canvas_ray.train.*",
            "canvas_ray.quality.evaluate",
            "canvas_ray.quality.evaluation",
            "canvas_ray.quality.evaluation.*",
        ),
    ),
    ("serve", ("serve", "serve.*")),
    ("cli", ("canvas_ray.cli", "canvas_ray.cli_*")),
]


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, dict[str, int]]:
    """Module → {imported module of ``packages``: line}, every import statement counted (lazy ones and
    ``TYPE_CHECKING`` ones too). ``from a.b import c`` is an import of ``a.b.c`` when that is a module."""
    modules = module_files(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        found: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                named = (f"{base}.{alias.name}" for alias in node.names)
                targets = [target if target in modules else base for target in named]
            for target in targets:
                if target.split(".")[0] in packages:
                    while target not in modules and "." in target:  # `import a.b.attr` → a.b
                        target = target.rsplit(".", 1)[0]
                    if target != name:
                        found.setdefault(target, node.lineno)
        graph[name] = found
    return graph


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> int | None:
    """The index of ``module``'s layer: an exact name first, else the longest matching pattern."""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for index, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            if pattern == module:
                return index
            if fnmatch.fnmatchcase(module, pattern) and (best is None or len(pattern) > best[0]):
                best = (len(pattern), index)
    return None if best is None else best[1]


def upward_imports(
    graph: dict[str, dict[str, int]], layers: list[tuple[str, tuple[str, ...]]] = LAYERS
) -> list[str]:
    """Each import of a module in a higher layer, as ``"importer (layer) -> imported (layer), line N"``."""
    found = []
    for module, imports in sorted(graph.items()):
        own = layer_of(module, layers)
        for target, line in sorted(imports.items()):
            theirs = layer_of(target, layers)
            if own is not None and theirs is not None and theirs > own:
                found.append(
                    f"{module} ({layers[own][0]}) -> {target} ({layers[theirs][0]}), line {line}"
                )
    return found


def test_every_module_has_a_layer() -> None:
    missing = [name for name in module_files(REPO) if layer_of(name) is None]
    assert not missing, f"give these modules a layer in tests/test_layers.py LAYERS: {missing}"


def test_no_module_imports_upward() -> None:
    upward = upward_imports(import_graph(REPO))
    assert not upward, "imports that run upward (move the shared code down, or inject it):\n" + "\n".join(
        upward
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    "source",
    [
        "from canvas_ray.stages.base import Status\n",  # plain
        "def f():\n    from canvas_ray.stages import base\n    return base\n",  # lazy, in a function
        # relative, for type checking only
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .stages.base import Batch\n",
        "import canvas_ray.stages.base.Status\n",  # a dotted name reaching into a module
    ],
)
def test_the_checker_catches_an_upward_import(tmp_path: Path, source: str) -> None:
    """A synthetic package whose bottom module imports a stage: the checker must report it."""
    _write(
        tmp_path,
        {
            "canvas_ray/__init__.py": "",
            "canvas_ray/rows.py": source,
            "canvas_ray/stages/__init__.py": "",
            "canvas_ray/stages/base.py": "from canvas_ray.rows import OK\nimport numpy\n",
        },
    )
    graph = import_graph(tmp_path, ("canvas_ray",))
    assert graph["canvas_ray.stages.base"] == {"canvas_ray.rows": 1}  # downward: fine, third party: ignored
    upward = upward_imports(graph)
    assert len(upward) == 1 and upward[0].startswith("canvas_ray.rows (rows) -> canvas_ray.stages.")


def test_the_layer_order_is_what_the_contract_says() -> None:
    order = [name for name, _ in LAYERS]
    assert order.index("rows") < order.index("io") < order.index("quality") < order.index("stages")
    assert order.index("stages") < order.index("drivers") < order.index("serve")
    assert layer_of("canvas_ray.io.uris") == order.index("rows")  # exact names beat patterns
    assert layer_of("canvas_ray.io.manifest") == order.index("io")
    assert layer_of("canvas_ray.quality.guard") == order.index("quality")
    assert layer_of("canvas_ray.quality.evaluation.metrics") == order.index("drivers")
    assert layer_of("serve.app") == order.index("serve")
    assert upward_imports({"canvas_ray.rows": {"canvas_ray.schema": 1}}) == []  # same layer: fine


MAX_LIBRARY_LINES = 400  # issue 22: files of one concern


def test_no_library_file_is_over_the_line_limit() -> None:
    long = {
        str(path.relative_to(REPO)): lines
        for path in module_files(REPO).values()
        if (lines := len(path.read_text().splitlines())) > MAX_LIBRARY_LINES
    }
    assert not long, f"split these by concern (at most {MAX_LIBRARY_LINES} lines each): {long}"
