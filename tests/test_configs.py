"""Train options from YAML/JSON files: flags override them, shipped configs are valid, runs repeat."""

import json
from pathlib import Path

import pytest

from flowad.cli import build_parser, main
from flowad.cli_options import read_options_file
from flowad.models import model_class

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid_options_of_their_model(path: Path) -> None:
    options = read_options_file(path, build_parser())
    cls = model_class(options.pop("model"))
    cls.config_class.from_dict(options)  # raises on a field the model does not have


@pytest.mark.slow
def test_a_config_file_reproduces_a_run_and_flags_override_it(demo_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(
        json.dumps(
            {
                "model": "fastflow",
                "data": str(demo_data),
                "category": "pill",
                "image-size": 64,
                "epochs": 3,
                "batch_size": 4,
                "flow_steps": 2,
                "seed": 7,
            }
        )
    )
    results = []
    for name in ("a", "b"):
        assert main(["train", "--config", str(config), "--out", str(tmp_path / name), "--quiet"]) == 0
        assert main(["test", "--run", str(tmp_path / name), "--quiet"]) == 0
        results.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    for key in ("image_auroc", "pixel_auroc", "aupro", "iou"):
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-6)
    request = json.loads((tmp_path / "a" / "request.json").read_text())
    assert request["settings"]["seed"] == 7 and request["options"]["epochs"] == 3  # the resolved config is kept
    assert main(["train", "--config", str(config), "--epochs", "1", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert json.loads((tmp_path / "c" / "request.json").read_text())["options"]["epochs"] == 1


def test_bad_config_files(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nnot_an_option: 1\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown option(s) ['not_an_option']" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [3\n")
    assert main(["train", "--config", str(broken)]) == 2
    assert "is not valid YAML or JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_per_category_entries_override_the_file_and_flags_override_both(demo_data: Path, tmp_path: Path) -> None:
    parser = build_parser()
    uflow = Path(__file__).parent.parent / "configs" / "uflow.yaml"
    bottle = read_options_file(uflow, parser, "train", "bottle")
    assert (bottle["lr"], bottle["batch_size"], bottle["epochs"]) == (0.00011289990475381853, 23, 200)
    other = read_options_file(uflow, parser, "train", "my_product")
    assert (other["lr"], other["batch_size"]) == (0.0001, 8)

    config = tmp_path / "per_category.yaml"
    config.write_text(
        "model: fastflow\nweights: random\nimage_size: 64\nflow_steps: 1\nbatch_size: 4\nepochs: 1\n"
        "per_category:\n  pill: {epochs: 2, lr: 0.0005}\n"
    )
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(demo_data), "--config", str(config), "--out", str(out), "--quiet"]) == 0
    requests = {c: json.loads((out / c / "request.json").read_text())["options"] for c in ("fabric", "pill")}
    assert (requests["fabric"]["epochs"], requests["fabric"].get("lr")) == (1, None)
    assert (requests["pill"]["epochs"], requests["pill"]["lr"]) == (2, 0.0005)
    args = ["benchmark", "--data", str(demo_data), "--config", str(config), "--out", str(out), "--lr", "0.002"]
    assert main([*args, "--categories", "pill", "--force", "--quiet"]) == 0
    pill = json.loads((out / "pill" / "request.json").read_text())["options"]
    assert (pill["epochs"], pill["lr"]) == (2, 0.002)


def test_a_bad_per_category_entry_names_the_category(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: 3\nper_category:\n  pill: {epoch: 2}\n")
    assert main(["train", "--config", str(config), "--category", "pill", "--out", str(tmp_path / "o")]) == 2
    assert "(per_category.pill): unknown option(s) ['epoch']" in capsys.readouterr().err


def test_the_command_line_is_parsed_once_and_the_file_read_once(tmp_path: Path, monkeypatch, capsys) -> None:
    import argparse

    from flowad import cli

    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\nout: from_file\nper_category:\n  pill:\n    epochs: 5\n")
    calls = {"parse": 0, "read": 0}
    parse, read = argparse.ArgumentParser.parse_args, cli.read_config_file

    def counted_parse(self, *args, **kwargs):
        calls["parse"] += self.prog == "flowad"
        return parse(self, *args, **kwargs)

    def counted_read(*args, **kwargs):
        calls["read"] += 1
        return read(*args, **kwargs)

    seen = {}
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", counted_parse)
    monkeypatch.setattr(cli, "read_config_file", counted_read)
    monkeypatch.setitem(cli.COMMANDS, "benchmark", lambda args: seen.update(vars(args)))
    assert main(["benchmark", "--config", str(config), "--data", str(tmp_path), "--flow-steps", "2"]) == 0
    assert calls == {"parse": 1, "read": 1}
    assert seen["epochs"] == 3 and seen["flow_steps"] == 2 and seen["out"] == Path("from_file")
    assert seen["per_category"] == {"pill": {"epochs": 5}}
    # a flag given wins over the file, also in its per-category entries
    assert main(["benchmark", "--config", str(config), "--data", str(tmp_path), "--epochs", "7"]) == 0
    assert seen["epochs"] == 7 and seen["per_category"] == {"pill": {}}
