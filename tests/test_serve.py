"""``flowad serve``: the real server on a free loopback port, every endpoint, bad input and the API key."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowad.cli import main
from flowad.inference import Detector

KEY = "test-key-123"
PIXEL_LIMIT = 200_000  # the server's FLOWAD_MAX_IMAGE_PIXELS: a 500 x 500 image is over it
BODY_LIMIT_MB = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(run: Path, *options: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``flowad serve --run RUN OPTIONS`` as its own process on a free 127.0.0.1 port, once it answers."""
    port = _free_port()
    command = [sys.executable, "-m", "flowad", "serve", "--run", str(run), "--port", str(port), *options]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server stopped: {process.stderr.read()}")
        try:
            if _call(base + "/healthz", key=None)[0] == 200:
                return process, base
        except OSError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("the server did not answer in 120 s")


@pytest.fixture(scope="module")
def server(fastflow_run: Path):
    """``flowad serve`` with an API key and small limits; stopped at the end."""
    env = {**os.environ, "FLOWAD_API_KEY": KEY, "FLOWAD_MAX_IMAGE_PIXELS": str(PIXEL_LIMIT)}
    options = ["--body-limit-mb", str(BODY_LIMIT_MB), "--batch-size", "4", "--max-wait-ms", "20"]
    process, base = _start_server(fastflow_run, *options, env=env)
    yield base
    process.terminate()  # SIGTERM: uvicorn finishes what is in flight, stops, then re-raises the signal
    assert process.wait(timeout=60) in (0, -15)
    assert "Traceback" not in process.stderr.read()


def _call(url: str, body: bytes | None = None, content_type: str | None = None, key: str | None = KEY):
    headers = {"Content-Type": content_type} if content_type else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read(), answer.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("content-type", "")


