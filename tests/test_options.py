"""Every option of every command is checked where it enters: a bad value is one line naming the option and
what is expected, exit status 2, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowad import cli
from flowad.cli_options import subparser, typed_option
from flowad.models import MODELS
from flowad.ranges import RANGES, option_flag

# a value outside each range (a count of 0, a negative rate, a probability of 1, ...)
BAD_VALUE = {
    "lr_end_factor": "0",
    "nfa_probability_threshold": "1",
    "val_fraction": "1",
    "fpr": "1",
    "cache_limit_gb": "-1",
    "weight_decay": "-0.5",
    "seed": "-1",
    "num_workers": "-1",
    "tile": "-1",  # 0 turns tiling off
    "tile_stride": "-1",
    "lr_warmup_fraction": "1",  # shares of the run, [0, 1)
    "lr_decay_milestones": "1",
    "max_grad_norm": "-1",  # 0 turns clipping off
}


def _bad(field: str) -> str:
    return BAD_VALUE.get(field, "0" if RANGES[field].integer or RANGES[field].low == 0 else "-1")


def _model_of(field: str) -> str:
    """A model that has ``field``."""
    return next(name for name, cls in MODELS.items() if field in cls.config_class.__dataclass_fields__)


MODEL_FIELDS = sorted({f for cls in MODELS.values() for f in cls.config_class.__dataclass_fields__} & set(RANGES))


def _commands(tmp: Path) -> dict[str, list[str]]:
    """Each command that takes model options, with the least it needs to reach its option checks."""
    return {
        "train": ["train", "--data", str(tmp / "absent"), "--out", str(tmp / "run")],
        "benchmark": ["benchmark", "--data", str(tmp / "absent"), "--out", str(tmp / "bench")],
        "demo": ["demo", "--out", str(tmp / "demo")],
    }


def _refused(argv: list[str], capsys: pytest.CaptureFixture, *expected: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("command", ["train", "benchmark", "demo"])
@pytest.mark.parametrize("field", MODEL_FIELDS)
def test_model_options_out_of_range(command: str, field: str, tmp_path: Path, capsys) -> None:
    flag, value = option_flag(field), _bad(field)
    argv = [*_commands(tmp_path)[command], "--model", _model_of(field), flag, value]
    _refused(argv, capsys, flag, value, "expected")
    assert not any(tmp_path.iterdir()), "an option error must stop the command before it writes anything"


@pytest.mark.parametrize("command", ["train", "benchmark", "demo"])
@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--dist-timeout", "0", "a number > 0"),
        ("--precision", "fp8", "invalid choice"),
        ("--model", "nosuchmodel", "nosuchmodel"),
        ("--input-statistics", "mine", "input_statistics"),
    ],
)
def test_engine_and_choice_options(command: str, flag: str, value: str, expected: str, tmp_path: Path, capsys) -> None:
    if flag == "--precision":  # argparse's own choices: exit 2 with a usage line
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*_commands(tmp_path)[command], flag, value])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err
        return
    _refused([*_commands(tmp_path)[command], flag, value], capsys, value, expected)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--val-fraction", "1"),
        ("--val-fraction", "-0.1"),
        ("--fpr", "-0.01"),
        ("--fpr", "1.5"),
        ("--seed", "-1"),
        ("--cache-limit-gb", "-2"),
    ],
)
def test_train_data_and_cache_options(flag: str, value: str, tmp_path: Path, capsys) -> None:
    _refused([*_commands(tmp_path)["train"], flag, value], capsys, flag, "expected")
    assert not any(tmp_path.iterdir())


def test_a_count_given_as_a_fraction_is_refused(tmp_path: Path, capsys) -> None:
    _refused([*_commands(tmp_path)["train"], "--flow-steps", "0"], capsys, "--flow-steps 0", "an integer >= 1")


def test_image_size_takes_one_value_or_height_and_width(tmp_path: Path, capsys) -> None:
    train = _commands(tmp_path)["train"]
    parser = cli.build_parser()
    assert parser.parse_args([*train, "--image-size", "64"]).image_size == 64  # a square: the int, as always
    assert parser.parse_args([*train, "--image-size", "96", "160"]).image_size == [96, 160]
    expected = ("--image-size 96 160 224", "expected one size (a square) or two, height and width")
    _refused([*train, "--image-size", "96", "160", "224"], capsys, *expected)
    config = tmp_path / "config.yaml"
    config.write_text("image_size: [96, 160, 224]\n")  # a config file's list: the same check
    _refused([*train, "--config", str(config)], capsys, *expected)
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_nfa_window_sizes_and_levels_take_one_value_or_several(tmp_path: Path, capsys) -> None:
    train = _commands(tmp_path)["train"]
    parser = cli.build_parser()
    one = parser.parse_args([*train, "--nfa-window-size", "7", "--nfa-probability-threshold", "0.5"])
    assert (one.nfa_window_size, one.nfa_probability_threshold) == (7, 0.5)  # one value: itself, as always
    args = [*train, "--nfa-window-size", "3", "15", "--nfa-probability-threshold", "0.5", "0.99"]
    several = parser.parse_args(args)
    assert (several.nfa_window_size, several.nfa_probability_threshold) == ([3, 15], [0.5, 0.99])
    _refused([*train, "--nfa-probability-threshold", "0.5", "1"], capsys, "--nfa-probability-threshold 0.5 1", "< 1")
    _refused([*train, "--nfa-window-size", "3", "0"], capsys, "--nfa-window-size 3 0", "an integer >= 1")
    assert not any(tmp_path.iterdir())
    # a config file's list as the flag gives it: YAML reads 1e-2 as a string
    assert typed_option(subparser(parser, "train"), "nfa_probability_threshold", [0.5, "1e-2"]) == [0.5, 0.01]
