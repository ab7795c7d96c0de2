"""The papers' table: one model trained and tested on every category of a data set, then one row each.

With ``seeds`` every category is trained once per seed, in ``OUT/<category>/seed-<k>``, and the table gives
each metric's mean and sample standard deviation over the seeds (see :mod:`flowad.tables`); without, one run
per category in ``OUT/<category>``, trained with seed 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowad import distributed
from flowad.checkpoint import atomic_write
from flowad.data.spec import DataSpec, list_categories
from flowad.errors import InputError
from flowad.evaluation import test
from flowad.ranges import RANGES
from flowad.records import EngineSettings, TrainRequest
from flowad.tables import category_table, format_table, seed_tables
from flowad.training import train

SEED_TABLE = "table_seeds.csv"  # with several seeds: a row per category and seed


def benchmark(
    model: str,
    data: str | Path,
    out: str | Path,
    categories: Sequence[str] | None = None,
    layout: str = "mvtec",
    force: bool = False,
    settings: EngineSettings | None = None,
    per_category: dict[str, dict[str, Any]] | None = None,
    seeds: Sequence[int] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Train and test ``model`` on every category of a data set; writes OUT/table.csv and OUT/table.md
    (and, with ``seeds``, OUT/table_seeds.csv) and returns the table's rows.

    ``per_category`` maps a category to options that replace ``options`` for it (per-category settings).
    With ``seeds`` each row's metrics are :class:`~flowad.tables.Spread` values over the seeds.
    """
    out = Path(out)
    _check_seeds(seeds)
    for own in [{}, *(per_category or {}).values()]:  # every category's options checked before any work
        TrainRequest(
            model, DataSpec(str(data), layout=layout), {**options, **own}, settings=settings or EngineSettings()
        )
    names = list(categories or list_categories(data, layout))
    jobs = [(c, s) for c in names for s in (seeds if seeds is not None else [None])]
    share = distributed.shard(jobs)  # under torchrun each process takes its share of the runs
    results = {}
    with distributed.alone():
        for category, seed in share:
            own = {**options, **(per_category or {}).get(category, {})}
            run_dir = out / category if seed is None else out / category / f"seed-{seed}"
            run = train(model, data, run_dir, category, layout, seed or 0, force=force, settings=settings, **own)
            results[category, seed] = test(run, settings=settings)
    gathered = {job: r for part in distributed.all_gather(results) for job, r in part.items()}
    return _write_tables(out, names, seeds, gathered)


def _write_tables(
    out: Path, names: list[str], seeds: Sequence[int] | None, results: dict[tuple[str, int | None], dict[str, Any]]
) -> list[dict[str, Any]]:
    """The table of ``results[category, seed]``, written to OUT by the main process; returns its rows."""
    if seeds is None:
        rows = category_table({c: results[c, None] for c in names})
        runs = None
    else:
        rows, runs = seed_tables({c: {s: results[c, s] for s in seeds} for c in names})
    if distributed.is_main():
        atomic_write(out / "table.csv", format_table(rows, "csv"))
        atomic_write(out / "table.md", format_table(rows, "markdown"))
        if runs is not None:
            atomic_write(out / SEED_TABLE, format_table(runs, "csv"))
    return rows


def _check_seeds(seeds: Sequence[int] | None) -> None:
    if seeds is None:
        return
    if not seeds or len(set(seeds)) != len(seeds) or not all(RANGES["seed"].holds(s) for s in seeds):
        raise InputError(f"--seeds {' '.join(map(str, seeds))}: expected one or more different integers >= 0")
