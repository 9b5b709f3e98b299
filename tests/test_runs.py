"""`training.runs`: a new run folder is never an old one, a failed run leaves no folder unless it can be
resumed, a resumed run takes its recorded config with only the resumable options changed and removes the
temporaries of the killed process, and the run's sample image is a centred crop of at most 256 x 256."""

from __future__ import annotations

import numpy as np
import pytest

from base.errors import UserInputError
from base.run_folder import LAST_CHECKPOINT, SAMPLE_FILE, SAMPLE_SIZE
from training import runs
from training.config import RESUMABLE_OVERRIDES, TrainingConfig
from training.runs import new_run_dir, removed_unless_resumable, resumed_config, write_sample


@pytest.fixture
def frozen_clock(monkeypatch):
    """Every auto-named run folder gets the same time stamp, as runs started within one second do."""
    monkeypatch.setattr(runs.time, "strftime", lambda fmt, *args: "20250102-030405")


# === new_run_dir ===


def test_auto_named_folders_are_numbered_and_never_reused(tmp_path, frozen_clock):
    config = TrainingConfig(out_dir=str(tmp_path / "out" / "runs"))  # nor its parent
    made = [new_run_dir(config, "segment") for _ in range(3)]
    assert [p.name for p in made] == [
        "segment-20250102-030405",
        "segment-20250102-030405-2",
        "segment-20250102-030405-3",
    ]
    assert all(p.parent == tmp_path / "out" / "runs" and p.is_dir() and not any(p.iterdir()) for p in made)


def test_an_auto_name_taken_by_another_folder_is_skipped_and_that_folder_left_alone(tmp_path, frozen_clock):
    taken = tmp_path / "denoise-20250102-030405"
    taken.mkdir()
    (taken / "last.keras").write_bytes(b"someone's checkpoint")
    (tmp_path / "denoise-20250102-030405-2").write_text("a file, not a folder")

    run_dir = new_run_dir(TrainingConfig(out_dir=str(tmp_path)), "denoise")

    assert run_dir == tmp_path / "denoise-20250102-030405-3" and run_dir.is_dir()
    assert [p.name for p in taken.iterdir()] == ["last.keras"]
    assert (taken / "last.keras").read_bytes() == b"someone's checkpoint"


def test_a_given_run_name_is_used_as_is(tmp_path, frozen_clock):
    run_dir = new_run_dir(TrainingConfig(out_dir=str(tmp_path), run_name="mine"), "care")
    assert run_dir == tmp_path / "mine" and run_dir.is_dir()


def test_an_existing_run_name_is_refused_and_its_folder_left_alone(tmp_path):
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "history.csv").write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(UserInputError) as caught:
        new_run_dir(TrainingConfig(out_dir=str(tmp_path), run_name="mine"), "segment")
    message = str(caught.value)
    assert message.startswith(f"{existing}: run folder exists already")
    assert "--run-name" in message and "--resume" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert (existing / "history.csv").read_text() == "epoch,loss\n1,0.5\n"


@pytest.mark.parametrize("run_name", [None, "r"])
def test_an_out_dir_that_is_a_file_is_refused_as_such(tmp_path, run_name):
    out_dir = tmp_path / "runs"
    out_dir.write_text("not a folder")
    with pytest.raises(UserInputError) as caught:
        new_run_dir(TrainingConfig(out_dir=str(out_dir), run_name=run_name), "segment")
    # Not "run folder exists already; choose another --run-name", which would not help.
    assert str(caught.value) == f"{out_dir}: not a folder; choose another --out-dir"
    assert out_dir.read_text() == "not a folder"


# === removed_unless_resumable ===


@pytest.mark.parametrize("error", [RuntimeError("training failed"), KeyboardInterrupt()])
def test_a_failure_before_the_first_checkpoint_removes_the_folder(tmp_path, error):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / "tensorboard").mkdir()
    with pytest.raises(type(error)):
        with removed_unless_resumable(run_dir):
            raise error
    assert not run_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_failure_after_a_checkpoint_keeps_the_resumable_folder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / LAST_CHECKPOINT).write_bytes(b"checkpoint")
    with pytest.raises(RuntimeError, match="disk"):
        with removed_unless_resumable(run_dir):
            raise RuntimeError("disk")
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", LAST_CHECKPOINT]


def test_a_run_that_succeeds_keeps_its_folder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    with removed_unless_resumable(run_dir):
        pass
    assert [p.name for p in run_dir.iterdir()] == ["metrics.json"]


# === write_sample ===


def _image(height: int, width: int, channels: int, dtype=np.float32) -> np.ndarray:
    """Every pixel different, so a crop taken from anywhere else cannot match."""
    return np.arange(height * width * channels, dtype=np.int64).reshape(height, width, channels).astype(dtype)


