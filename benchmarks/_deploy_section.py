"""The deployment section of ``vs_anomalib.py`` (``--sections deploy``): inference per image at batch 1 and 16
and end-to-end prediction on image files, flowad's default engine against anomalib's torch model and
anomalib's own deployment path, with the backbone's own time in each engine as the floor.

Per model, ``--repeats`` times in turn (medians reported):

- anomalib's ``deploy`` task (``_anomalib_worker.py``): ``Engine.export`` to ONNX, OpenVINO and torch, the
  exported files timed in onnxruntime and OpenVINO, its ``OpenVINOInferencer`` and ``TorchInferencer`` on
  image files;
- flowad's ``backbone`` task (``_flowad_worker.py``): the frozen encoder alone in torch, onnxruntime and
  OpenVINO;
- flowad's ``deploy`` task: its default engine and its torch engine on the run the train section saved.

Target: flowad's default engine at most ``TARGET_ENGINE_VS_BACKBONE`` times the backbone's own time in the
same engine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _harness import markdown_table
from _worker_cli import start_worker

TARGET_ENGINE_VS_BACKBONE = 1.3
# anomalib's timings: its torch model alone (the train section's figure), its whole exported module in torch,
# and the exported files
ANOMALIB_ENGINES = {"torch_model": "torch model", "torch": "whole module, torch"}
ANOMALIB_ENGINES.update(onnxruntime="ONNX in onnxruntime", openvino="OpenVINO IR in OpenVINO")
BACKBONE_ENGINES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "OpenVINO"}
# flowad's engine names (Detector.engine) -> the backbone timing of the same engine
SAME_ENGINE = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}


def deploy_runs(model: str, args: argparse.Namespace, common: list[str], states: dict[str, str | None]) -> dict:
    """``--repeats`` rounds of the deployment tasks; ``states``: per side, the trained model the train section
    saved (None: anomalib's task trains anew)."""
    runs: dict[str, list[dict]] = {"anomalib": [], "backbone": [], "flowad": []}
    images = ["--images", str(args.deploy_images)]
    theirs = [*common, *images] + (["--model-in", states["anomalib"]] if states.get("anomalib") else [])
    ours = [*common, *images, "--model-in", str(states.get("flowad"))]
    for repeat in range(args.repeats):
        tag = f"{model}_{{}}_r{repeat}"
        runs["anomalib"].append(start_worker("anomalib", "deploy", theirs, args, tag.format("anomalib_deploy"))[0])
        runs["backbone"].append(start_worker("flowad", "backbone", common, args, tag.format("flowad_backbone"))[0])
        if states.get("flowad"):
            runs["flowad"].append(start_worker("flowad", "deploy", ours, args, tag.format("flowad_deploy"))[0])
        print(f"[{time.strftime('%H:%M:%S')}] {model:8s} deploy {repeat + 1}/{args.repeats} done", flush=True)
    return runs


def median_of(results: list[dict], *keys: str) -> float | str | None:
    """The median of ``result[k1][k2]...`` over results; the first error where an entry has one; None if absent."""
    values = []
    for result in results:
        entry = result
        for key in keys[:-1]:
            entry = entry.get(key, {})
        if "error" in entry:
            return entry["error"]
        if keys[-1] not in entry:
            return None
        values.append(entry[keys[-1]])
    return statistics.median(values) if values else None


def summarise(runs: dict[str, list[dict]]) -> dict:
    theirs, floor, ours = runs["anomalib"], runs["backbone"], runs["flowad"]
    out: dict = {"exports": theirs[0]["exports"], "outputs": theirs[0]["engines"].get("outputs")}
    out["diffs"] = {e: theirs[0]["engines"].get(e, {}).get("max_abs_diff") for e in ("onnxruntime", "openvino")}
    for name, results, engines in (("anomalib", theirs, ANOMALIB_ENGINES), ("backbone", floor, BACKBONE_ENGINES)):
        out[name] = {e: {b: median_of(results, "engines", e, b) for b in ("b1_ms", "b16_ms")} for e in engines}
    out["inferencers"] = {k: median_of(theirs, "inferencers", k, "ms_per_image") for k in ("openvino", "torch")}
    if ours:
        out["flowad"] = {
            "engine": ours[0]["engine"],
            **{b: median_of(ours, "infer", b) for b in ("b1_ms", "b16_ms")},
            "predict_ms": median_of(ours, "predict", "ms_per_image"),
            "torch_engine": {b: median_of(ours, "torch_engine", "infer", b) for b in ("b1_ms", "b16_ms")},
            "predict_torch_ms": median_of(ours, "torch_engine", "predict", "ms_per_image"),
        }
    return out


def deploy_results(model: str, args: argparse.Namespace, common: list[str], states: dict[str, str | None]) -> dict:
    return summarise(deploy_runs(model, args, common, states))


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def ms(value: float | str | None) -> str:
    if isinstance(value, float | int):
        return f"{value:.1f}"
    return "failed" if value else "-"


def pair(entry: dict) -> str:
    return f"{ms(entry['b1_ms'])} / {ms(entry['b16_ms'])}"


def export_cell(export: dict, diff: list[float] | None) -> str:
    if "error" in export:
        return f"fails: {export['error']}"
    cell = f"works ({export['seconds']:.0f} s)"
    return cell + (f"; outputs within {max(diff):.1e} of torch" if diff else "")


def flowad_cells(res: dict) -> list[str]:
    """flowad's default engine, its time, and its ratio to the backbone in the same engine (target)."""
    ours = res.get("flowad")
    if ours is None:
        return ["-", "-", "-"]
    floor = res["backbone"][SAME_ENGINE[ours["engine"]]]
    ratios = [ours[b] / floor[b] if isinstance(floor[b], float) else None for b in ("b1_ms", "b16_ms")]
    met = all(r is not None and r <= TARGET_ENGINE_VS_BACKBONE for r in ratios)
    shown = " / ".join(f"{r:.2f}x" if r is not None else "-" for r in ratios)
    return [ours["engine"], pair(ours), f"{'met' if met else 'missed'} ({shown})"]


def deploy_tables(results: dict[str, dict]) -> str:
    headers = ["model", "ONNX (Engine.export)", "OpenVINO (Engine.export)", "torch .pt (Engine.export)"]
    rows = [
        [
            model,
            *(
                export_cell(res["exports"][k], res["diffs"].get(e))
                for k, e in (("onnx", "onnxruntime"), ("openvino", "openvino"), ("torch", None))
            ),
        ]
        for model, res in results.items()
    ]
    exports = markdown_table(headers, rows)
    headers = ["model", *(f"anomalib {v}" for v in ANOMALIB_ENGINES.values())]
    headers += [f"backbone alone, {v}" for v in BACKBONE_ENGINES.values()]
    headers += ["flowad engine", "flowad", f"flowad / backbone, same engine (<= {TARGET_ENGINE_VS_BACKBONE}x)"]
    rows = [
        [model, *(pair(res["anomalib"][e]) for e in ANOMALIB_ENGINES)]
        + [pair(res["backbone"][e]) for e in BACKBONE_ENGINES]
        + flowad_cells(res)
        for model, res in results.items()
    ]
    speed = markdown_table(headers, rows)
    headers = ["model", "anomalib OpenVINOInferencer", "anomalib TorchInferencer", "flowad predict, default engine"]
    headers.append("flowad predict, torch engine")
    rows = [
        [model, ms(res["inferencers"]["openvino"]), ms(res["inferencers"]["torch"])]
        + ([ms(res["flowad"]["predict_ms"]), ms(res["flowad"]["predict_torch_ms"])] if "flowad" in res else ["-", "-"])
        for model, res in results.items()
    ]
    files = markdown_table(headers, rows)
    headers = ["model", *(f"{name} (target {bound})" for name, bound, _ in TARGETS)]
    rows = [[model, *target_cells(res)] for model, res in results.items() if "flowad" in res]
    targets = markdown_table(headers, rows)
    return "\n".join(
        ["Exports:", "", *exports, "", "ms per image, batch 1 / batch 16:", "", *speed]
        + ["", "End to end on image files, ms per image:", "", *files]
        + ["", "Targets, flowad's default engine (ratios at batch 1 / batch 16; predict: one figure):", "", *targets]
    )


# (name, bound shown, test on the ratio)
TARGETS = (
    ("default engine / anomalib torch module", "<= 0.5", lambda r: r <= 0.5),
    ("default engine / anomalib's fastest export", "<= 1", lambda r: r <= 1.0),
    (
        "default engine / backbone, same engine",
        f"<= {TARGET_ENGINE_VS_BACKBONE}",
        lambda r: r <= TARGET_ENGINE_VS_BACKBONE,
    ),
    ("predict: default engine images/s / torch engine images/s", ">= 2", lambda r: r >= 2.0),
)


def _ratio_cell(ratios: list[float | None], test) -> str:
    if any(r is None for r in ratios):
        return "-"
    shown = " / ".join(f"{r:.2f}x" for r in ratios)
    return f"{shown} {'met' if all(test(r) for r in ratios) else 'missed'}"


def _number(value) -> float | None:
    return float(value) if isinstance(value, float | int) else None


def target_cells(res: dict) -> list[str]:
    ours, batches = res["flowad"], ("b1_ms", "b16_ms")

    def ratios(reference: dict) -> list[float | None]:
        values = [(_number(ours[b]), _number(reference[b])) for b in batches]
        return [a / b if a is not None and b else None for a, b in values]

    exports = [res["anomalib"][e] for e in ("onnxruntime", "openvino")]
    fastest = {b: min((v for v in (_number(e[b]) for e in exports) if v is not None), default=None) for b in batches}
    predict = [None]
    if _number(ours["predict_ms"]) and _number(ours["predict_torch_ms"]):
        predict = [ours["predict_torch_ms"] / ours["predict_ms"]]  # images/s ratio = inverse of ms per image
    found = [ratios(res["anomalib"]["torch"]), ratios(fastest), ratios(res["backbone"][SAME_ENGINE[ours["engine"]]])]
    found.append(predict)
    return [_ratio_cell(r, test) for r, (_, _, test) in zip(found, TARGETS, strict=True)]


def deploy_lines(args: argparse.Namespace, results: dict[str, dict]) -> list[str]:
    """The deployment section's explanation and tables for RESULTS.md."""
    return [
        "",
        "Deployment (`--sections deploy`):",
        "",
        "- anomalib: the trained lightning module exported with `Engine.export` (`ExportType.ONNX`, `OPENVINO`, "
        f"`TORCH`) at {args.image_size} px; the exported graph is the whole module (resize, ImageNet "
        'normalisation, the model, anomalib\'s post-processing), input RGB in [0, 1], any batch. "torch model" is '
        "the model alone on normalised images (the train section's figure). onnxruntime: CPU provider, "
        f"{args.threads} intra-op threads, 1 inter-op; OpenVINO: CPU, INFERENCE_NUM_THREADS {args.threads}, "
        "PERFORMANCE_HINT LATENCY, the IR as exported. Each engine's outputs are compared with torch's on the "
        "same batch of images.",
        "- backbone alone: flowad's frozen encoder (the same timm model and weights as anomalib's) exported alone "
        "to ONNX (TorchScript exporter), timed in torch, onnxruntime and OpenVINO with the same settings.",
        f"- End to end: the first {args.deploy_images} test image files, one `predict(path)` per file in "
        "anomalib's inferencers (PIL decode, /255, the exported module; `TorchInferencer` runs it without "
        "`torch.no_grad`).",
        "- Warm timings, medians over rounds and repeats.",
        "",
        deploy_tables(results),
    ]
