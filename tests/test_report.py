"""The HTML report: self-contained, faithful to metrics.json, and rendered by a real browser when one is installed."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowad import metrics, report
from flowad.errors import InputError
from flowad.report import render_report

PNG_URI = "data:image/png;base64,"


class Page(HTMLParser):
    """Every start tag with its attributes, and the metrics cells' text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cells: dict[str, dict[str, str]] = {}
        self._cell: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "td" and "data-key" in a:
            self._cell = a["data-key"]
            self.cells[self._cell] = {"value": a.get("data-value", ""), "text": ""}

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell:
            self.cells[self._cell]["text"] += data.strip()

    def find(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]

    def cards(self) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == "figure" and "card" in a.get("class", "").split()]


@pytest.fixture(scope="module")
def run(fastflow_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained and tested FastFlow run: rendering writes report.html into it."""
    return Path(shutil.copytree(fastflow_run, tmp_path_factory.mktemp("report") / "run"))


@pytest.fixture(scope="module")
def rendered(run: Path) -> Path:
    return render_report(run)


def check_metrics_cells(cells: dict[str, dict[str, str]], result: dict) -> None:
    for key, _ in report.METRIC_ROWS:
        value = result[key]
        if value is None:
            assert cells[key] == {"value": "None", "text": "n/a"}
        else:
            assert float(cells[key]["value"]) == value
            assert cells[key]["text"] == f"{value:.4f}"


def test_report_is_self_contained_and_faithful(run: Path, rendered: Path) -> None:
    assert rendered == run / "report.html" and rendered.is_file()
    text = rendered.read_text(encoding="utf-8")
    page = Page(text)
    assert "<script" not in text.lower()
    for _, attrs in page.tags:
        for name in ("src", "href"):
            assert not attrs.get(name, "").startswith(("http://", "https://", "//")), attrs
    images = page.find("img")
    assert images
    for img in images:
        assert img["src"].startswith(PNG_URI) and img.get("alt")
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(PNG_URI) :], validate=True))) as png:
            assert png.format == "PNG"
            png.verify()

    result = json.loads((run / "metrics.json").read_text())
    check_metrics_cells(page.cells, result)
    assert [a for a in page.find("table") if a.get("id") == "metrics"]

    outputs = np.load(run / "test_outputs.npz")
    cards = page.cards()
    assert len(cards) == len(outputs["scores"]) == result["test_images"]
    verdicts = [c["data-verdict"] for c in cards]
    errors = [v in ("FP", "FN") for v in verdicts]
    assert errors == sorted(errors, reverse=True)  # every FP and FN before every TP and TN
    rest = [float(c["data-score"]) for c, e in zip(cards, errors, strict=True) if not e]
    assert rest == sorted(rest, reverse=True)
    expected = report.verdicts(outputs["labels"], outputs["pred_images"])
    assert sorted(verdicts) == sorted(expected.tolist())


def test_one_class_without_masks_and_capped_gallery(run: Path, tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with np.load(run / "test_outputs.npz") as data:
        good = data["labels"] == 0
        np.savez_compressed(copy / "test_outputs.npz", **{k: data[k][good] for k in data.files})
    monkeypatch.setattr(report, "GALLERY_LIMIT", 2)
    text = render_report(copy).read_text(encoding="utf-8")
    assert "ROC curve: n/a" in text and "PRO curve: n/a" in text
    assert f"Showing 2 of {int(good.sum())} test images" in text
    assert len(Page(text).cards()) == 2


def test_missing_test_outputs_is_an_input_error(run: Path, tmp_path: Path) -> None:
    for name in ("config.json", "metrics.json"):
        shutil.copy(run / name, tmp_path / name)
    with pytest.raises(InputError, match=r"test_outputs\.npz.*flowad test --run"):
        render_report(tmp_path)


def test_curves_match_the_metrics() -> None:
    rng = np.random.default_rng(0)
    scores, labels = rng.random(40), np.arange(40) % 3 == 0
    fpr, tpr = report.roc_curve(scores, labels)
    assert report._area(fpr, tpr) == pytest.approx(metrics.image_auroc(scores, labels))
    masks = np.zeros((3, 20, 20), dtype=bool)
    masks[0, 2:6, 3:9] = masks[2, 10:18, 12:15] = True
    maps = rng.random(masks.shape) + masks
    fpr, pro = report.pro_curve(maps, masks)
    assert fpr[-1] == pytest.approx(0.3)
    assert report._area(fpr, pro) / 0.3 == pytest.approx(metrics.aupro(maps, masks))
    assert report.roc_curve(scores, np.zeros(40)) is None and report.pro_curve(maps, masks & False) is None


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_report_renders_in_a_browser(run: Path, rendered: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    url = rendered.resolve().as_uri()
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", url], capture_output=True, timeout=60)
    with Image.open(shot) as png:
        assert png.format == "PNG" and png.size == (1280, 2000)
        colours = png.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 100  # plots and images, not a blank page

    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
    page = Page(dom)
    check_metrics_cells(page.cells, json.loads((run / "metrics.json").read_text()))
    assert len(page.cards()) == len(Page(rendered.read_text(encoding="utf-8")).cards())
