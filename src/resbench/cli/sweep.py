"""`resbench sweep`: the plan of a grid, then its runs, one `resbench train` subprocess each (sweep/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from resbench.console import printable, say
from resbench.device import cpus
from resbench.errors import ResbenchError
from resbench.sweep.cluster import check_outputs
from resbench.sweep.grid import READY_GRIDS, load_grid, with_seeds
from resbench.sweep.local import execute_all, gpu_slots
from resbench.sweep.plan import data_to_prepare, describe_plan, plan_runs, time_estimate
from resbench.sweep.ray_cluster import run_on_ray
from resbench.sweep.slurm import (
    STOP_BEFORE_LIMIT_S,
    Submission,
    describe_submission,
    job_plan,
    own_launch_folder,
    sbatch_argv,
    slurm_options,
    submit,
)
from resbench.sweep.status import status_report


def train_flags(remainder: list[str]) -> list[str]:
    """Train flags given after `--` (argparse keeps the separator in a REMAINDER argument)."""
    if remainder and remainder[0] != "--":
        raise ResbenchError(f"unexpected argument {remainder[0]!r}; put train flags after `--`")
    return remainder[1:]


# Flags that mean something to one launcher only: given to another, they would be ignored.
LAUNCHER_OF_FLAG = {"--slurm": ("slurm",), "--stop_before_limit_s": ("slurm",), "--address": ("ray",),
                    "--cpus_per_run": ("ray",), "--jobs": ("local",)}
MAX_SIGNAL_SECONDS = 65535  # the most sbatch's --signal=SIG@TIME takes


def check_launcher_flags(args: argparse.Namespace) -> None:
    if args.jobs < 1 or args.cpus_per_run < 1 or args.gpus_per_run < 0:
        raise ResbenchError("--jobs and --cpus_per_run must be at least 1, --gpus_per_run at least 0")
    if not 1 <= args.stop_before_limit_s <= MAX_SIGNAL_SECONDS:
        raise ResbenchError(f"--stop_before_limit_s must be from 1 to {MAX_SIGNAL_SECONDS} seconds, got "
                            f"{args.stop_before_limit_s}")
    given = {"--slurm": bool(args.slurm), "--stop_before_limit_s": args.stop_before_limit_s != STOP_BEFORE_LIMIT_S,
             "--address": args.address is not None, "--cpus_per_run": args.cpus_per_run != 1,
             "--jobs": args.jobs != 1, "--gpus_per_run": args.gpus_per_run != 0}
    for flag, launchers in LAUNCHER_OF_FLAG.items():
        if given[flag] and args.launcher not in launchers:
            raise ResbenchError(f"{flag} is a flag of --launcher {' or '.join(launchers)}, not of --launcher "
                                f"{args.launcher}")


def processes_per_run(args: argparse.Namespace) -> int:
    """The data-parallel processes of each run: one per GPU of --gpus_per_run, at least one."""
    return max(args.gpus_per_run, 1)


def threads_per_run(args: argparse.Namespace) -> int | None:
    """The --threads each process of a run gets unless its train flags set them: the processes at once share
    the cores (local --jobs N, each run's --gpus_per_run processes), a Ray task's processes the CPUs it
    reserves; under SLURM, the trainer's default (its allocation)."""
    processes = processes_per_run(args)
    if args.launcher == "ray":
        return max(1, args.cpus_per_run // processes)
    at_once = args.jobs * processes
    return cpus.threads_per_job(at_once) if args.launcher == "local" and at_once > 1 else None


def run(args: argparse.Namespace) -> int:
    check_launcher_flags(args)
    options = slurm_options(args.slurm or [])
    source = f"{args.grid} grid" if args.grid in READY_GRIDS else f"grid {args.grid}"
    threads, processes = threads_per_run(args), processes_per_run(args)
    grid = with_seeds(load_grid(args.grid, processes), args.seeds, source)
    runs = plan_runs(grid, args.runs_dir, train_flags(args.train_flags), source, threads, check=not args.status,
                     processes=processes, here=args.launcher == "local")
    if args.status:
        say(status_report(runs))
        return 0
    todo = [run for run in runs if run.state != "finished"]
    check_outputs(todo)
    slots = gpu_slots(args.jobs, args.gpus_per_run) if args.launcher == "local" and todo else None
    # The submission made (and so checked: every path and option) before anything is printed or submitted.
    submission = slurm_submission(todo, options, args) if args.launcher == "slurm" and todo else None
    say(describe_plan(runs, args.jobs, show_commands=args.dry_run, launcher=args.launcher))
    if args.launcher == "local" and threads is not None and todo:
        say(f"sweep: {args.jobs} runs at a time on {cpus.available_cores()} cores: --threads {threads} each "
            "(unless the train flags set --threads)")
    if args.dry_run and todo:
        print_dry_run(todo, submission, args.jobs)
    if args.dry_run or not todo:
        return 0
    if args.launcher == "local" and (busy := cpus.busy_warning(threads=todo[0].config.threads)):
        say(busy)  # (not for a plan: the machine's load then is not the runs' load)
    return launch(todo, submission, args, slots)


def slurm_submission(todo: list, options: dict[str, str | None], args: argparse.Namespace) -> Submission:
    """sbatch's command line and the plan it names, for the runs `todo`."""
    launch = own_launch_folder(args.runs_dir, create=False)
    name, plan = job_plan(todo)
    argv = sbatch_argv(todo, options, launch, name, args.gpus_per_run, args.stop_before_limit_s)
    return Submission(argv, name, plan, launch)


def print_dry_run(todo: list, submission: Submission | None, jobs: int) -> None:
    downloads = data_to_prepare(todo)
    say("data: " + ("every dataset is prepared" if not downloads else "to download and prepare:"))
    say("\n".join([*downloads, time_estimate(todo, jobs)]))
    if submission is not None:
        say(describe_submission(submission.argv, submission.launch), end="")


def launch(todo: list, submission: Submission | None, args: argparse.Namespace, slots=None) -> int:
    """Hand the unfinished runs to the launcher; for local and Ray, wait for them and report. `slots`: the
    GPUs of the local runs at once (local.gpu_slots)."""
    if submission is not None:
        job = submit(todo, submission, args.runs_dir)
        say(f"sweep: submitted SLURM job array {job} ({len(todo)} tasks); its script, plan and output are in "
            f"{printable(submission.launch)}. Watch it with the same command and --status.")
        return 0
    if args.launcher == "ray":
        failures = run_on_ray(todo, args.address, args.cpus_per_run, args.gpus_per_run)
    else:
        failures = execute_all(todo, args.jobs, slots)
    say(f"sweep: {len(todo) - len(failures)} of {len(todo)} runs finished")
    for run, reason in failures:
        say(f"  failed: {printable(run.save)} ({printable(reason)})")
    return 1 if failures else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench sweep [--grid seed|FILE.toml] [--runs_dir DIR] [--jobs N] [--dry_run] [-- TRAIN FLAGS]`."""
    p = subparsers.add_parser(
        "sweep", help="train a grid of configurations (skips finished runs, resumes broken ones)",
        description="Train every configuration of a grid, each in <runs_dir>/<data_name>/<run name>. "
                    "Train flags after `--` are passed to every run, e.g. `-- --optim_ni 2000`.")
    p.add_argument("--grid", default="seed",
                   help="; ".join(f"`{name}`: {what}" for name, what in READY_GRIDS.items()).replace("%", "%%")
                        + "; or a TOML file with lists of data_name, precision (fp32/fp16/bf16) and any train "
                          "setting (resnet_depth, seed, optim_lr, ...) and a [flags] table")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="run every grid point once per seed, e.g. --seeds 42 43 44 (table and compare then show "
                        "mean ± std and 95%% intervals)")
    p.add_argument("--runs_dir", type=Path, default=Path("runs"), help="where run folders go (default: ./runs)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at the same time on the one device, each with --threads cores/N")
    p.add_argument("--dry_run", action="store_true",
                   help="print the plan, the train commands, the datasets to download and a time estimate; "
                        "run nothing")
    p.add_argument("--launcher", choices=["local", "slurm", "ray"], default="local",
                   help="local: subprocesses here; slurm: one sbatch job array, a task per run, requeued "
                        "when stopped; ray: one Ray task per run on a Ray cluster (--address) or a local one")
    p.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                   help="an sbatch option for every task, one per flag, e.g. --slurm partition=gpu --slurm "
                        "time=12:00:00 --slurm gres=gpu:1 (no quote, backslash or control character in a value); the "
                        "options the sweep sets itself (array, output, error, chdir, job-name, open-mode, requeue, "
                        "signal, wait) are refused")
    p.add_argument("--stop_before_limit_s", type=int, default=STOP_BEFORE_LIMIT_S, metavar="SECONDS",
                   help="--launcher slurm: SIGTERM each run this long before its time limit, when it saves last.pt "
                        f"and its task requeues itself (default: {STOP_BEFORE_LIMIT_S}; SLURM sends it up to a "
                        "minute early)")
    p.add_argument("--address", default=None,
                   help="--launcher ray: the Ray cluster's address (HOST:PORT, ray://HOST:PORT or auto); "
                        "without it a local cluster is started")
    p.add_argument("--gpus_per_run", type=int, default=0,
                   help="GPUs each run trains on, one process each, data parallel under torchrun when more than 1 "
                        "(with --device cpu among the train flags, as many CPU processes, gloo). local: the runs at "
                        "once get disjoint GPUs; slurm: each array task asks for them (gres); ray: each task "
                        "reserves them on one node. --grid imagenet keeps the reference's per-device BatchNorm "
                        "(2 GPUs at 32 px, 4 at 64 px) whatever N divides them, with --bn_groups for the rest")
    p.add_argument("--cpus_per_run", type=int, default=1, help="--launcher ray: CPUs each run reserves (its --threads)")
    p.add_argument("--status", action="store_true",
                   help="the state of every run of the grid (finished, running, queued, stopped, failed, new), "
                        "read from the run folders alone; starts nothing")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- followed by train flags for every run")
    p.set_defaults(func=run)
    return p
