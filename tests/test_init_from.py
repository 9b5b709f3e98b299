"""Fine-tuning (`--init-from`): a new run starts from a source's weights and takes its network options;
a source that does not fit (task, channels, network, an option given otherwise) is one `error:` line,
exit status 2 and no run folder; the run folder records the source; `--resume` is unchanged."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import zoo  # noqa: F401 (registers the project's layers)
from training import denoise, segment


def _drop(flags: tuple[str, ...], flag: str) -> list[str]:
    """`flags` without `flag` and its value."""
    out, skip = [], False
    for item in flags:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        else:
            out.append(item)
    return out


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def _trainable(path: Path) -> list[np.ndarray]:
    model = keras.models.load_model(path, compile=False)
    return [np.asarray(w) for w in model.trainable_weights]


# One step at a negligible learning rate: the run's weights stay the ones it started from.
FROZEN = ["--epochs", "1", "--steps-per-epoch", "1", "--learning-rate", "1e-9", "--min-learning-rate", "0"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory, tiny_segment_flags: tuple[str, ...]) -> Path:
    """A finished tiny segmentation run of depth 2 (the tiny flags' depth is 1)."""
    out_dir = tmp_path_factory.mktemp("source") / "runs"
    argv = [*tiny_segment_flags, "--depth", "2", "--out-dir", str(out_dir), "--run-name", "source"]
    assert segment.main(argv) == 0, "the source run failed"
    return out_dir / "source"


def _fine_tune(flags, source: str, out_dir: Path, name: str, *extra: str) -> int:
    argv = [*_drop(flags, "--depth"), "--init-from", source, "--out-dir", str(out_dir), "--run-name", name]
    return segment.main([*argv, *FROZEN, *extra])


def test_a_fine_tuned_run_starts_from_the_source_weights_and_takes_its_network(
    source_run: Path, tiny_segment_flags, tmp_path: Path
):
    assert _fine_tune(tiny_segment_flags, str(source_run), tmp_path, "tuned") == 0
    run = tmp_path / "tuned"
    assert json.loads((run / "config.json").read_text())["depth"] == 2  # taken from the source
    source, tuned = _trainable(source_run / "best.keras"), _trainable(run / "last.keras")
    assert len(source) == len(tuned)
    assert max(float(np.abs(a - b).max()) for a, b in zip(source, tuned, strict=True)) < 1e-5

    record = json.loads((run / "init.json").read_text())
    digest = hashlib.sha256((source_run / "best.keras").read_bytes()).hexdigest()
    assert (record["kind"], record["sha256"], record["task"]) == ("run folder", digest, "segment")
    assert record["options_taken"]["depth"] == 2

    # Control: the same run from random weights is far from the source.
    argv = [*tiny_segment_flags, "--depth", "2", "--out-dir", str(tmp_path), "--run-name", "scratch"]
    assert segment.main([*argv, *FROZEN, "--seed", "3"]) == 0
    scratch = _trainable(tmp_path / "scratch" / "last.keras")
    assert max(float(np.abs(a - b).max()) for a, b in zip(source, scratch, strict=True)) > 1e-2


def test_a_package_and_a_keras_file_are_sources_too(source_run: Path, tiny_segment_flags, tmp_path: Path):
    package = tmp_path / "source.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("rdf.yaml", "weights:\n  keras_v3:\n    source: net.keras\n")
        archive.write(source_run / "best.keras", "net.keras")
    source = _trainable(source_run / "best.keras")
    for given, name, kind in (
        (package, "from-zip", "package"),
        (source_run / "best.keras", "from-file", "keras file"),
    ):
        # These sources do not record their options: the network is given as it was trained.
        assert _fine_tune(tiny_segment_flags, str(given), tmp_path, name, "--depth", "2") == 0
        tuned = _trainable(tmp_path / name / "last.keras")
        assert max(float(np.abs(a - b).max()) for a, b in zip(source, tuned, strict=True)) < 1e-5
        assert json.loads((tmp_path / name / "init.json").read_text())["kind"] == kind


def test_sources_that_do_not_fit_are_refused_in_one_line_and_write_nothing(
    source_run: Path, tiny_segment_flags, tmp_path: Path, tiny_model, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "runs"
    two_channels = tmp_path / "two.keras"
    tiny_model("unet", input_channels=2, depth=2).save(two_channels)
    cases = [
        # an option given otherwise than the source's
        ([*tiny_segment_flags, "--init-from", str(source_run)], "--depth 2"),
        # another network, from a file that does not say which
        ([*tiny_segment_flags, "--init-from", str(source_run / "best.keras")], "another network"),
        # another number of channels
        ([*_drop(tiny_segment_flags, "--depth"), "--init-from", str(two_channels)], "2 channel(s)"),
        # not a source at all
        ([*tiny_segment_flags, "--init-from", str(tmp_path / "nothing")], "no shipped model of that name"),
        ([*tiny_segment_flags, "--init-from", str(source_run / "config.json")], "expected a run folder"),
    ]
    for argv, expected in cases:
        assert segment.main([*argv, "--out-dir", str(out)]) == 2, expected
        errors = _errors(capsys)
        assert len(errors) == 1 and expected in errors[0], (expected, errors)
    assert not out.exists() or not any(out.iterdir())

    # another task
    flags = ["--epochs", "1", "--steps-per-epoch", "1", "--no-export", "--out-dir", str(out)]
    assert denoise.main([*flags, "--init-from", str(source_run)]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "a segment model; it cannot start a denoise run" in errors[0]
    assert not out.exists() or not any(out.iterdir())


def test_resume_does_not_take_another_source(source_run: Path, capsys: pytest.CaptureFixture[str]):
    assert segment.main(["--resume", str(source_run), "--init-from", str(source_run)]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "cannot change init_from when resuming" in errors[0]


@pytest.mark.parametrize("task", ["denoise", "care"])
def test_the_restoration_tasks_fine_tune_from_their_own_runs(task: str, tmp_path: Path):
    """Every task takes --init-from: a restoration run (the embedded demo, tiny) starts another."""
    from test_care import TINY_CARE_FLAGS
    from test_predict_cli import TINY_DENOISE

    from training import care

    main, flags = {"denoise": (denoise.main, TINY_DENOISE), "care": (care.main, list(TINY_CARE_FLAGS))}[task]
    out = ["--out-dir", str(tmp_path)]
    assert main([*flags, *out, "--run-name", "source", "--depth", "2"]) == 0
    source = tmp_path / "source"
    checkpoint = "last.keras" if task == "denoise" else "best.keras"
    drop_depth = [*_drop(tuple(flags), "--depth"), *out, "--run-name", "tuned", "--init-from", str(source)]
    assert main([*drop_depth, *FROZEN]) == 0
    record = json.loads((tmp_path / "tuned" / "init.json").read_text())
    assert (record["task"], record["options_taken"]["depth"]) == (task, 2)
    before, after = _trainable(source / checkpoint), _trainable(tmp_path / "tuned" / "last.keras")
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, after, strict=True)) < 1e-5
