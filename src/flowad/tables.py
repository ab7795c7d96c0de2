"""The benchmark's tables: a row per category and their mean, as aligned text, Markdown or CSV.

With several seeds each cell is a :class:`Spread`: the mean over the seeds and the sample standard deviation
(ddof=1), written ``0.9810 ± 0.0040`` (text, Markdown) or as ``<metric>_mean`` and ``<metric>_std`` columns
(CSV). The mean row's spread is over the seeds' means over categories.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

TABLE_KEYS = ("image_auroc", "pixel_auroc", "aupro", "iou")


class Spread(NamedTuple):
    """A metric over seeds: ``mean``, sample standard deviation ``std`` (ddof=1; None with fewer than two
    values) and ``n``, the seeds with a value."""

    mean: float | None
    std: float | None
    n: int


def spread(values: Sequence[float | None]) -> Spread:
    """The :class:`Spread` of ``values``, undefined ones (None) left out."""
    known = [v for v in values if v is not None]
    if not known:
        return Spread(None, None, 0)
    mean = sum(known) / len(known)
    std = math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1)) if len(known) > 1 else None
    return Spread(mean, std, len(known))


def category_table(results: dict[str, dict[str, Any]], keys: Sequence[str] = TABLE_KEYS) -> list[dict[str, Any]]:
    """Rows of the papers' table: one per category, then the mean over categories (undefined cells skipped)."""
    rows = [{"category": c, **{k: r.get(k) for k in keys}} for c, r in results.items()]
    mean: dict[str, Any] = {"category": "mean"}
    for k in keys:
        values = [r[k] for r in rows if r[k] is not None]
        mean[k] = sum(values) / len(values) if values else None
    return [*rows, mean]


def seed_tables(
    results: dict[str, dict[int, dict[str, Any]]], keys: Sequence[str] = TABLE_KEYS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``results[category][seed]`` -> (the spread table: a row per category and the mean, each cell a
    :class:`Spread` over the seeds; the per-seed table: a row per category and seed, then the mean per seed)."""
    seeds = list(next(iter(results.values())))
    per_seed = {s: category_table({c: r[s] for c, r in results.items()}, keys) for s in seeds}
    names = [row["category"] for row in per_seed[seeds[0]]]
    spreads = [
        {"category": name, "seeds": len(seeds), **{k: spread([per_seed[s][i][k] for s in seeds]) for k in keys}}
        for i, name in enumerate(names)
    ]
    runs = [{"category": name, "seed": s, **per_seed[s][i]} for i, name in enumerate(names) for s in seeds]
    return spreads, runs


def format_table(rows: list[dict[str, Any]], style: str = "text") -> str:
    """A table of rows as aligned text, Markdown or CSV."""
    keys = [k for k in rows[0] if k != "category"]
    if style == "csv":
        head = ["category", *(h for k in keys for h, _ in _csv_cells(k, rows[0][k]))]
        lines = [[r["category"], *(c for k in keys for _, c in _csv_cells(k, r[k]))] for r in rows]
        return "\n".join(",".join(line) for line in [head, *lines]) + "\n"
    if style == "markdown":
        head = "| category | " + " | ".join(keys) + " |\n|---" + "|---" * len(keys) + "|\n"
        return head + "".join("| " + " | ".join([r["category"], *(_cell(r[k]) for k in keys)]) + " |\n" for r in rows)
    width = max(13, *(len(_cell(r[k])) + 2 for r in rows for k in keys))
    lines = [f"{'category':<16}" + "".join(f"{k:>{width}}" for k in keys)]
    lines += [f"{r['category']:<16}" + "".join(f"{_cell(r[k]):>{width}}" for k in keys) for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, Spread):
        return f"{_cell(value.mean)} ± {_cell(value.std)}" if value.mean is not None else "n/a"
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _csv_cells(key: str, value: Any) -> list[tuple[str, str]]:
    """A value's CSV columns: (header, cell) pairs, two for a spread (mean and std)."""
    if isinstance(value, Spread):
        return [(f"{key}_mean", _cell(value.mean)), (f"{key}_std", _cell(value.std))]
    return [(key, _cell(value))]
