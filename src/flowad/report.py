"""The HTML report of a tested run: one self-contained page drawn from RUN/metrics.json and RUN/test_outputs.npz.

Every image and plot is embedded as a base64 PNG data URI and the style sheet is inline, so the page needs no
network, no script and no other file: it can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from flowad import metrics
from flowad.checkpoint import atomic_write, read_json, read_record
from flowad.data.images import read_image
from flowad.errors import InputError
from flowad.nfa import describe
from flowad.records import RunRecord
from flowad.thresholds import Thresholds
from flowad.visualize import colorize, overlay

REPORT_FILE = "report.html"
TEST_OUTPUTS = "test_outputs.npz"
GALLERY_LIMIT = 200
THUMBNAIL = 160  # pixels on the longer side of a gallery image
PRO_FPR_LIMIT = 0.3
GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 0, 0)

METRIC_ROWS = (
    ("image_auroc", "Image AUROC"),
    ("pixel_auroc", "Pixel AUROC"),
    ("aupro", "AUPRO (FPR ≤ 0.3)"),
    ("image_f1", "Image F1"),
    ("pixel_f1", "Pixel F1"),
    ("iou", "IoU at the threshold"),
    ("iou_nfa", "IoU at log NFA = 0"),
    ("nfa_good_flagged", "Good images flagged at log NFA < 0"),
    ("oracle_iou", "Oracle IoU (best test threshold)"),
    ("image_f1_max", "Image F1-max (best test threshold)"),
    ("train_seconds", "Train seconds"),
    ("test_seconds", "Test seconds"),
)
OUTPUT_KEYS = ("paths", "defects", "labels", "scores", "maps", "masks", "pred_images", "pred_masks")

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #222; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
dl.run { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 8px 0; }
dl.run dt { font-weight: 600; } dl.run dd { margin: 0; }
table#metrics { border-collapse: collapse; }
#metrics th, #metrics td { padding: 3px 14px; border-bottom: 1px solid #eee; text-align: left; }
#metrics td { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
.plots figure { margin: 0; text-align: center; } .plots p.na { width: 360px; color: #777; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { margin: 0; padding: 6px; border: 2px solid #ccc; border-radius: 6px; background: #fafafa; }
.card.error { border-color: #d33; background: #fff4f4; }
.card .pair { display: flex; gap: 4px; }
.card img { display: block; }
.card figcaption { font-size: 12px; max-width: 324px; overflow-wrap: anywhere; }
.verdict { font-weight: 700; } .error .verdict { color: #c00; }
.key { display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin: 0 3px 0 10px; }
.note { color: #555; } .scale img { display: inline; vertical-align: middle; margin: 0 6px; }
"""


