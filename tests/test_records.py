"""Typed run records: their JSON forms round-trip, bad values are refused, and runs written by the
0.1.0 release (tests/data/run-0.1.0, config.json without the preprocess entry, request.json with the seed
beside the settings) still load, score the same and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import flowad
from flowad.checkpoint import read_record
from flowad.data.images import read_image
from flowad.data.spec import DataSpec
from flowad.data.synthetic import make_demo_dataset
from flowad.errors import InputError
from flowad.preprocess import Preprocess
from flowad.records import EngineSettings, RunRecord, TrainRequest
from flowad.thresholds import fixed

OLD_RUN = Path(__file__).parent / "data" / "run-0.1.0"


def test_a_run_of_the_previous_release_loads_and_scores_as_it_did(tmp_path: Path) -> None:
    record = read_record(OLD_RUN)
    assert "preprocess" not in json.loads((OLD_RUN / "config.json").read_text())
    assert record.preprocess == Preprocess(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert record.model == "fastflow" and record.thresholds.method == "fpr=0.01" and record.data.category == "pill"
    # the same synthetic images it was scored on when written (the generator is deterministic per seed)
    data = make_demo_dataset(
        tmp_path, seed=4, categories=("pill",), image_size=64, n_train=8, n_test_good=2, n_test_per_defect=1
    )
    expected = json.loads((OLD_RUN / "expected_scores.json").read_text())
    detector = flowad.load(OLD_RUN)
    for name, score in expected.items():
        assert detector.predict([read_image(data / name)])[0]["score"] == pytest.approx(score, abs=1e-5), name


def test_the_previous_release_request_reads_with_its_seed_in_the_settings(tmp_path: Path) -> None:
    values = json.loads((OLD_RUN / "request.json").read_text())
    request = TrainRequest.from_json(values, OLD_RUN / "request.json")
    assert request.seed == values["seed"] == values["settings"]["seed"]
    assert request.model_config().flow_steps == 1 and request.data.category == "pill"
    assert TrainRequest.from_json(request.to_json()) == request
    assert "seed" not in request.to_json()  # the seed lives in one place: the settings


def test_run_record_round_trip(tmp_path: Path) -> None:
    record = read_record(OLD_RUN)
    again = RunRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record
    assert again.to_json()["preprocess"] == {
        "size": [64, 64],
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "resize": "bilinear",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(format_version=99), "format version 99"),
        (lambda c: c.update(format="other"), "not a flowad run config"),
        (lambda c: c.pop("thresholds"), "lacks or garbles 'thresholds'"),
        (lambda c: c["backbone"].pop("fingerprint"), "lacks or garbles 'fingerprint'"),
    ],
)
def test_a_damaged_run_record_is_named(tmp_path: Path, change, message: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    config = json.loads((run / "config.json").read_text())
    change(config)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=message):
        read_record(run)


def test_records_refuse_bad_values_where_they_enter() -> None:
    spec = DataSpec("data", "pill")
    with pytest.raises(InputError, match="--fpr 1: expected a number >= 0 and < 1"):
        TrainRequest("fastflow", spec, fpr=1)
    with pytest.raises(InputError, match="--epochs 0"):
        TrainRequest("fastflow", spec, {"epochs": 0})
    with pytest.raises(InputError, match="unknown option"):
        TrainRequest("fastflow", spec, {"no_such_option": 1})
    with pytest.raises(InputError, match="--val-fraction 1"):
        DataSpec("data", "pill", val_fraction=1.0)
    with pytest.raises(InputError, match="--cache sometimes"):
        EngineSettings(cache="sometimes")
    with pytest.raises(InputError, match="unknown key"):
        TrainRequest.from_json({"model": "fastflow", "data": {"root": "x"}, "colour": "red"})
    assert fixed(1.0, 0.0, 2.0).method == "value=1"
