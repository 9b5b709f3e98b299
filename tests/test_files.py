"""`training.files`: atomic writes. A file appears whole or not at all, a failure keeps the old version and
leaves no temporary file, permissions are those of a plain open(), and a write that cannot happen is a
one-line `UserInputError` naming the file. (Full disks: tests/test_faults.py.)"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from base.errors import UserInputError
from training.files import atomic_target, write_atomic, write_json


@pytest.fixture
def umask():
    """`umask(mask)` sets the process umask; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be written into: a read-only tmpfs as root (who ignores permissions), else a
    folder without write permission; skipped where neither is possible."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({result.stderr.strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_writes_text_and_bytes_whole(tmp_path):
    path = tmp_path / "history.csv"
    write_atomic(path, "epoch,loss\n1,0.5\n")
    assert path.read_bytes() == b"epoch,loss\n1,0.5\n"
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    write_atomic(path, payload)
    assert path.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_write_json_writes_the_data_indented_with_a_final_newline(tmp_path):
    data = {"epochs": 3, "loss": [0.5, 0.25], "name": "Zürich", "nested": {"a": None}}
    write_json(tmp_path / "config.json", data)
    text = (tmp_path / "config.json").read_text()
    assert json.loads(text) == data
    assert text == json.dumps(data, indent=2) + "\n"


def test_the_target_appears_only_when_the_block_ends(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with atomic_target(path, suffix=".tmp") as tmp:
        # A temporary beside the target (the rename must not cross file systems), named after it.
        assert tmp.parent == path.parent and tmp != path
        assert tmp.name.startswith(".metrics.json.") and tmp.name.endswith(".tmp")
        tmp.write_text("new")
        assert path.read_text() == "old"  # a reader still sees the whole old file
    assert path.read_text() == "new"
    assert not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("existing", [True, False])
def test_a_failure_inside_the_block_keeps_the_old_file_and_leaves_no_temporary(tmp_path, existing):
    path = tmp_path / "state.json"
    if existing:
        path.write_text('{"epochs_done": 1}')
    with pytest.raises(ValueError, match="half-way"):  # not an OSError: it passes through unchanged
        with atomic_target(path) as tmp:
            tmp.write_text('{"epochs_do')
            raise ValueError("half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["state.json"] if existing else [])
    if existing:
        assert path.read_text() == '{"epochs_done": 1}'


def test_an_os_error_inside_the_block_is_a_clear_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.keras"
    path.write_bytes(b"old checkpoint")
    with pytest.raises(UserInputError) as caught:
        with atomic_target(path) as tmp:
            tmp.write_bytes(b"half a checkp")
            raise OSError(28, "No space left on device")
    assert str(caught.value) == (
        f"{path}: cannot write it (No space left on device); any earlier version of it is unchanged"
    )
    assert path.read_bytes() == b"old checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.keras"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_permissions_follow_the_umask_as_a_plain_open_would(tmp_path, umask, mask):
    umask(mask)
    write_atomic(tmp_path / "atomic.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    assert _mode(tmp_path / "atomic.txt") == 0o666 & ~mask
    assert _mode(tmp_path / "atomic.txt") == _mode(tmp_path / "plain.txt")


def test_a_write_into_a_missing_folder_names_the_file(tmp_path):
    path = tmp_path / "no-such-folder" / "config.json"
    with pytest.raises(UserInputError) as caught:
        write_json(path, {"a": 1})
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot write it (") and "\n" not in message
    assert not path.parent.exists()


def test_a_write_into_a_read_only_folder_names_the_file(read_only_folder):
    path = read_only_folder / "config.json"
    with pytest.raises(UserInputError) as caught:
        write_atomic(path, "{}")
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot write it (") and "\n" not in message
    assert "Read-only file system" in message or "Permission denied" in message
    assert list(read_only_folder.iterdir()) == []


def test_write_atomic_syncs_the_data_to_disk_before_the_rename(tmp_path, monkeypatch):
    """The temporary's bytes are fsynced before it is renamed onto the target, so a crash after the
    rename cannot leave a target whose data never reached the disk."""
    from training import files

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", str(source)))
        real_replace(source, target)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    write_atomic(tmp_path / "history.csv", "epoch,loss\n")
    assert [kind for kind, _ in events] == ["fsync", "replace"]
    assert events[0][1] == events[1][1]  # the file synced is the one renamed
    assert (tmp_path / "history.csv").read_text() == "epoch,loss\n"