def render_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html (atomically) from the outputs of ``flowad test --run RUN``; returns its path."""
    run = Path(run_dir)
    record = read_record(run)
    result = read_json(_require(run, "metrics.json"))
    outputs = _load_outputs(_require(run, TEST_OUTPUTS))
    page = "\n".join(
        [
            _head(run, record, result),
            _metrics_table(result),
            _plots(outputs, result),
            _gallery(outputs, _heat_scale(record, result)),
            "</body></html>\n",
        ]
    )
    path = run / REPORT_FILE
    atomic_write(path, page)
    return path


def _require(run: Path, name: str) -> Path:
    path = run / name
    if not path.is_file():
        raise InputError(f"{path} does not exist; run `flowad test --run {run}` first")
    return path


def _load_outputs(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in OUTPUT_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise InputError(f"{path} is not a flowad test output file ({err}); run `flowad test` again") from err


def _heat_scale(record: RunRecord, result: dict[str, Any]) -> Thresholds:
    """The stored score range, with 0.5 at the pixel threshold the test used (the predicted masks' boundary)."""
    stored = record.thresholds
    t = float(result.get("threshold", {}).get("pixel", stored.pixel))
    return dataclasses.replace(stored, image=t, pixel=t, low=min(stored.low, t), high=max(stored.high, t))


# --------------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------------


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(FPR, TPR) for every distinct score, from (0, 0) to (1, 1); None when the labels hold one class only."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, y = np.asarray(scores)[order], labels[order]
    ends = metrics.group_ends(s)
    tpr = np.cumsum(y)[ends] / y.sum()
    fpr = np.cumsum(~y)[ends] / (~y).sum()
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def pro_curve(
    maps: np.ndarray, masks: np.ndarray, fpr_limit: float = PRO_FPR_LIMIT
) -> tuple[np.ndarray, np.ndarray] | None:
    """(FPR, PRO) points up to ``fpr_limit`` (the last one interpolated at the limit); None without defect masks."""
    g = np.asarray(masks).astype(bool)
    if not g.any() or g.all():
        return None
    m = np.asarray(maps, dtype=np.float32)
    regions, num_regions = ndimage.label(g, structure=metrics.REGION_STRUCTURE)
    sizes = np.bincount(regions.ravel(), minlength=num_regions + 1)
    normal = ~g
    keep = m >= metrics.fpr_cutoff(m[normal], fpr_limit)
    fpr, pro = metrics.pro_curve_from_regions(m[keep], regions[keep], sizes, int(normal.sum()))
    j = int(np.searchsorted(fpr, fpr_limit, side="left"))
    if j >= fpr.size:
        return fpr, pro
    pro_limit = pro[j] if fpr[j] == fpr_limit else np.interp(fpr_limit, fpr[j - 1 : j + 1], pro[j - 1 : j + 1])
    return np.append(fpr[:j], fpr_limit), np.append(pro[:j], pro_limit)


# --------------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(uri: str, alt: str, **attrs: Any) -> str:
    extra = "".join(f' {k}="{_esc(v)}"' for k, v in attrs.items())
    return f'<img src="{uri}" alt="{_esc(alt)}"{extra}>'


def _png_uri(image: np.ndarray | bytes) -> str:
    if isinstance(image, np.ndarray):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", optimize=True)
        image = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def _threshold_text(result: dict[str, Any]) -> str:
    t = result.get("threshold") or {}
    if not t:
        return "n/a"
    if t["method"] == "nfa":
        return "log NFA < 0 (nfa)"
    pixel = "" if t["pixel"] == t["image"] else f", pixel {t['pixel']:.4g}"
    return f"image {t['image']:.4g}{pixel} ({t['method']})"


def _head(run: Path, record: RunRecord, result: dict[str, Any]) -> str:
    height, width = record.preprocess.size
    size = f"{height}" if height == width else f"{height}x{width}"
    tiling = record.preprocess.tiling
    tiles = "" if tiling is None else f", tiles of {tiling.tile} px every {tiling.stride}"
    model = f"{record.model} ({record.model_config.get('backbone', '?')}, {size} px{tiles})"
    rows = [
        ("Run", str(run)),
        ("Model", model),
        ("Data", result.get("data", "?")),
        ("Test images", result.get("test_images", "?")),
        ("Threshold", _threshold_text(result)),
    ]
    if "nfa" in result:  # the settings of the NFA test behind iou_nfa (and the masks, with --threshold nfa)
        rows.append(("NFA test", describe(result["nfa"])))
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>flowad report: {_esc(record.model)} on {_esc(result.get('data', ''))}</title>"
        f'<style>{CSS}</style></head><body>\n<h1>flowad test report</h1>\n<dl class="run">{items}</dl>'
    )


def _metrics_table(result: dict[str, Any]) -> str:
    rows = []
    for key, label in METRIC_ROWS:
        value = result.get(key)
        shown = "n/a" if value is None else f"{value:.4f}"
        rows.append(
            f'<tr><th>{_esc(label)}</th><td data-key="{key}" data-value="{_esc(repr(value))}">{shown}</td></tr>'
        )
    return '<h2>Metrics</h2>\n<table id="metrics"><tbody>\n' + "\n".join(rows) + "\n</tbody></table>"


