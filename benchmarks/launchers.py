"""Wall time of one small grid through each sweep launcher, on this machine (issue 22's figures).

    python benchmarks/launchers.py [--runs 4] [--optim_ni 200]

The grid: `--runs` Digits runs (depth 8, batch 16, --threads 1), two at a time everywhere: local
`--jobs 2`; SLURM (a single-node cluster started here as the tests start it, two 1-CPU tasks at
once); Ray (the local cluster `--launcher ray` starts itself, `--cpus_per_run 1` on two CPUs).
Each from an empty runs folder to every run finished (SLURM: its folders polled every 0.2 s).
The overhead per run is (launcher's wall − local wall) × 2 / runs: what each of the runs, two at a
time, spent waiting on the launcher. Needs root, slurm-wlm and munge, and Ray; run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "sweep"))  # the clusters the tests start: one definition of them
from clusters import start_slurm, stop_slurm  # noqa: E402


def sweep(folder: Path, env: dict, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "resbench", "sweep", "--grid", "grid.toml", "--runs_dir", "runs",
                           *args, "--", "--resnet_depth", "8", "--batch_size", "16", "--eval_every", "50",
                           "--threads", "1"], cwd=folder, env=env, capture_output=True, text=True, check=True).stdout


def timed(folder: Path, env: dict, runs: int, *args: str, poll: bool = False) -> float:
    """Seconds from the sweep's start until every run has finished (a submitting sweep returns at once:
    then the run folders' summary.json files are polled every 0.2 s, which costs nothing, where
    `--status` would start a Python process each time beside the runs)."""
    start = time.monotonic()
    sweep(folder, env, *args)
    while poll and len(list(folder.glob("runs/Digits_x32/*/summary.json"))) < runs:
        time.sleep(0.2)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--optim_ni", type=int, default=200)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    root = Path(tempfile.mkdtemp(prefix="launchers-"))
    slurm = start_slurm(root / "slurm")
    results = {}
    try:
        for name, launcher_args, poll in (("local --jobs 2", ["--jobs", "2"], False),
                                          ("slurm", ["--launcher", "slurm"], True),
                                          ("ray (local cluster)", ["--launcher", "ray"], False)):
            folder = root / f"grid-{name.split()[0]}"
            folder.mkdir()
            (folder / "grid.toml").write_text(f'data_name = ["Digits_x32"]\nseed = {list(range(1, args.runs + 1))}\n'
                                              f'[flags]\noptim_ni = {args.optim_ni}\ndata_root = "{root / "data"}"\n')
            wall = timed(folder, {**env, **slurm.env}, args.runs, *launcher_args, poll=poll)
            trained = [json.loads(p.read_text())["wall_seconds"] for p in folder.glob("runs/Digits_x32/*/summary.json")]
            assert len(trained) == args.runs, f"{name}: {len(trained)} of {args.runs} runs finished"
            results[name] = {"wall_s": round(wall, 1), "mean_run_s": round(sum(trained) / len(trained), 1)}
            print(f"{name}: {wall:.1f} s for {args.runs} runs (each trained {results[name]['mean_run_s']} s)",
                  flush=True)
    finally:
        stop_slurm(slurm)
    local = results["local --jobs 2"]["wall_s"]
    for name, figures in results.items():
        figures["overhead_per_run_s"] = round((figures["wall_s"] - local) * 2 / args.runs, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