@pytest.mark.parametrize(
    ("shape", "top", "left"),
    [
        ((300, 400, 2), 22, 72),  # both sides cut, centred
        ((257, 600, 1), 0, 172),  # an odd excess: the crop starts at its floor
        ((300, 100, 3), 22, 0),  # only the rows cut
        ((256, 256, 1), 0, 0),  # exactly the sample size
        ((40, 30, 1), 0, 0),  # smaller: kept whole
    ],
)
def test_the_sample_is_a_centred_crop_of_at_most_256_by_256(tmp_path, shape, top, left):
    image = _image(*shape)
    write_sample(tmp_path, image)
    sample = np.load(tmp_path / SAMPLE_FILE, allow_pickle=False)
    height, width = min(shape[0], SAMPLE_SIZE), min(shape[1], SAMPLE_SIZE)
    assert SAMPLE_SIZE == 256 and sample.shape == (height, width, shape[2])
    assert sample.dtype == image.dtype
    np.testing.assert_array_equal(sample, image[top : top + height, left : left + width])
    assert sorted(p.name for p in tmp_path.iterdir()) == [SAMPLE_FILE]


def test_the_sample_keeps_the_raw_pixel_type(tmp_path):
    image = _image(300, 300, 1, np.uint16)
    write_sample(tmp_path, image)
    sample = np.load(tmp_path / SAMPLE_FILE, allow_pickle=False)
    assert sample.dtype == np.uint16
    np.testing.assert_array_equal(sample, image[22:278, 22:278])


# === resumed_config ===


def _resumable(tmp_path) -> tuple:
    """A run folder with a checkpoint, and the values of its config.json."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LAST_CHECKPOINT).write_bytes(b"checkpoint")
    values = TrainingConfig(epochs=5, batch_size=6, learning_rate=0.01, out_dir=str(tmp_path)).model_dump()
    return run_dir, values


def test_resuming_a_folder_without_a_last_checkpoint_is_refused(tmp_path):
    """No last.keras: a one-line refusal naming the folder and the missing file."""
    run_dir, values = _resumable(tmp_path)
    (run_dir / LAST_CHECKPOINT).unlink()
    with pytest.raises(UserInputError) as caught:
        resumed_config(run_dir, TrainingConfig, values, {})
    assert str(caught.value) == f"{run_dir}: not a resumable run folder (missing {LAST_CHECKPOINT})"


def test_resuming_takes_the_recorded_config_with_the_resumable_overrides(tmp_path):
    """The recorded values stay, an override of a resumable option (epochs, export) replaces its value."""
    run_dir, values = _resumable(tmp_path)
    config = resumed_config(run_dir, TrainingConfig, values, {"epochs": 9, "export": False})
    assert isinstance(config, TrainingConfig)
    assert (config.epochs, config.export) == (9, False)
    assert (config.batch_size, config.learning_rate, config.out_dir) == (6, 0.01, str(tmp_path))


def test_resuming_with_another_value_of_a_fixed_option_is_refused_naming_it(tmp_path):
    """An override outside RESUMABLE_OVERRIDES is refused, every such option named and the allowed ones
    listed; the config is not built and nothing in the folder is touched."""
    run_dir, values = _resumable(tmp_path)
    stale = run_dir / ".history.csv.abc123"
    stale.write_text("half")
    with pytest.raises(UserInputError) as caught:
        resumed_config(run_dir, TrainingConfig, values, {"learning_rate": 0.1, "epochs": 9, "batch_size": 2})
    allowed = ", ".join(sorted(RESUMABLE_OVERRIDES))
    assert str(caught.value) == (
        f"{run_dir}: cannot change batch_size, learning_rate when resuming (only {allowed})"
    )
    assert stale.exists()


def test_resuming_removes_the_temporaries_of_the_killed_run_and_keeps_finished_files(tmp_path, capsys):
    """Temporaries of atomic writes (`.NAME.<random>`, `*.partial.keras`) go, each one reported; the
    checkpoint, finished files and other hidden files stay."""
    run_dir, values = _resumable(tmp_path)
    stale = [".history.csv.x1y2", ".last.keras.q9w8.partial.keras", ".state.json.k3"]
    kept = [LAST_CHECKPOINT, "history.csv", ".hidden-notes", "notes.txt"]
    for name in stale + kept[1:]:
        (run_dir / name).write_text(name)
    resumed_config(run_dir, TrainingConfig, values, {})
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(kept)
    out = capsys.readouterr().out
    assert all(f"removed {name}, a partial file of the interrupted run" in out for name in stale)
