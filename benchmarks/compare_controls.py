"""Issue 24's table of controls, re-measured: each of the reference's 104 logged runs written as a run
folder of ours (unchanged, or changed in one controlled way) and judged by `compare`'s verdict.

    python benchmarks/compare_controls.py

One line per control: how many cells, how many flagged (any verdict but consistent), the verdicts and
the flagged cells per dataset. Takes a few seconds; tests/results/test_verdicts.py asserts the same.
"""
import collections
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' writer of such folders
from reference_runs import write_reference_run  # noqa: E402
from resbench.results.compare import match_runs  # noqa: E402
from resbench.results.reference import seed_runs  # noqa: E402
from resbench.runs.reader import find_run_folders  # noqa: E402

runs = seed_runs()
keys = sorted(runs)

def as_precision(folder, precision):
    config = json.loads((folder / "config.json").read_text())
    config["mixed_precision"] = "false" if precision == "fp32" else "true"
    config["resolved"] = {"precision": precision}
    (folder / "config.json").write_text(json.dumps(config))
    if (folder / "summary.json").exists():
        s = json.loads((folder / "summary.json").read_text()); s["precision"] = precision
        (folder / "summary.json").write_text(json.dumps(s))
    return folder

def as_decay(folder, wd):
    config = json.loads((folder / "config.json").read_text())
    config["optim_weight_decay"] = wd
    (folder / "config.json").write_text(json.dumps(config))
    return folder

def run_control(name, make, keys):
    tally, by = collections.Counter(), collections.Counter()
    for key in keys:
        tmp = Path(tempfile.mkdtemp())
        folder = make(tmp / "r", key)
        if folder is None:
            shutil.rmtree(tmp); continue
        cells, unmatched = match_runs(find_run_folders([folder]))
        key = key[0] if isinstance(key[0], tuple) else key
        assert len(cells) == 1, unmatched
        status = cells[0].verdict()["status"]
        tally[status] += 1
        if status not in ("consistent", "consistent so far"):
            by[key[0]] += 1
        shutil.rmtree(tmp)
    n = sum(tally.values())
    flagged = n - tally["consistent"] - tally["consistent so far"]
    print(f"| {name} | {n} | {flagged}/{n} | {dict(tally)} | {dict(by)}", flush=True)


def main() -> None:
    t0 = time.time()
    pairs = [k for k in keys if k[1] == 18]
    run_control("itself", lambda d, k: write_reference_run(d, runs[k]), keys)
    run_control("fp32/fp16 partner as itself", lambda d, k: as_precision(
        write_reference_run(d, runs[k[:4] + ("fp16" if k[4] == "fp32" else "fp32",)]), k[4]), pairs)
    decays = sorted({k[3] for k in keys})
    wd_keys = [(k, wd) for k in keys for wd in decays if wd != k[3]]
    def other_decay(d, kw):
        k, wd = kw
        return as_decay(write_reference_run(d, runs[k[:3] + (wd, k[4])]), k[3])
    run_control("another weight decay presented as this one (3 per run)", other_decay, wd_keys)
    shapes = sorted({k[1:3] for k in keys})
    shape_keys = [(k, s) for k in keys for s in shapes if s != k[1:3] and k[:1] + s + k[3:4] + ("fp32",) in runs]
    def other_shape(d, ks):
        k, s = ks
        return as_precision(write_reference_run(d, runs[k[:1] + s + k[3:4] + ("fp32",)], resnet_depth=k[1], resnet_width=k[2]), k[4])
    run_control("another depth or width's run (every other shape of the dataset and decay)", other_shape, shape_keys)
    for f in (1.01, 1.02, 1.03, 0.97):
        run_control(f"w_norm ×{f}", lambda d, k, f=f: write_reference_run(d, runs[k], shift={"trn_w_norm": (0, f)}), keys)
    for c in (-0.005, -0.01, -0.02, -0.03):
        run_control(f"final tst/acc {c:+}", lambda d, k, c=c: write_reference_run(d, runs[k], final={"tst_acc": c}), keys)
    run_control("trn_loss ×1.1", lambda d, k: write_reference_run(d, runs[k], shift={"trn_loss": (0, 1.1)}), keys)
    run_control("stopped at 5,000", lambda d, k: write_reference_run(d, runs[k], until=5000), keys)
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
