"""Tests of the segmentation config (training.tasks.segment) as the command line builds it (training.cli,
base.cli):
validation messages, range and cross-field checks, precedence of flags over `--config`, list and boolean
flags, the round trip through `config.json`, and the per-epoch learning-rate schedules.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import keras
import pytest

import training.core
import training.segment
from base.cli import build_options, given_values, read_options_file
from base.errors import UserInputError
from training.callbacks import epoch_schedule
from training.cli import training_parser
from training.tasks import get_task
from training.tasks.segment import SegmentConfig


def _config_and_flags(args: argparse.Namespace) -> tuple[SegmentConfig, dict]:
    """The config as the training command builds it (defaults < `--config` file < flags), and the flags
    that were given."""
    values = read_options_file(args.config) if args.config else {}
    flags = given_values(SegmentConfig, args)
    source = f"{args.config} + command line" if args.config else "command line"
    return build_options(SegmentConfig, values | flags, source=source), flags


def _config(*argv: str) -> SegmentConfig:
    parser = training_parser(get_task("segment"))
    return _config_and_flags(parser.parse_args(list(argv)))[0]


def _error(*argv: str) -> str:
    with pytest.raises(UserInputError) as caught:
        _config(*argv)
    return str(caught.value)


# === Messages and checks ===


def test_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    config_file = tmp_path / "options.json"
    config_file.write_text(json.dumps({"patch_sise": 64, "epoks": 3}))

    message = _error("--config", str(config_file))

    assert message.splitlines() == [
        f"{config_file} + command line: unknown key 'patch_sise'",
        f"{config_file} + command line: unknown key 'epoks'",
    ]


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (("--patch-size", "4"), "patch_size"),
        (("--patch-size", "8192"), "patch_size"),
        (("--learning-rate", "-1"), "learning_rate"),
        (("--learning-rate", "0"), "learning_rate"),
        (("--epochs", "0"), "epochs"),
        (("--batch-size", "0"), "batch_size"),
        (("--seed", "-1"), "seed"),
        (("--depth", "7"), "depth"),
        (("--dropout", "1"), "dropout"),
        (("--val-fraction", "1"), "val_fraction"),
        (("--class-weights", "1", "2"), "class_weights"),
        (("--tile-size", "16"), "tile_size"),
        (("--epochs", "three"), "epochs"),
    ],
)
def test_out_of_range_value_is_one_line_naming_the_key(argv: tuple[str, ...], key: str) -> None:
    message = _error(*argv)

    assert len(message.splitlines()) == 1
    assert message.startswith(f"command line: {key}: ")


def test_bad_value_in_config_file_names_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "options.json"
    config_file.write_text(json.dumps({"epochs": -3}))

    assert _error("--config", str(config_file)).startswith(f"{config_file} + command line: epochs: ")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--patch-size", "40", "--depth", "4"), "patch_size (40) must be a multiple of 2**depth (16)"),
        (("--percentile-low", "99", "--percentile-high", "50"), "percentile_low must be smaller"),
        (("--percentile-low", "50", "--percentile-high", "50"), "percentile_low must be smaller"),
        (
            ("--lr-schedule", "cosine", "--warmup-epochs", "5", "--epochs", "5"),
            "warmup_epochs (5) must be smaller",
        ),
        (("--kernel-size", "4"), "kernel_size must be odd"),
        (("--val-fraction", "0.5", "--test-fraction", "0.5"), "must leave images for training"),
        (("--learning-rate", "1e-4", "--min-learning-rate", "1e-3"), "min_learning_rate must not exceed"),
        (("--class-weights", "1", "-1", "1"), "class_weights must not be negative"),
    ],
)
def test_cross_field_check_is_refused(argv: tuple[str, ...], fragment: str) -> None:
    assert fragment in _error(*argv)


@pytest.mark.parametrize(
    "argv",
    [
        ("--patch-size", "48", "--depth", "4"),
        ("--lr-schedule", "plateau", "--warmup-epochs", "5", "--epochs", "5"),  # warm-up is cosine's only
        ("--lr-schedule", "cosine", "--warmup-epochs", "4", "--epochs", "5"),
    ],
)
def test_cross_field_edge_that_is_valid_is_accepted(argv: tuple[str, ...]) -> None:
    _config(*argv)


# === --help ===


def test_help_prints_each_default_once() -> None:
    parser = training_parser(get_task("segment"))
    text = " ".join(parser.format_help().split())

    assert "--epochs EPOCHS Number of epochs. (default: 20)" in text
    assert "Batch normalisation after each convolution. (default: on)" in text
    assert "Loss weights of background, interior, boundary. (default: 1.0 1.0 10.0)" in text
    assert "(default: None)" not in text and "[default:" not in text
    # Every "default:" printed is one that an option's own help holds (the formatter adds none).
    assert text.count("default:") == sum((action.help or "").count("default:") for action in parser._actions)
    for action in parser._actions:
        assert (action.help or "").count("(default:") <= 1, action.dest


# === Where values come from ===


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "options.json"
    config_file.write_text(json.dumps({"epochs": 5, "depth": 2, "patch_size": 64}))
    parser = training_parser(get_task("segment"))

    config, flags = _config_and_flags(parser.parse_args(["--config", str(config_file), "--epochs", "7"]))

    assert (config.epochs, config.depth, config.patch_size) == (7, 2, 64)
    assert flags == {"epochs": "7"}


@pytest.mark.parametrize("task", ["segment", "denoise"])
def test_volumes_take_smaller_patches_and_batches_unless_given(task: str, tmp_path: Path) -> None:
    parser = training_parser(get_task(task))
    volume = _config_and_flags(parser.parse_args(["--ndim", "3"]))[0]
    assert (volume.patch_size, volume.batch_size) == (64, 4)
    given = _config_and_flags(parser.parse_args(["--ndim", "3", "--patch-size", "96", "--batch-size", "2"]))[
        0
    ]
    assert (given.patch_size, given.batch_size) == (96, 2)
    config_file = tmp_path / "options.json"
    config_file.write_text(json.dumps({"batch_size": 6}))
    from_file = _config_and_flags(parser.parse_args(["--config", str(config_file)]))[0]
    image = from_file.for_ndim(2)
    assert image.batch_size == 6 and image.patch_size == type(image).model_fields["patch_size"].default
    assert (from_file.for_ndim(3).patch_size, from_file.for_ndim(3).batch_size) == (64, 6)
    # A recorded run sets every option: resuming it changes none of them.
    recorded = type(volume)(**volume.model_dump())
    assert recorded.for_ndim(3).model_dump() == volume.model_dump()


def test_list_flag_takes_several_values() -> None:
    assert _config("--class-weights", "1", "2", "3").class_weights == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), True),
        (("--batch-norm",), True),
        (("--no-batch-norm",), False),
    ],
)
def test_boolean_flag_has_a_negative_form(argv: tuple[str, ...], expected: bool) -> None:
    assert _config(*argv).batch_norm is expected


def test_no_deterministic_turns_determinism_off() -> None:
    assert _config("--no-deterministic").deterministic is False


def test_config_json_of_a_run_round_trips_into_the_config(
    tiny_segment_flags: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only what the core writes before training is under test here: skip the training itself.
    monkeypatch.setattr(training.core, "_fit_and_evaluate", lambda *args, **kwargs: None)
    argv = [
        *tiny_segment_flags,
        "--out-dir",
        str(tmp_path / "runs"),
        "--run-name",
        "r",
        "--class-weights",
        "1",
        "2",
        "3",
        "--no-batch-norm",
        "--lr-schedule",
        "cosine",
        "--warmup-epochs",
        "1",
    ]

    assert training.segment.main(argv) == 0

    written = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())
    # `--backend auto` is recorded as the backend that ran.
    assert written["backend"] == keras.backend.backend()
    # ... and the spatial axes as the data decided them (2D images here).
    assert written["ndim"] == 2
    expected = _config(*argv).model_copy(update={"backend": written["backend"], "ndim": 2})
    assert SegmentConfig(**written) == expected
    assert SegmentConfig(**written).model_dump(mode="json") == written


# === Learning-rate schedules, computed by hand ===


def _schedule(**options):
    return epoch_schedule(SegmentConfig(learning_rate=1e-3, min_learning_rate=1e-6, **options))


def test_cosine_schedule_warms_up_linearly_then_decays_to_the_floor() -> None:
    cosine = _schedule(lr_schedule="cosine", epochs=11, warmup_epochs=2)
    expected = {
        0: 1e-3 / 3,
        1: 2e-3 / 3,
        2: 1e-3,  # end of warm-up: the peak
        4: 1e-6 + 0.5 * 0.999e-3 * (1 + math.sqrt(0.5)),  # a quarter of the decay
        6: (1e-3 + 1e-6) / 2,  # half of the decay
        10: 1e-6,  # last epoch: the floor
    }
    for epoch, lr in expected.items():
        assert cosine(epoch, 0.123) == pytest.approx(lr, rel=1e-9), epoch


def test_cosine_schedule_without_warm_up_starts_at_the_peak() -> None:
    assert _schedule(lr_schedule="cosine", epochs=5, warmup_epochs=0)(0, 0.123) == pytest.approx(1e-3)


def test_poly_schedule_decays_with_its_power_down_to_the_floor() -> None:
    poly = _schedule(lr_schedule="poly", epochs=10, poly_power=2)
    expected = {0: 1e-3, 5: 2.5e-4, 9: 1e-5, 10: 1e-6}
    for epoch, lr in expected.items():
        assert poly(epoch, 0.123) == pytest.approx(lr, rel=1e-9), epoch
    # The default power 0.9: 2 ** -0.9 = 0.535887...
    assert _schedule(lr_schedule="poly", epochs=10)(5, 0.123) == pytest.approx(5.35887e-4, rel=1e-5)


def test_constant_schedule_ignores_epoch_and_current_rate() -> None:
    constant = _schedule(lr_schedule="constant", epochs=30)
    assert [constant(epoch, 0.5) for epoch in (0, 5, 29)] == [1e-3] * 3


def test_plateau_has_no_epoch_schedule() -> None:
    assert _schedule(lr_schedule="plateau") is None