def _plots(outputs: dict[str, np.ndarray], result: dict[str, Any]) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def figure() -> tuple[Figure, Any]:
        fig = Figure(figsize=(3.7, 3.0), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        return fig, fig.add_subplot()

    def embed(fig: Figure, alt: str, caption: str) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return f"<figure>{_img(_png_uri(buffer.getvalue()), alt)}<figcaption>{_esc(caption)}</figcaption></figure>"

    scores, labels = outputs["scores"].astype(np.float64), outputs["labels"].astype(bool)
    parts = []
    roc = roc_curve(scores, labels)
    if roc is None:
        parts.append('<p class="na">ROC curve: n/a (the test set holds one class only).</p>')
    else:
        fig, ax = figure()
        ax.plot(*roc, drawstyle="default", color="C0", label=f"AUROC {_area(*roc):.4f}")
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        ax.set(
            xlabel="false-positive rate", ylabel="true-positive rate", title="Image ROC", xlim=(0, 1), ylim=(0, 1.02)
        )
        ax.legend(loc="lower right")
        parts.append(embed(fig, "image-level ROC curve", "Image-level ROC curve"))

    pro = pro_curve(outputs["maps"], outputs["masks"])
    if pro is None:
        parts.append('<p class="na">PRO curve: n/a (no ground-truth defect masks).</p>')
    else:
        fig, ax = figure()
        ax.plot(*pro, color="C2")
        ax.set(xlabel="false-positive rate (pixels)", ylabel="per-region overlap", title="PRO curve")
        ax.set(xlim=(0, PRO_FPR_LIMIT), ylim=(0, 1.02))
        parts.append(embed(fig, "per-region-overlap curve up to FPR 0.3", "PRO curve up to FPR 0.3"))

    fig, ax = figure()
    bins = np.histogram_bin_edges(scores, bins=min(30, max(5, scores.size // 3)))
    for mask, name, colour in ((~labels, "normal", "C0"), (labels, "anomalous", "C3")):
        if mask.any():
            ax.hist(scores[mask], bins=bins, alpha=0.6, color=colour, label=f"{name} ({int(mask.sum())})")
    t = (result.get("threshold") or {}).get("image")
    if t is not None:
        ax.axvline(t, color="k", linestyle="--", linewidth=1.2, label=f"threshold {t:.4g}")
    ax.set(xlabel="image score", ylabel="images", title="Image scores")
    ax.legend(fontsize="small")
    parts.append(embed(fig, "histogram of image scores, normal vs anomalous", "Image scores and the threshold"))
    return '<h2>Curves</h2>\n<div class="plots">' + "\n".join(parts) + "</div>"


# --------------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------------


def verdicts(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """TP, FP, TN or FN per image."""
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    return np.where(labels, np.where(predicted, "TP", "FN"), np.where(predicted, "FP", "TN"))


def gallery_order(labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """False positives, then misses, then the rest; each group by descending score."""
    rank = {"FP": 0, "FN": 1, "TP": 2, "TN": 2}
    group = np.array([rank[v] for v in verdicts(labels, predicted)])
    return np.lexsort((-np.asarray(scores, dtype=np.float64), group))


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _thumbnail_size(h: int, w: int) -> tuple[int, int]:
    scale = THUMBNAIL / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def _card_images(path: str, heat: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """The image and its overlay with outlines, at thumbnail size; False when the image file could not be read."""
    h, w = heat.shape
    size = _thumbnail_size(h, w)
    try:
        rgb = _resize(read_image(path), (h, w), Image.Resampling.BILINEAR)
        found = True
    except InputError:
        rgb, found = np.full((h, w, 3), 128, dtype=np.uint8), False
    rgb = _resize(rgb, size, Image.Resampling.BILINEAR)
    heat = _resize(heat.astype(np.float32), size, Image.Resampling.BILINEAR)
    shown = overlay(rgb, heat)
    for mask, colour in ((gt, GT_COLOUR), (pred, PRED_COLOUR)):
        big = _resize(mask.astype(np.uint8) * 255, size, Image.Resampling.NEAREST) > 127
        shown[_outline(big)] = colour
    return rgb, shown, found


def _colour_scale(width: int = 200, height: int = 12) -> np.ndarray:
    return colorize(np.tile(np.linspace(0.0, 1.0, width), (height, 1)))


def _gallery(outputs: dict[str, np.ndarray], scale: Thresholds) -> str:
    o = outputs
    n = len(o["scores"])
    order = gallery_order(o["labels"], o["pred_images"], o["scores"])[:GALLERY_LIMIT]
    verdict = verdicts(o["labels"], o["pred_images"])
    cards = []
    for i in order:
        name, defect, score, v = Path(str(o["paths"][i])).name, str(o["defects"][i]), float(o["scores"][i]), verdict[i]
        heat = scale.normalise(o["maps"][i].astype(np.float32))
        rgb, shown, found = _card_images(str(o["paths"][i]), heat, o["masks"][i], o["pred_masks"][i])
        missing = "" if found else " (image file not found)"
        error = " error" if v in ("FP", "FN") else ""
        cards.append(
            f'<figure class="card{error}" data-verdict="{v}" data-score="{score!r}" title="{_esc(o["paths"][i])}">'
            f'<div class="pair">{_img(_png_uri(rgb), f"test image {name} ({defect})")}'
            f"{_img(_png_uri(shown), f'anomaly map of {name} with ground truth and predicted outlines')}</div>"
            f'<figcaption>{_esc(name)}{missing} · {_esc(defect)} · score {score:.4f} · <span class="verdict">{v}</span>'
            "</figcaption></figure>"
        )
    note = f"Showing {len(order)} of {n} test images (false positives and misses first). " if n > len(order) else ""
    legend = (
        f'<p class="note">{note}False positives (FP) and misses (FN) come first, then the rest by descending score. '
        "Right: the anomaly map (0.5 on the colour scale = pixel threshold) with outlines of the "
        f'<span class="key" style="background:rgb{GT_COLOUR}"></span>ground truth and the '
        f'<span class="key" style="background:rgb{PRED_COLOUR}"></span>predicted mask.</p>'
        f'<p class="note scale">low {_img(_png_uri(_colour_scale()), "colour scale of the anomaly map")} high'
        " (threshold in the middle)</p>"
    )
    return "<h2>Test images</h2>\n" + legend + '\n<div class="gallery">\n' + "\n".join(cards) + "\n</div>"
