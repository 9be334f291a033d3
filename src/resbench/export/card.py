"""The model card (the exported folder's README.md) and the index of a sweep's exports.

The card opens with the Hub's YAML header, whose `model-index` block makes the Hub show the test
and validation figures; then what a reader must know before using the weights: whether the run
finished and sits on a reference cell (said at the top when it does not), its figures beside the
published ones with compare's verdict, how to load it, how it was trained, its data, its limits,
the files' digest and what to cite. Every scalar of the YAML header is written as a JSON string
(a valid YAML double-quoted scalar), so no name can break out of it.
"""

from __future__ import annotations

import json
from typing import Any

from resbench.console import clock, printable
from resbench.data.batches import PAD
from resbench.export.source import Source, train_command
from resbench.results.compare import markdown_table, match_runs, render_markdown
from resbench.results.noise import published_figure
from resbench.results.reference import REFERENCE_SETTINGS, table_reference
from resbench.version import __version__
from resbench.weights import layout

FIGURES = (("val_acc", "val/acc", "validation", "accuracy"), ("tst_acc", "tst/acc", "test", "accuracy"),
           ("tst_nll", "tst/nll", "test", "nll"))
REFERENCE_CITATION = """\
@misc{giung2dev_residual_networks,
  author = {cs-giung},
  title = {giung2-dev: projects/residual-networks (JAX/Flax)},
  year = {2023},
  howpublished = {\\url{https://github.com/cs-giung/giung2-dev/tree/main/projects/residual-networks}}
}"""


def figure_text(value: Any) -> str:
    """A figure as the card's tables print it; "n/a" where there is none (not recorded, or not finite:
    `source.best_figures` made it None)."""
    return "n/a" if not isinstance(value, (int, float)) else f"{value:.4f}"


def model_index(source: Source) -> list[str]:
    """The YAML header: tags for search, and one model-index result per split with its figures."""
    q = json.dumps
    lines = ["---", "library_name: resbench", "pipeline_tag: image-classification",
             "tags:", *(f"- {q(tag)}" for tag in ("resbench", "resnet", "image-classification", source.spec.name)),
             "model-index:", f"- name: {q(source.name)}", "  results:"]
    for split in ("validation", "test"):
        metrics = [(label, kind, source.figures[key]) for key, label, where, kind in FIGURES
                   if where == split and isinstance(source.figures[key], (int, float))]
        if not metrics or (source.spec.val_is_test and split == "validation"):
            continue  # where validation is the test set, its figures are the test figures: listed once
        lines += ["  - task:", "      type: image-classification", "      name: Image Classification",
                  "    dataset:", f"      name: {q(source.spec.name)}", f"      type: {q(source.spec.name)}",
                  f"      split: {'validation' if source.spec.val_is_test else split}", "    metrics:"]
        lines += [f"    - type: {kind}\n      name: {q(label)}\n      value: {value:.6g}"
                  for label, kind, value in metrics]
    return [*lines, "---"]


def warnings(source: Source) -> list[str]:
    """What a reader must see first: a run that did not finish, diverged, or has no reference cell."""
    ni, found = source.run.setting("optim_ni"), []
    if source.status == "diverged":
        found.append(f"**This run diverged** (its loss stopped being finite after iteration {source.last_iteration}): "
                     f"these are the weights of its best evaluation before, at iteration {source.figures['iter']}.")
    elif source.status != "finished":
        why = ("it has no summary.json: stopped, or still training when exported" if source.status == "running"
               else f"its summary.json says {source.status}")
        found.append(f"**This run did not finish** ({why}): its last evaluation was at iteration "
                     f"{source.last_iteration} of {ni}, and these are the best weights so far, of iteration "
                     f"{source.figures['iter']}.")
    if source.no_reference:
        found.append(f"**Not on a reference cell**: {source.no_reference}. No published figure compares with it.")
    return [line for text in found for line in (f"> {text}", ">")][:-1] + ([""] if found else [])


def results(source: Source) -> list[str]:
    """Our row beside the published one, and compare's verdict on the cell (this one run)."""
    figures, run = source.figures, source.run
    rows = [[f"this model (seed {run.setting('seed')}, iteration {figures['iter']})",
             *(figure_text(figures[key]) for key, *_ in FIGURES), f"{source.params:,}"]]
    cell = source.cell
    if cell is not None:
        published = table_reference(cell.reference)
        rows.append([f"reference ({cell.label}, published)",
                     *(f"{published_figure(cell.reference, key):.4f}".rstrip("0") for key, *_ in FIGURES),
                     f"{published.params:,}"])
    lines = ["## Results", "", *markdown_table(["", *(label for _, label, *_ in FIGURES), "params"], rows), ""]
    if cell is not None:
        lines += [f"`resbench compare`'s verdict: {cell.verdict_text()}", ""]
    else:
        lines += [f"No reference run to compare with ({source.no_reference}); the reference's cells train "
                  f"{REFERENCE_SETTINGS['optim_ni']:,} iterations of batch {REFERENCE_SETTINGS['batch_size']} "
                  "(docs/reference/seed-results.md).", ""]
    return lines + ["val/acc selects the checkpoint (the best of the evaluations); tst/acc and tst/nll are "
                    "that checkpoint's, as the reference reports them.", ""]


