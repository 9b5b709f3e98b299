"""Packages from strangers: checking one never writes outside its scratch folder, never runs code from
the package (other than model weights in their runtime), and refuses a zip bomb before extracting it."""

from __future__ import annotations

import hashlib
import stat
import struct
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from export.check import MAX_TOTAL_BYTES, check_package, safe_extract
from export.errors import ExportError


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_symbolic_link_member_is_refused(tmp_path):
    package = tmp_path / "link.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\n")
        info = zipfile.ZipInfo("weights.onnx")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(ExportError, match="symbolic link"):
        check_package(package)


def test_a_zip_bomb_is_refused_before_anything_is_extracted(tmp_path):
    package = _zip(tmp_path / "bomb.zip", {"rdf.yaml": b"type: model\n", "zeros.bin": b"\0" * (64 * 2**20)})
    assert package.stat().st_size < 200_000  # 64 MiB of zeros pack into a few hundred KiB
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(ExportError, match="zip bomb"):
        safe_extract(package, target)
    assert list(target.iterdir()) == []


def _patch_declared_size(package: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size of `member` in the central directory (a lying header)."""
    data = bytearray(package.read_bytes())
    with zipfile.ZipFile(package) as archive:
        info = archive.getinfo(member)
    name = member.encode()
    position = 0
    while True:  # the central directory entry of `member`
        position = data.find(b"PK\x01\x02", position)
        assert position >= 0
        name_length = struct.unpack("<H", data[position + 28 : position + 30])[0]
        if bytes(data[position + 46 : position + 46 + name_length]) == name:
            break
        position += 4
    data[position + 24 : position + 28] = struct.pack("<I", size)
    assert info.file_size != size
    package.write_bytes(bytes(data))


def test_a_member_that_declares_a_huge_size_is_refused(tmp_path):
    package = _zip(tmp_path / "huge.zip", {"rdf.yaml": b"type: model\n", "w.bin": b"x" * 1000})
    _patch_declared_size(package, "w.bin", MAX_TOTAL_BYTES + 1 if MAX_TOTAL_BYTES < 2**32 else 2**32 - 1)
    with pytest.raises(ExportError, match="zip bomb"):
        safe_extract(package, tmp_path / "target")


def test_a_member_larger_than_it_declares_is_stopped_while_extracting(tmp_path):
    package = _zip(tmp_path / "liar.zip", {"rdf.yaml": b"type: model\n", "w.bin": b"x" * 5000})
    _patch_declared_size(package, "w.bin", 10)
    with pytest.raises((ExportError, zipfile.BadZipFile)):
        safe_extract(package, tmp_path / "target")


@pytest.mark.parametrize(
    "name", ["../escape.txt", "/tmp/escape.txt", "sub/../../escape.txt", "C:/escape.txt"]
)
def test_members_that_point_outside_are_refused(tmp_path, name):
    package = _zip(tmp_path / "slip.zip", {"rdf.yaml": b"type: model\n", name: b"x"})
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    with pytest.raises(ExportError, match="points outside the package"):
        safe_extract(package, target)
    assert not (tmp_path / "deep" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    assert list(target.iterdir()) == []


def test_code_in_a_keras_file_of_a_package_is_never_run(tmp_path):
    """A `.keras` file whose Lambda layer would write a marker file: loading it is refused (Keras's safe
    mode), so the check fails and the marker never appears."""
    marker = tmp_path / "pwned"
    inputs = keras.Input((None, None))
    # The path is a constant of the lambda's code (a closure over a Path would not serialise).
    code = eval(f"lambda x: x * 1.0 + float(open({str(marker)!r}, 'w').write('x') * 0)")
    outputs = keras.layers.Lambda(code)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "evil.keras")
    marker.unlink(missing_ok=True)  # saving traced the lambda once; only loading matters below
    weights = (tmp_path / "evil.keras").read_bytes()
    sha = hashlib.sha256(weights).hexdigest()
    test = tmp_path / "t.npy"
    np.save(test, np.random.default_rng(0).normal(size=(1, 16, 16)).astype(np.float32))
    rdf = f"""format_version: 0.5.10
type: model
name: evil model
description: runs code
authors: [{{name: x}}]
cite: [{{text: x, doi: 10.1007/978-3-319-24574-4_28}}]
license: MIT
documentation: README.md
inputs:
  - id: raw
    axes: [{{type: batch}}, {{type: space, id: y, size: 16}}, {{type: space, id: x, size: 16}}]
    test_tensor: {{source: t.npy, sha256: {hashlib.sha256(test.read_bytes()).hexdigest()}}}
    data: {{type: float32}}
outputs:
  - id: out
    axes: [{{type: batch}}, {{type: space, id: y, size: 16}}, {{type: space, id: x, size: 16}}]
    test_tensor: {{source: t.npy, sha256: {hashlib.sha256(test.read_bytes()).hexdigest()}}}
    data: {{type: float32}}
weights:
  keras_v3:
    source: weights.keras
    sha256: {sha}
    keras_version: 3.0.0
    backend: [tensorflow, 2.21.0]
"""
    package = _zip(
        tmp_path / "evil.zip",
        {
            "rdf.yaml": rdf.encode(),
            "README.md": b"# evil\n",
            "t.npy": test.read_bytes(),
            "weights.keras": weights,
        },
    )
    checks = {c.name: c for c in check_package(package)}
    assert checks["bioimageio.spec: valid model description"].passed  # the package itself is well-formed
    refused = checks["bioimageio.core test_model, keras_v3"]
    assert not refused.passed and "Lambda" in refused.detail, refused.detail
    assert not checks["ONNX and TorchScript against Keras"].passed
    assert not marker.exists()
