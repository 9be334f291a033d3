"""The package's layout rules: floors that import only downwards, no circle of modules, the run
folder's names spelled in one place, short modules and functions, no alias of a module name.

Every import counts: at module level, inside a function (a lazy import) and under TYPE_CHECKING,
since each of them ties the two modules together as much as any other.
"""

import ast
from pathlib import Path

from conftest import SRC
from resbench.runs import schema
from resbench.weights import layout

PACKAGE = SRC / "resbench"
# Bottom to top: a package imports only packages on a lower floor (and itself).
FLOORS = [
    {"errors", "files", "console", "version"},  # plain helpers, no torch
    {"settings"},  # TrainConfig and the train flags: plain values
    {"data", "models"},  # datasets as tensors; the networks
    {"device"},  # how a run computes: hot path, processes, memory, threads
    {"runs"},  # the run folder: written crash-safe, read back
    {"weights"},  # exported weights read back as a model: resbench.load_model and eval load no training code
    {"evaluate", "results"},  # scoring a checkpoint; tables, comparisons, plots from run folders
    {"export"},  # run folders as folders to publish: weights, config.json, model card with compare's verdict
    {"train"},  # the loop
    {"sweep"},  # many runs, locally or on a cluster
    {"bench"},  # training speed against a run's
    {"cli"},  # the command line
    {"__main__", "__init__"},  # `python -m resbench`; the package's face
]
FLOOR_OF = {name: level for level, names in enumerate(FLOORS) for name in names}
FILE_NAMES = {schema.CONFIG, schema.METRICS, schema.LOG, schema.LAST, schema.BEST, schema.SUMMARY, schema.STDOUT,
              schema.LOCK, *schema.SAVED_EVAL.values()}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path) for path in modules()}


def imports_in(source: str) -> set[str]:
    """The resbench modules a module's source imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES
            found |= submodules if len(submodules) == len(node.names) else {node.module, *submodules}
    return {name for name in found if name in MODULES}


def floor_of(module: str) -> str:
    """`settings` for resbench.settings.flags; `errors` for resbench.errors; `__init__` for resbench."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_import_is_seen_lazy_ones_too():
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from resbench.runs import schema\n"
              "def f():\n    from resbench.settings.config import TrainConfig\n    import resbench.device.cpus\n")
    assert imports_in(source) == {"resbench.runs.schema", "resbench.settings.config",
                                  "resbench.device.cpus"}


def test_every_package_stands_on_a_floor():
    assert {floor_of(name) for name in MODULES} - set(FLOOR_OF) == set()


def test_packages_import_only_the_floors_below():
    upward = sorted(f"{module_name(path)} -> {imported}" for path in modules()
                    for imported in imports_in(path.read_text())
                    if floor_of(imported) != floor_of(module_name(path))
                    and FLOOR_OF[floor_of(imported)] >= FLOOR_OF[floor_of(module_name(path))])
    assert upward == []


def test_no_module_imports_itself_back():
    graph = {module_name(path): imports_in(path.read_text()) - {module_name(path)} for path in modules()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    assert [name for name in graph if reaches(name, name, set())] == []


def test_a_module_is_imported_under_its_own_name():
    aliased = sorted(f"{module_name(path)}: {alias.name} as {alias.asname}" for path in modules()
                     for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                     for alias in node.names if alias.asname and alias.asname != alias.name.rpartition(".")[2]
                     and (f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name) in MODULES)
    assert aliased == []


def strings_in(path: Path) -> set[str]:
    """The string literals of a module, but not the text parts of f-strings (`f".{archive}.lock"` is
    no run folder's lock)."""
    tree = ast.parse(path.read_text())
    parts = {id(value) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for value in node.values}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts}


def test_the_run_folders_file_names_are_spelled_in_runs_only():
    spelled = {str(path.relative_to(PACKAGE)): sorted(strings_in(path) & FILE_NAMES) for path in modules()
               if path.parent.name != "runs"}
    assert {name: found for name, found in spelled.items() if found} == {}


def test_the_exported_folders_file_names_are_spelled_in_weights_layout_only():
    names = {layout.MODEL, layout.CARD, layout.CURVES, layout.INDEX}
    spelled = {str(path.relative_to(PACKAGE)): sorted(strings_in(path) & names) for path in modules()
               if path != PACKAGE / "weights" / "layout.py"}
    assert {name: found for name, found in spelled.items() if found} == {}


def test_only_the_command_line_and_the_train_flags_use_argparse():
    users = {module_name(p) for p in modules() if "import argparse" in p.read_text()}
    assert {name for name in users if not name.startswith("resbench.cli.")} <= {"resbench.settings.flags"}


def test_run_folders_and_results_read_settings_without_the_flag_module():
    """A run folder's settings and a table's cells are plain values (settings.config); the flags' parser,
    and a run's settings assembled from flags (train.assemble), are the commands' business."""
    users = sorted(f"{module_name(path)} -> {imported}" for path in modules()
                   if floor_of(module_name(path)) in ("runs", "results")
                   for imported in imports_in(path.read_text()) if imported == "resbench.settings.flags")
    assert users == []


def test_the_networks_take_plain_values_not_a_runs_settings():
    """models/ builds and packs networks for train, bench and load_model alike: what it needs of a run's
    settings comes as arguments, so that it never depends on the trainer's TrainConfig."""
    users = sorted(f"{module_name(path)} -> {imported}" for path in modules() if floor_of(module_name(path)) == "models"
                   for imported in imports_in(path.read_text()) if floor_of(imported) == "settings")
    assert users == []


def test_modules_and_functions_stay_short():
    long_modules = [str(p.relative_to(PACKAGE)) for p in modules() if len(p.read_text().splitlines()) > 400]
    long_functions = [f"{p.relative_to(PACKAGE)}:{node.name}" for p in modules()
                      for node in ast.walk(ast.parse(p.read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno >= 80]
    assert (long_modules, long_functions) == ([], [])
