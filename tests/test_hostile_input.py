"""Hostile input: property-based tests (hypothesis) over the image and mask readers and the config loader.

Every input either works correctly or fails with the project's clear error (`UserInputError`, message
starting with the file's path): never another exception, a hang or an unbounded allocation. A folder of
mixed good and bad files reports every bad file in one run.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from base.cli import read_options_file
from base.errors import UserInputError
from training import segment
from training.config import build_config
from training.images import MAX_CHANNELS, MAX_IMAGE_BYTES, read_image, read_image_slices, read_mask
from training.noisy_images import load_noisy_images
from training.tasks.care import CareConfig
from training.tasks.denoise import DenoiseConfig
from training.tasks.segment import SegmentConfig

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
DTYPES = st.sampled_from(
    ["uint8", "uint16", "int8", "int16", "int32", "float32", "float64", "bool", "complex64"]
)
SHAPES = hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=9)


def _arrays():
    return DTYPES.flatmap(
        lambda dtype: hnp.arrays(
            dtype,
            SHAPES,
            elements=None if dtype != "float32" else st.floats(width=32, allow_nan=True, allow_infinity=True),
        )
    )


def _counter():
    count = [0]

    def next_path(folder: Path, suffix: str) -> Path:
        count[0] += 1
        return folder / f"case{count[0]}{suffix}"

    return next_path


def _write(path: Path, array: np.ndarray) -> None:
    """Write `array` as a TIFF; arrays tifffile itself cannot write are not inputs a user could have."""
    try:
        tifffile.imwrite(path, array)
    except Exception:
        assume(False)


def _fails_clearly(error: UserInputError, path: Path) -> None:
    message = str(error)
    assert message.startswith(str(path)), message
    assert "\n" not in message


@SETTINGS
@given(array=_arrays())
def test_read_image_gives_yxc_float32_or_a_clear_error(tmp_path, array):
    path = tmp_path / "image.tif"
    _write(path, array)
    try:
        image = read_image(path)
    except UserInputError as error:
        _fails_clearly(error, path)
        return
    assert image.ndim == 3 and image.dtype == np.float32 and 1 <= image.shape[-1] <= MAX_CHANNELS
    assert np.isfinite(image).all()
    assert image.size == array.size
    assert not np.iscomplexobj(array)
    # The pixel values are the file's, in some axis order (channels moved last).
    np.testing.assert_array_equal(np.sort(image.ravel()), np.sort(array.astype(np.float32).ravel()))


@SETTINGS
@given(array=_arrays())
def test_read_image_slices_gives_2d_slices_or_a_clear_error(tmp_path, array):
    path = tmp_path / "stack.tif"
    _write(path, array)
    try:
        slices = read_image_slices(path)
    except UserInputError as error:
        _fails_clearly(error, path)
        return
    assert slices and all(s.ndim == 3 and s.dtype == np.float32 for s in slices)
    assert sum(s.size for s in slices) == array.size


@SETTINGS
@given(array=_arrays())
def test_read_mask_gives_int32_labels_or_a_clear_error(tmp_path, array):
    path = tmp_path / "mask.tif"
    _write(path, array)
    try:
        mask = read_mask(path)
    except UserInputError as error:
        _fails_clearly(error, path)
        return
    assert mask.ndim == 2 and mask.dtype == np.int32 and mask.min() >= 0
    np.testing.assert_array_equal(mask, np.squeeze(array).astype(np.int64))


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=2000), suffix=st.sampled_from([".tif", ".png"]))
def test_truncated_files_fail_clearly(tmp_path, cut, suffix):
    source = tmp_path / f"whole{suffix}"
    image = (np.arange(40 * 30) % 251).astype(np.uint8).reshape(40, 30)
    iio.imwrite(source, image) if suffix == ".png" else tifffile.imwrite(source, image)
    data = source.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: min(cut, len(data) - 1)])
    for reader in (read_image, read_mask):
        try:
            result = reader(path)
        except UserInputError as error:
            _fails_clearly(error, path)
        else:  # a cut that spares the pixels (trailing metadata) must give the pixels back
            np.testing.assert_array_equal(np.squeeze(result), image)


@SETTINGS
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".tif", ".tiff", ".png"]))
def test_garbage_bytes_fail_clearly(tmp_path, data, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(data)
    with pytest.raises(UserInputError) as caught:
        read_image(path)
    _fails_clearly(caught.value, path)


def test_huge_declared_tiff_dimensions_are_refused_before_reading(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(100_000)
        tif.pages[0].tags["ImageLength"].overwrite(100_000)
    assert path.stat().st_size < 10_000
    with pytest.raises(UserInputError, match="declares a 100000 x 100000 uint16 image") as caught:
        read_image(path)
    _fails_clearly(caught.value, path)


def _png_with_size(path: Path, width: int, height: int) -> None:
    iio.imwrite(path, np.zeros((8, 8), np.uint8))
    data = bytearray(path.read_bytes())
    # IHDR: length (4), "IHDR" (4), width (4), height (4), ... then CRC over type and data.
    start = 8
    length = struct.unpack(">I", data[start : start + 4])[0]
    data[start + 8 : start + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[start + 4 : start + 8 + length]))
    data[start + 8 + length : start + 12 + length] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_huge_declared_png_dimensions_are_refused_before_reading(tmp_path):
    path = tmp_path / "huge.png"
    _png_with_size(path, 200_000, 200_000)
    with pytest.raises(UserInputError) as caught:
        read_image(path)
    _fails_clearly(caught.value, path)


def test_the_size_limit_is_what_the_reader_enforces(tmp_path):
    side = int((MAX_IMAGE_BYTES / 4) ** 0.5) + 1  # float32 just over the limit
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.float32))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(side)
        tif.pages[0].tags["ImageLength"].overwrite(side)
    with pytest.raises(UserInputError, match="more than the 2 GiB"):
        read_image(path)


@pytest.mark.parametrize(
    ("shape", "channel_axis", "expected"),
    [
        ((3, 20, 30), None, (20, 30, 3)),  # channels first
        ((20, 30, 2), None, (20, 30, 2)),  # channels last
        ((20, 30, 3), 2, (20, 30, 3)),
        ((3, 20, 30), 0, (20, 30, 3)),
        ((20, 3, 30), 1, (20, 30, 3)),  # an axis order only the user can tell
    ],
)
def test_axis_orders_are_read_as_yxc(tmp_path, shape, channel_axis, expected):
    path = tmp_path / "axes.tif"
    array = np.random.default_rng(0).random(shape).astype(np.float32)
    tifffile.imwrite(path, array)
    image = read_image(path, channel_axis=channel_axis)
    assert image.shape == expected
    np.testing.assert_array_equal(
        image, np.moveaxis(array, channel_axis or 0, -1) if expected != shape else array
    )


def test_a_stack_where_a_2d_image_is_expected_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((7, 20, 30), np.float32))
    with pytest.raises(UserInputError, match="3D stack of shape"):
        read_image(path)


# === Config loader ===

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@SETTINGS
@given(
    cls=st.sampled_from([SegmentConfig, DenoiseConfig, CareConfig]),
    data=st.data(),
)
def test_config_values_are_accepted_or_refused_in_one_clear_message(cls, data):
    keys = sorted(cls.model_fields)
    values = data.draw(
        st.dictionaries(st.sampled_from([*keys, "not_an_option"]), JSON_VALUES, max_size=4), label="values"
    )
    try:
        config = build_config(cls, values, source="options.json")
    except UserInputError as error:
        assert str(error).startswith("options.json"), str(error)
        return
    assert isinstance(config, cls)
    assert set(values) <= set(keys)  # an unknown option is never accepted


@SETTINGS
@given(content=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_config_files_of_any_content_are_read_or_refused_clearly(tmp_path, content):
    path = tmp_path / "options.json"
    path.write_bytes(content)
    try:
        values = read_options_file(path)
    except UserInputError as error:
        _fails_clearly(error, path)
        return
    assert isinstance(values, dict)


# === Folders of mixed good and bad files ===


def test_segmentation_reports_every_bad_file_of_a_folder_in_one_run(tiny_segment_data, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_segment_data, data)
    images = sorted((data / "images").iterdir())
    images[0].write_bytes(b"garbage")  # unreadable image
    tifffile.imwrite(images[1], np.full((64, 64), np.nan, np.float32))  # NaN pixels
    (data / "masks" / images[2].name).write_bytes(images[2].read_bytes()[:100])  # truncated mask
    argv = ["--data", str(data), "--out-dir", str(tmp_path / "runs"), "--epochs", "1", "--no-export"]
    assert segment.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    named = " ".join(errors)
    assert str(images[0]) in named and str(images[1]) in named and images[2].name in named
    assert len(errors) >= 3
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_denoising_reports_every_bad_file_of_a_folder_in_one_run(tmp_path):
    folder = tmp_path / "noisy"
    folder.mkdir()
    tifffile.imwrite(folder / "good.tif", np.random.default_rng(0).random((40, 40)).astype(np.float32))
    (folder / "garbage.tif").write_bytes(b"\x00" * 50)
    tifffile.imwrite(folder / "nan.tif", np.full((40, 40), np.inf, np.float32))
    tifffile.imwrite(folder / "complex.tif", np.ones((40, 40), np.complex64))
    with pytest.raises(UserInputError) as caught:
        load_noisy_images(folder, None, channel_axis=None)
    lines = str(caught.value).splitlines()
    assert sorted(Path(line.split(":")[0]).name for line in lines) == [
        "complex.tif",
        "garbage.tif",
        "nan.tif",
    ]
