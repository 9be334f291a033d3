"""The docs, benchmarks/RESULTS.md and the package's docstrings name only what exists: every file path
(`device/bnstats.py`, `tests/test_layout.py`, a test `file.py::test_name`), every `resbench.module` and every
`--flag` (issue 39 found stale texts where modules and tests had moved)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from conftest import REPO, SRC
from resbench.cli.main import build_parser
from resbench.sweep.slurm import SBATCH_OPTIONS

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # not docs/reference/: the reference's, as published
# The texts whose every file and module must exist: the docs, the benchmarks' record, the package's docstrings.
TEXTS = [*DOCS, REPO / "benchmarks" / "RESULTS.md", *sorted((SRC / "resbench").rglob("*.py"))]
PATH = re.compile(r"[\w./-]*\w\.py\b")
TEST = re.compile(r"([\w./-]+\.py)::(\w+)")
PACKAGES = sorted(path.name for path in (SRC / "resbench").iterdir() if (path / "__init__.py").is_file())
# `resbench.device.bnstats`, or within the package `runs.reader` / `data.batches.TrainBatches`.
MODULE = re.compile(rf"`((?:resbench|{'|'.join(PACKAGES)})(?:\.\w+)+)")
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
# Files a text names that are no file of this project: the one a sweep's runs must never import.
NOT_OURS = {"torch.py"}
# Flags of the other tools the docs show beside resbench's: torchrun's, and sbatch's (`--slurm KEY=VALUE`).
TORCHRUN_FLAGS = {"--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port"}


def named_paths(path: Path) -> list[str]:
    """The .py paths a text names: all in a doc; in a module, those with a folder (its bare names are
    often others' scripts, as the reference's SGDM.py)."""
    found = PATH.findall(path.read_text())
    return [name for name in found if path.suffix == ".md" or "/" in name]


def exists(name: str, named_in: Path) -> bool:
    """A path from the repository's root, src/, the package's, or a module's own package
    (`recipes/imagenet.py` in data/recipes/); a bare file name anywhere in the project."""
    if "/" in name:
        roots = (REPO, SRC, SRC / "resbench", named_in.parent, named_in.parent.parent)
        return any((root / name).is_file() for root in roots)
    return any((REPO / folder).rglob(name) for folder in ("src", "tests", "benchmarks"))


def test_every_file_a_doc_or_docstring_names_exists():
    missing = [f"{path.relative_to(REPO)}: {name}" for path in TEXTS for name in named_paths(path)
               if name not in NOT_OURS and not exists(name, path)]
    tests = [f"{path.relative_to(REPO)}: {file}::{name}" for path in TEXTS for file, name in TEST.findall(path.read_text())
             if not exists(file, path) or f"def {name}(" not in (REPO / file).read_text()]
    assert missing + tests == []


def is_module(dotted: str) -> bool:
    """`device.bnstats` or a name in it (`data.facts.DATASETS`); `load_model`, a name of the package's face."""
    parts = ["resbench", *dotted.split(".")]
    for end in range(len(parts), 0, -1):
        base = SRC.joinpath(*parts[:end])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            return end == len(parts) or re.search(rf"\b{parts[end]}\b", module.read_text()) is not None
    return False


def test_every_module_a_doc_or_docstring_names_exists():
    missing = [f"{path.relative_to(REPO)}: {name}" for path in TEXTS
               for name in MODULE.findall(path.read_text()) if not is_module(name.removeprefix("resbench."))]
    assert missing == []


def resbench_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of every command, in both spellings."""
    found = set()
    for action in parser._actions:
        found |= {spelling for option in action.option_strings for spelling in (option, option.replace("_", "-"))}
        if isinstance(action, argparse._SubParsersAction):
            found |= {flag for command in action.choices.values() for flag in resbench_flags(command)}
    return found


def other_tools_flags(paragraph: str) -> set[str]:
    """The flags a paragraph may name of another tool: a benchmark script's it names, torchrun's, sbatch's, ray's."""
    scripts = re.findall(r"benchmarks/\w+\.py", paragraph)
    flags = {flag for script in scripts for flag in FLAG.findall((REPO / script).read_text())}
    if "torchrun" in paragraph:
        flags |= TORCHRUN_FLAGS
    if "sbatch" in paragraph or "SLURM" in paragraph:
        flags |= {f"--{option}" for option in SBATCH_OPTIONS}
    if "pip install" in paragraph or "torch wheel" in paragraph:
        flags |= {"--index-url"}
    if "ray start" in paragraph:
        flags |= {"--head", "--port", "--num-cpus", "--num-gpus"}
    return flags


def test_every_flag_a_doc_names_exists():
    ours = resbench_flags(build_parser())
    unknown = [f"{path.name}: {flag}" for path in DOCS for paragraph in path.read_text().split("\n\n")
               for flag in sorted(set(FLAG.findall(paragraph)) - ours - other_tools_flags(paragraph))]
    assert unknown == []


def test_the_readmes_python_imports_name_what_the_package_has():
    """The README's Python API is copied as written: each of its imports must resolve (and the model
    builder it shows must be the function, not its module)."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    imports = [line for block in blocks for line in block.splitlines() if line.startswith(("from resbench", "import resbench"))]
    assert imports
    namespace: dict = {}
    for line in imports:
        exec(line, namespace)
    assert callable(namespace["resnet"]) and callable(namespace["train"])
