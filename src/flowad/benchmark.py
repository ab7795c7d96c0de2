"""The papers' table: one model trained and tested on every category of a data set, then one row each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowad import distributed
from flowad.checkpoint import atomic_write
from flowad.data.spec import DataSpec, list_categories
from flowad.evaluation import test
from flowad.records import EngineSettings, TrainRequest
from flowad.training import train

TABLE_KEYS = ("image_auroc", "pixel_auroc", "aupro", "iou")


def benchmark(
    model: str,
    data: str | Path,
    out: str | Path,
    categories: Sequence[str] | None = None,
    layout: str = "mvtec",
    force: bool = False,
    settings: EngineSettings | None = None,
    per_category: dict[str, dict[str, Any]] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Train and test ``model`` on every category of a data set; writes OUT/table.csv and OUT/table.md.

    ``per_category`` maps a category to options that replace ``options`` for it (per-category settings).
    """
    out = Path(out)
    for own in [{}, *(per_category or {}).values()]:  # every category's options checked before any work
        TrainRequest(
            model, DataSpec(str(data), layout=layout), {**options, **own}, settings=settings or EngineSettings()
        )
    names = list(categories or list_categories(data, layout))
    results = {}
    share = distributed.shard(names)  # under torchrun each process takes its share of the categories
    with distributed.alone():
        for category in share:
            own = {**options, **(per_category or {}).get(category, {})}
            run = train(
                model, data, out / category, category=category, layout=layout, force=force, settings=settings, **own
            )
            results[category] = test(run, settings=settings)
    gathered = {c: r for part in distributed.all_gather(results) for c, r in part.items()}
    rows = category_table({c: gathered[c] for c in names})
    if distributed.is_main():
        atomic_write(out / "table.csv", format_table(rows, "csv"))
        atomic_write(out / "table.md", format_table(rows, "markdown"))
    return rows


def category_table(results: dict[str, dict[str, Any]], keys: Sequence[str] = TABLE_KEYS) -> list[dict[str, Any]]:
    """Rows of the papers' table: one per category, then the mean over categories (undefined cells skipped)."""
    rows = [{"category": c, **{k: r.get(k) for k in keys}} for c, r in results.items()]
    mean: dict[str, Any] = {"category": "mean"}
    for k in keys:
        values = [r[k] for r in rows if r[k] is not None]
        mean[k] = sum(values) / len(values) if values else None
    return [*rows, mean]


def format_table(rows: list[dict[str, Any]], style: str = "text") -> str:
    """The category table as aligned text, Markdown or CSV."""
    keys = [k for k in rows[0] if k != "category"]

    def cell(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    if style == "csv":
        return (
            "\n".join(
                [",".join(["category", *keys])] + [",".join([r["category"], *(cell(r[k]) for k in keys)]) for r in rows]
            )
            + "\n"
        )
    if style == "markdown":
        head = "| category | " + " | ".join(keys) + " |\n|---" + "|---" * len(keys) + "|\n"
        return head + "".join("| " + " | ".join([r["category"], *(cell(r[k]) for k in keys)]) + " |\n" for r in rows)
    lines = [f"{'category':<16}" + "".join(f"{k:>13}" for k in keys)]
    lines += [f"{r['category']:<16}" + "".join(f"{cell(r[k]):>13}" for k in keys) for r in rows]
    return "\n".join(lines)
