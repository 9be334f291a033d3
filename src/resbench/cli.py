"""Placeholder command line registering only ``resbench data``; replaced by the full CLI at merge."""

from __future__ import annotations

import argparse

from resbench import fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="resbench")
    subparsers = parser.add_subparsers(dest="command", required=True)
    fetch.add_data_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)
