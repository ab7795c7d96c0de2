"""Tests of flowad.tables: the benchmark's category table over seeds (mean and sample standard deviation)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from flowad.cli import main
from flowad.tables import Spread, format_table, seed_tables, spread


def test_spread_is_the_mean_and_the_sample_standard_deviation() -> None:
    assert spread([0.8, 0.9, 1.0]) == pytest.approx(Spread(0.9, 0.1, 3))  # ddof=1: sqrt(0.02 / 2)
    assert spread([0.7]) == Spread(0.7, None, 1)  # one seed: no standard deviation
    assert spread([None, 0.5, 0.7]) == pytest.approx(Spread(0.6, math.sqrt(0.02), 2))  # undefined values left out
    assert spread([None]) == Spread(None, None, 0)


def test_the_mean_row_spreads_the_seeds_means_over_categories() -> None:
    results = {
        "a": {0: {"image_auroc": 0.6, "iou": None}, 1: {"image_auroc": 0.8, "iou": None}},
        "b": {0: {"image_auroc": 1.0, "iou": None}, 1: {"image_auroc": 0.8, "iou": None}},
    }
    rows, runs = seed_tables(results, ("image_auroc", "iou"))
    assert [r["category"] for r in rows] == ["a", "b", "mean"]
    assert rows[-1]["image_auroc"] == pytest.approx(Spread(0.8, 0.0, 2))  # the seeds' means are 0.8 and 0.8
    assert rows[0]["image_auroc"] == pytest.approx(Spread(0.7, math.sqrt(0.02), 2))
    assert [(r["category"], r["seed"]) for r in runs] == [(c, s) for c in ("a", "b", "mean") for s in (0, 1)]
    assert format_table(rows, "csv").splitlines()[:2] == [
        "category,seeds,image_auroc_mean,image_auroc_std,iou_mean,iou_std",
        "a,2,0.7000,0.1414,n/a,n/a",
    ]
    assert "| a | 2 | 0.7000 ± 0.1414 | n/a |" in format_table(rows, "markdown")
    one_seed, _ = seed_tables({"a": {5: {"image_auroc": 0.6}}}, ("image_auroc",))
    assert "0.6000 ± n/a" in format_table(one_seed)


@pytest.mark.parametrize("seeds", [["0", "0"], ["-1"]])
def test_bad_seeds_are_refused_before_any_work(seeds: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(tmp_path), "--out", str(out), "--seeds", *seeds]) == 2
    assert f"--seeds {' '.join(seeds)}: expected one or more different integers >= 0" in capsys.readouterr().err
    assert not out.exists()