def _json(answer) -> dict:
    status, body, kind = answer
    assert kind.startswith("application/json"), (status, body[:200])
    return json.loads(body)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _multipart(field: str, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: image/png\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def test_images(demo_data: Path) -> list[Path]:
    return sorted((demo_data / "fabric" / "test").rglob("*.png"))[:5]


def test_predict_gives_the_detectors_answer(server, fastflow_run, test_images) -> None:
    detector = Detector.load(fastflow_run)
    for path in test_images[:3]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        expected = detector.predict([rgb])[0]
        answer = _json(_call(server + "/v1/predict", path.read_bytes(), "image/png"))
        assert answer["score"] == pytest.approx(expected["score"], abs=1e-6)
        assert answer["anomalous"] == expected["anomalous"]
        assert answer["threshold"]["image"] == detector.thresholds.image
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png"])))) > 127
        assert np.array_equal(mask, expected["mask"])
        assert Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"]))).size == (rgb.shape[1], rgb.shape[0])


def test_multipart_batch_and_concurrent_requests_agree(server, test_images) -> None:
    singles = [_json(_call(server + "/v1/predict?pictures=false", p.read_bytes(), "image/png")) for p in test_images]
    assert "mask_png" not in singles[0]
    body, kind = _multipart("image", [(test_images[0].name, test_images[0].read_bytes())])
    assert _json(_call(server + "/v1/predict", body, kind))["score"] == singles[0]["score"]
    body, kind = _multipart("images", [(p.name, p.read_bytes()) for p in test_images])
    batch = _json(_call(server + "/v1/predict/batch?pictures=false", body, kind))["results"]
    with ThreadPoolExecutor(8) as pool:  # concurrent requests are scored in micro-batches
        together = list(
            pool.map(lambda p: _json(_call(server + "/v1/predict", p.read_bytes(), "image/png")), test_images * 2)
        )
    for single, in_batch, concurrent in zip(singles, batch, together, strict=False):
        assert in_batch["score"] == pytest.approx(single["score"], abs=1e-5)
        assert concurrent["score"] == pytest.approx(single["score"], abs=1e-5)


def test_model_health_ready_metrics_and_page(server, fastflow_run) -> None:
    model = _json(_call(server + "/v1/model"))
    assert model["model"] == "fastflow" and model["metrics"]["image_auroc"] >= 0 and model["flowad_version"]
    assert _json(_call(server + "/healthz", key=None)) == {"status": "ok"}
    assert _json(_call(server + "/readyz"))["ready"] is True
    assert _call(server + "/v1/predict", b"x", "text/plain")[0] == 415  # an error to count
    status, body, _ = _call(server + "/metrics")
    text = body.decode()
    assert status == 200 and "flowad_requests_total" in text and "flowad_images_scored_total" in text
    assert "flowad_request_seconds_bucket" in text and 'flowad_errors_total{kind="' in text
    status, body, kind = _call(server + "/")
    assert status == 200 and kind.startswith("text/html") and b"flowad review" in body


@pytest.mark.parametrize(
    "body, content_type, status, message",
    [
        (b"hello", "text/plain", 415, "content type 'text/plain'"),
        (b"definitely not a png", "image/png", 400, "not an image format"),
        (b"", "image/png", 400, "empty (0 bytes)"),
        ("truncated", "image/png", 400, "cannot read image"),
        ("huge", "image/png", 400, "more than the limit"),
        ("oversized", "application/octet-stream", 413, "the limit is"),
        ("no field", None, 422, "named 'image'"),
    ],
)
def test_bad_input_is_a_json_4xx_and_the_next_request_is_served(
    server, test_images, body, content_type, status, message
) -> None:
    good = test_images[0].read_bytes()
    if body == "truncated":
        body = good[: len(good) // 2]
    elif body == "huge":
        body = _png(np.zeros((500, 500, 3), np.uint8))
    elif body == "oversized":
        body = os.urandom(int(BODY_LIMIT_MB * 1024 * 1024) + 10)
    elif body == "no field":
        body, content_type = _multipart("picture", [("x.png", good)])
    answer = _call(server + "/v1/predict", body, content_type)
    assert answer[0] == status and message in _json(answer)["error"]
    assert _call(server + "/v1/predict", good, "image/png")[0] == 200


def test_the_api_key_guards_every_endpoint_but_health_and_the_page(server, test_images) -> None:
    for path in ("/v1/model", "/metrics", "/readyz"):
        for key in (None, "wrong"):
            answer = _call(server + path, key=key)
            assert answer[0] == 401 and "API key" in _json(answer)["error"]
    assert _call(server + "/v1/predict", test_images[0].read_bytes(), "image/png", key=None)[0] == 401
    assert _call(server + "/healthz", key=None)[0] == 200
    assert _call(server + "/", key=None)[0] == 200  # the page is static; what it calls needs the key


def test_a_missing_or_damaged_run_stops_the_start_with_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["serve", "--run", str(tmp_path / "missing"), "--port", str(_free_port())]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text("{not json")
    assert main(["serve", "--run", str(tmp_path / "damaged"), "--port", str(_free_port())]) == 2
    capsys.readouterr()
    assert main(["serve", "--run", str(tmp_path / "damaged"), "--workers", "0"]) == 2
    assert "--workers 0" in capsys.readouterr().err


def test_the_review_page_in_a_real_browser_shows_the_apis_verdicts(server, test_images, tmp_path: Path) -> None:
    """Playwright drives Debian's chromium (its own browser download is not reachable; scripts/test installs it)."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is not installed: apt-get install chromium (scripts/test does it)"
    uploads = [Path(shutil.copy(p, tmp_path / f"{i}-{p.parent.name}-{p.name}")) for i, p in enumerate(test_images)]
    expected = [_json(_call(server + "/v1/predict?pictures=false", p.read_bytes(), "image/png")) for p in uploads]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server + "/")
            page.fill("#key", KEY)
            page.set_input_files("#files", [str(p) for p in uploads])
            page.wait_for_function(f"document.querySelectorAll('.card canvas').length === {len(uploads)}")
            names = page.eval_on_selector_all(".card .name", "nodes => nodes.map(n => n.textContent)")
            shown = page.eval_on_selector_all(".card .api", "nodes => nodes.map(n => n.dataset.anomalous)")
            by_name = dict(zip(names, shown, strict=True))
            for path, answer in zip(uploads, expected, strict=True):
                assert by_name[path.name] == str(answer["anomalous"]).lower()
            page.fill("#slider", "0")  # every image flagged at the lowest threshold
            page.dispatch_event("#slider", "input")
            verdicts = page.eval_on_selector_all(".card p:last-child", "nodes => nodes.map(n => n.textContent)")
            assert verdicts and all(v.startswith("anomalous at 0.00") for v in verdicts)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert (tmp_path / "page.png").stat().st_size > 0
        finally:
            browser.close()


def test_accept_png_answers_with_the_mask_and_the_figures_in_headers(server, test_images) -> None:
    body = test_images[1].read_bytes()
    answer = _json(_call(server + "/v1/predict", body, "image/png"))
    request = urllib.request.Request(
        server + "/v1/predict",
        data=body,
        headers={"Content-Type": "image/png", "Accept": "image/png", "Authorization": f"Bearer {KEY}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.headers["content-type"] == "image/png"
        assert float(reply.headers["X-Flowad-Score"]) == answer["score"]
        assert reply.headers["X-Flowad-Anomalous"] == str(answer["anomalous"])
        assert reply.read() == base64.b64decode(answer["mask_png"])


def test_several_workers_serve_and_sigterm_lets_a_request_in_flight_finish(fastflow_run, test_images) -> None:
    process, base = _start_server(fastflow_run, "--workers", "2")
    try:
        body, kind = _multipart("images", [(p.name, p.read_bytes()) for p in test_images * 8])
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_call, base + "/v1/predict/batch", body, kind, None)
            time.sleep(0.3)  # the 40 images are being scored
            process.terminate()
            status, reply, _ = in_flight.result(timeout=120)
        assert status == 200 and len(json.loads(reply)["results"]) == 40
        assert process.wait(timeout=60) in (0, -15)
    finally:
        if process.poll() is None:
            process.kill()
