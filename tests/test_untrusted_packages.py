"""Packages from strangers: checking one never writes outside its scratch folder, never runs code from
the package (other than model weights in their runtime), and refuses a zip bomb before extracting it."""

from __future__ import annotations

import hashlib
import stat
import struct
import zipfile
import zlib
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


def _patch_header(package: Path, member: str, *, size: int | None = None, crc: int | None = None) -> None:
    """Rewrite the uncompressed size and/or the CRC-32 of `member` in its local header and its central
    directory entry (a lying header; the compressed data is left as it is)."""
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
    local = info.header_offset
    assert data[local : local + 4] == b"PK\x03\x04"
    for header, crc_at, size_at in ((position, 16, 24), (local, 14, 22)):
        if size is not None:
            data[header + size_at : header + size_at + 4] = struct.pack("<I", size)
        if crc is not None:
            data[header + crc_at : header + crc_at + 4] = struct.pack("<I", crc)
    assert size is None or info.file_size != size
    package.write_bytes(bytes(data))


def test_a_member_that_declares_a_huge_size_is_refused(tmp_path):
    package = _zip(tmp_path / "huge.zip", {"rdf.yaml": b"type: model\n", "w.bin": b"x" * 1000})
    _patch_header(package, "w.bin", size=MAX_TOTAL_BYTES + 1 if MAX_TOTAL_BYTES < 2**32 else 2**32 - 1)
    with pytest.raises(ExportError, match="zip bomb"):
        safe_extract(package, tmp_path / "target")


@pytest.mark.parametrize("crc_of", ["all its data", "the declared part"])
def test_a_member_larger_than_it_declares_is_stopped_while_extracting(tmp_path, crc_of):
    """3 MiB (deflated to a few KiB) that declare 10 bytes. zipfile alone cuts a member at its declared
    size: with the CRC of the declared part it would extract those 10 bytes without complaint, with the
    CRC of all the data it would raise its own BadZipFile. The check refuses both with its own error
    before writing more than was declared."""
    data = bytes(range(256)) * (3 * 2**12)
    package = _zip(tmp_path / "liar.zip", {"rdf.yaml": b"type: model\n", "w.bin": data})
    _patch_header(package, "w.bin", size=10, crc=zlib.crc32(data if crc_of == "all its data" else data[:10]))
    target = tmp_path / "target"
    with pytest.raises(ExportError, match=r"member 'w\.bin' is larger than declared"):
        safe_extract(package, target)
    assert not (target / "w.bin").exists() or (target / "w.bin").stat().st_size <= 10


def test_a_member_whose_data_does_not_match_its_crc_is_refused_with_the_checks_own_error(tmp_path):
    data = b"weights" * 100
    package = _zip(tmp_path / "corrupt.zip", {"rdf.yaml": b"type: model\n", "w.bin": data})
    _patch_header(package, "w.bin", crc=zlib.crc32(data) ^ 1)
    with pytest.raises(ExportError, match=r"member 'w\.bin' is corrupt \(Bad CRC"):
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


@pytest.mark.parametrize(
    "fields",
    [
        'config: "x"\n',
        "attachments: [instances.ijm]\nconfig: {deepimagej: {prediction: {postprocess: "
        "[{spec: 'ij.IJ::runMacroFile', kwargs: {file: instances.ijm}}]}}}\n",
        "inputs: [{id: raw, axes: [x, y]}]\n",
    ],
)
def test_a_malformed_rdf_fails_its_checks_without_a_traceback(tmp_path, fields):
    package = _zip(tmp_path / "malformed.zip", {"rdf.yaml": ("type: model\n" + fields).encode()})
    checks = check_package(package)
    assert checks and not all(c.passed for c in checks)
    assert not checks[0].passed and checks[0].name == "JDLL: the rdf as deepImageJ reads it"