def usage(source: Source) -> list[str]:
    size = source.spec.image_size
    return ["## How to use", "", "```python", "import resbench", "",
            f'model = resbench.load_model("{source.name}")  # this folder, or its Hub id (pip install "resbench[hub]")',
            f"logits = model(images)  # float RGB in [0, 1], shape (N, 3, {size}, {size}); it normalises them itself",
            "```", "",
            "`resbench eval --ckpt FOLDER` scores it (`--corruptions`, `--ood`; several folders: their ensemble). "
            f"The network is resbench's ResNet-{source.run.depth} of width {source.run.width} (config.json), "
            "in inference mode; the weights hold no pickle.", ""]


def training(source: Source) -> list[str]:
    summary, run = source.summary or {}, source.run
    wall = summary.get("wall_seconds")
    lines = ["## Training", "", "```bash", train_command(source), "```", "",
             "(`--save` and `--data_root`, paths of the machine that trained it, left out.)", "",
             f"- seed {run.setting('seed')}, precision {run.precision}, {source.last_iteration:,} of "
             f"{run.setting('optim_ni'):,} iterations; status: {source.status}",
             f"- device: {printable(summary.get('device') or 'not recorded (no summary.json)')}"
             + (f", {summary['world_size']} processes" if summary.get("world_size", 1) > 1 else ""),
             f"- wall time: {clock(wall)} in the training loop" if isinstance(wall, (int, float))
             else "- wall time: not recorded (the run has no summary.json)"]
    versions = summary.get("versions") or {}
    if versions:
        lines.append("- versions: " + ", ".join(f"{printable(k)} {printable(v)}" for k, v in versions.items()))
    return lines + [""]


def data(source: Source) -> list[str]:
    spec = source.spec
    origin = " (imported with `resbench data import`)" if spec.imported else ""
    every = f"evaluated every {source.run.setting('eval_every'):,} iterations"
    if spec.val_is_test:
        split = (f"Trained on all {spec.num_train:,} images of its training file, with random crops ({PAD}-pixel "
                 f"padding) and horizontal flips; the checkpoint was selected on the {spec.num_test:,} images of the "
                 f"official validation set ({every}), which is also its test set, as in the reference: its test "
                 "figures are test-selected.")
    else:
        split = (f"Trained on the first {spec.num_train:,} images of its prepared training file, with random crops "
                 f"({PAD}-pixel padding) and horizontal flips; the checkpoint was selected on the {spec.num_val:,} "
                 f"images after them (validation, {every}) and tested on the {spec.num_test:,} images of its test "
                 "file.")
    return ["## Data", "", f"{spec.name}{origin}: {spec.num_classes} classes, {spec.image_size}×{spec.image_size} "
            f"RGB. {split}", ""]


def limits(source: Source) -> list[str]:
    return ["## Intended use and limits", "",
            "A research baseline: a reference point for methods trained with the same recipe, and a subject for "
            "calibration and robustness studies. It was trained on low-resolution images of "
            f"{source.spec.num_classes} classes only: inputs of another size, range or kind give meaningless "
            "outputs; it was not evaluated for deployment, fairness or safety; its accuracy drops under corruptions "
            "and other shifts (`resbench eval --corruptions --ood` measures how much). It is one run of one seed: "
            "differences between configurations smaller than the seeds' spread are not evidence "
            "(`resbench compare` judges several seeds of a cell).", ""]


def card(source: Source, curves_note: str | None) -> str:
    """The README.md of an export; `curves_note` says why the training curves were not drawn (None: they were)."""
    lines = [*model_index(source), "",
             f"# ResNet-{source.run.depth} x{source.run.width} on {source.spec.name} ({source.run.precision}), "
             "trained with resbench", "", *warnings(source), *results(source), *usage(source), *training(source),
             *data(source), "## Training curves", "",
             f"![training curves]({layout.CURVES})" if curves_note is None
             else f"The curves were not drawn: {curves_note}.", "", *limits(source),
             "## Files", "", f"- `{layout.MODEL}` SHA-256 `{source.sha256}`",
             f"- `{layout.CONFIG}`: the network, the training settings and the figures", "",
             "## Citation", "",
             "The recipe and the published figures are the reference's; cite it, and resbench for this PyTorch "
             "reimplementation:", "", "```bibtex", REFERENCE_CITATION,
             "@software{resbench,", "  title = {resbench: residual-network baselines on small-image benchmarks},",
             f"  version = {{{__version__}}},", "  note = {PyTorch reimplementation of giung2-dev's residual-networks}",
             "}", "```"]
    return "\n".join(lines) + "\n"


def index_card(sources: list[Source], skipped: list[tuple[str, str]]) -> str:
    """The README.md of a sweep's exports: one row per exported folder, compare's cells and verdicts
    (the finished runs of a cell judged together), and the runs not exported with the reason."""
    rows = [[f"[{s.name}]({s.name}/{layout.CARD})", s.spec.name, f"R{s.run.depth}x{s.run.width}", s.run.precision,
             str(s.run.setting("seed")), *(figure_text(s.figures[key]) for key, *_ in FIGURES), f"{s.params:,}",
             f"`{s.sha256[:12]}`"] for s in sources]
    cells, unmatched = match_runs([s.run for s in sources])
    models = f"{len(sources)} trained model{'s' * (len(sources) != 1)}"
    lines = ["# resbench exports", "", f"{models}, one folder each (weights, config.json, model card); load one with "
             "`resbench.load_model(FOLDER)`.", "",
             *markdown_table(["model", "data", "network", "precision", "seed", *(label for _, label, *_ in FIGURES),
                              "params", "SHA-256"], rows), "",
             "## Against the reference", "", render_markdown(cells, unmatched, curves=False).rstrip(), ""]
    if skipped:
        lines += ["## Not exported", "", *(f"- {name}: {why}" for name, why in skipped), ""]
    return "\n".join(lines)
