"""The reference's published figures as the package ships them (results/reference.py): the seed's table and
the ImageNet rows, the same as docs/reference/."""

from __future__ import annotations

from conftest import REPO
from resbench.results.reference import reference_rows


def test_reference_table_is_the_seed_table():
    rows = reference_rows()
    assert len(rows) == 26
    assert (rows[0].data_name, rows[0].params, rows[0].tst_nll) == ("CIFAR10_x32", 272_464, 0.278)
    assert (rows[-1].precision, rows[-1].wall_min) == ("fp16", 66.9)


def test_the_reference_is_shipped_and_agrees_with_the_package():
    from resbench.results.reference import reference_rows
    from resbench.results.table import render_tables

    docs = REPO / "docs" / "reference"
    shipped = (docs / "seed-runs.tsv").read_text()
    assert shipped == (REPO / "src" / "resbench" / "results" / "reference_results.tsv").read_text()
    summaries = [{"data_name": r.data_name, "depth": r.depth, "width": r.width, "precision": r.precision,
                  "params": r.params, "val_acc": r.val_acc, "tst_acc": r.tst_acc, "tst_nll": r.tst_nll,
                  "wall_seconds": r.wall_min * 60, "config": None, "status": "finished"} for r in reference_rows()]
    tables = (docs / "seed-results.md").read_text().split("```\n\n", 1)[1].strip()
    assert render_tables(summaries) == tables
    readme = (REPO / "README.md").read_text()
    assert "https://github.com/cs-giung/giung2-dev/tree/main/projects/residual-networks" in readme
    assert "docs/reference/" in readme and (docs / "recipe.md").is_file()


def test_the_imagenet_reference_is_shipped_and_agrees_with_the_package():
    """docs/reference/imagenet-x.md's tables of the logs are the package's ImageNet rows (imagenet_results.tsv)."""
    from resbench.results.reference import imagenet_rows


    text = (REPO / "docs" / "reference" / "imagenet-x.md").read_text()
    assert "[imagenet-x.md](imagenet-x.md)" in (REPO / "docs" / "reference" / "README.md").read_text()
    logged = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0].startswith("ImageNet1k") and cells[2] == "1e-4":
            logged[(cells[0], int(cells[1]))] = (cells[3].split()[0], cells[4], cells[5], int(cells[6]), cells[7])
    assert {key: value[1:] for key, value in logged.items()} == {
        (r.data_name, r.depth): (f"{r.tst_nll:.3f}", f"{r.wall_min / 60:.2f}", r.devices, f"{r.params:,}")
        for r in imagenet_rows()}
    for row in imagenet_rows():  # the README's val/acc, the log's to 4 decimals; tst/acc is the same figure here
        assert round(float(logged[(row.data_name, row.depth)][0]), 3) == row.val_acc == row.tst_acc
