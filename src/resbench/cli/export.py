"""`resbench export RUN_DIR OUT_DIR` and `resbench export --sweep RUNS_DIR OUT_DIR`: weights to publish
(export/), with the one line that publishes them."""

from __future__ import annotations

import argparse
from pathlib import Path

from resbench.console import log, printable, say
from resbench.weights.layout import CARD


def run(args: argparse.Namespace) -> int:
    from resbench.export.card import figure_text
    from resbench.export.write import export_run, export_sweep

    if args.sweep:
        sources = export_sweep(args.source, args.out_dir, lambda name: log(printable(f"exported {name}")))
        log(f"{len(sources)} run{'s' * (len(sources) != 1)} exported, index in {printable(args.out_dir / CARD)}")
    else:
        source = export_run(args.source, args.out_dir)
        log(f"{source.name}: {source.status}, best val/acc {figure_text(source.figures['val_acc'])} at iteration "
            f"{source.figures['iter']}; SHA-256 of the weights {source.sha256}")
    say(printable(args.out_dir))
    log(printable(f"publish it with huggingface_hub's command (resbench handles no token): "
                  f"hf upload YOUR_NAME/{args.out_dir.resolve().name} {args.out_dir}"))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench export RUN_DIR OUT_DIR` | `resbench export --sweep RUNS_DIR OUT_DIR`."""
    p = subparsers.add_parser(
        "export", help="weights to publish: model.safetensors, config.json and a model card with the figures",
        description="Write a run's best-validation weights as a folder to publish on the Hugging Face Hub: "
                    "model.safetensors (no pickle), config.json (the network, the training settings, the figures), "
                    "README.md (a model card: the figures beside the published ones with compare's verdict, the "
                    "training command, data, limits, citation, the weights' SHA-256) and the training curves "
                    "(with matplotlib). Load it with resbench.load_model(OUT_DIR) or score it with "
                    "`resbench eval OUT_DIR`. OUT_DIR is written whole or not at all, and replaces only an earlier "
                    "export.")
    p.add_argument("source", type=Path, metavar="RUN_DIR", help="the run folder (with --sweep: a folder of runs)")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the folder to write (missing, empty, or an export)")
    p.add_argument("--sweep", action="store_true",
                   help="export every finished run below RUN_DIR, one folder each in OUT_DIR, with an index "
                        "(README.md: the cells' figures and verdicts; index.json)")
    p.set_defaults(func=run)
    return p
