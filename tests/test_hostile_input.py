"""Hostile input: property-based tests (hypothesis) over the image and mask readers and the config loader.

Every input either works correctly or fails with the project's clear error (`UserInputError`, message
starting with the file's path): never another exception, a hang or an unbounded allocation. A folder of
mixed good and bad files reports every bad file in one run.

"Correctly" is checked pixel by pixel against what the file holds, by the documented rules
(`_expected_image`, `_expected_slices`, `_expected_mask`): a valid input must be read, in (Y, X, C) with
each value where it was written, and only an input the rules refuse may be refused. Spatial sides are
drawn larger than any channel count, so an axis taken for the wrong one cannot go unnoticed.
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
from hypothesis import HealthCheck, assume, event, example, given, settings
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
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces, a pass means the same
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The reader properties write a TIFF per example: fewer examples, each with bigger and more varied arrays.
READER_SETTINGS = settings(SETTINGS, max_examples=40)
INT32_MAX = int(np.iinfo(np.int32).max)
FLOAT32_MAX = float(np.finfo(np.float32).max)
DTYPES = st.sampled_from("uint8 uint16 uint32 int8 int16 int32 int64 float32 float64 bool complex64".split())
# A side is either small enough to be a channel axis (1 to MAX_CHANNELS, 1 a singleton) or a spatial side
# that can never pass for one, so an image read along the wrong axis cannot match what was written.
CHANNELS = st.integers(1, MAX_CHANNELS)
SIDES = st.integers(MAX_CHANNELS + 1, 40)


@st.composite
def _shapes(draw) -> tuple[int, ...]:
    """1 to 5 axes, each a small (channel-like or singleton) or a spatial side, at most three spatial
    (the third a short stack): images, images with channels or singleton axes, stacks and nonsense."""
    ndim = draw(st.integers(1, 5))
    spatial = draw(st.lists(st.integers(0, ndim - 1), max_size=3, unique=True))
    sides = [draw(SIDES) if i in spatial[:2] else draw(CHANNELS) for i in range(ndim)]
    for i in spatial[2:]:
        sides[i] = draw(st.integers(MAX_CHANNELS + 1, 8))
    return tuple(sides)


def _elements(dtype: str):
    if dtype == "float32":
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if dtype in ("float64", "complex64"):
        return None  # any value, NaN, infinities and values beyond float32 included
    if dtype == "bool":
        return st.booleans()
    info = np.iinfo(dtype)
    # A few labels, any value of the type, and (for the wide types) values beyond int32.
    choices = [st.integers(max(info.min, -2), min(info.max, 6)), st.integers(info.min, info.max)]
    if info.max > INT32_MAX:
        choices.append(st.integers(INT32_MAX - 1, min(info.max, 2 * INT32_MAX)))
    return st.one_of(choices)


def _arrays():
    """Any array a user could save: every pixel type, any shape of `_shapes`, any values."""
    return st.tuples(DTYPES, _shapes()).flatmap(
        lambda ds: hnp.arrays(ds[0], ds[1], elements=_elements(ds[0]))
    )


def _with_singletons(draw, array: np.ndarray) -> np.ndarray:
    for _ in range(draw(st.integers(0, 2))):
        array = np.expand_dims(array, draw(st.integers(0, array.ndim)))
    return array


@st.composite
def _valid_images(draw) -> tuple[np.ndarray, np.ndarray]:
    """(the array to write, the (Y, X, C) float32 image `read_image` must return): sides of 5 to 40,
    1 to 4 channels, stored as (Y, X), channels last or channels first, with singleton axes anywhere."""
    dtype = draw(st.sampled_from("uint8 uint16 uint32 int16 int32 float32 float64 bool".split()))
    shape = (draw(SIDES), draw(SIDES), draw(CHANNELS))
    if dtype == "float32":
        elements = st.floats(width=32, allow_nan=False, allow_infinity=False)
    elif dtype == "float64":
        elements = st.floats(-FLOAT32_MAX, FLOAT32_MAX)
    else:
        elements = _elements(dtype)
    image = draw(hnp.arrays(dtype, shape, elements=elements))
    layout = draw(st.sampled_from(["YXC", "CYX"] + (["YX"] if shape[-1] == 1 else [])))
    stored = {"YXC": image, "CYX": np.moveaxis(image, -1, 0), "YX": image[..., 0]}[layout]
    return _with_singletons(draw, stored), image.astype(np.float32)


@st.composite
def _valid_masks(draw) -> np.ndarray:
    """A 2D label mask of sides 5 to 40 (labels within int32, integer-valued floats included), with
    singleton axes anywhere; a two-valued one may be binary, which `_expected_mask` refuses."""
    dtype = draw(st.sampled_from("uint8 uint16 uint32 int16 int32 int64 float32 float64".split()))
    top = INT32_MAX if dtype in ("uint32", "int32", "int64", "float64") else 200
    labels = st.integers(0, 6) | st.integers(0, top)
    if dtype.startswith("float"):
        labels = labels.map(float)
    mask = draw(hnp.arrays(dtype, (draw(SIDES), draw(SIDES)), elements=labels))
    return _with_singletons(draw, mask)


def _valid_pixels(array: np.ndarray) -> bool:
    """Numbers (booleans, integers, floats; not complex), finite and within float32."""
    if array.dtype.kind not in "biuf":
        return False
    return array.dtype.kind != "f" or bool(np.isfinite(array).all() and (np.abs(array) <= FLOAT32_MAX).all())


def _channels_last(pixels: np.ndarray) -> np.ndarray | None:
    """A (Y, X) or 3D array as (Y, X, C) float32: the channel axis is the last if it has at most
    MAX_CHANNELS entries, else the first if that has; None (refused) otherwise."""
    if pixels.ndim == 2:
        return pixels.astype(np.float32)[..., np.newaxis]
    if pixels.ndim != 3:
        return None
    if pixels.shape[-1] <= MAX_CHANNELS:
        return pixels.astype(np.float32)
    if pixels.shape[0] <= MAX_CHANNELS:
        return np.moveaxis(pixels, 0, -1).astype(np.float32)
    return None


def _expected_image(array: np.ndarray) -> np.ndarray | None:
    """What `read_image` must return for a file holding `array`, by the documented rules, or None where
    it must refuse: a 2D array is (Y, X); singleton axes of a bigger one are dropped."""
    if not _valid_pixels(array):
        return None
    return _channels_last(np.squeeze(array) if array.ndim > 2 else array)


def _expected_slices(array: np.ndarray) -> list[np.ndarray] | None:
    """What `read_image_slices` must return: singleton axes dropped, a 4D array is (Z, then a 3D image),
    a 3D array with no channel-sized first or last axis is (Z, Y, X), anything else one image."""
    if not _valid_pixels(array):
        return None
    pixels = np.squeeze(array)
    if pixels.ndim == 4:
        planes = [_channels_last(plane) for plane in pixels]
        return None if any(p is None for p in planes) else planes
    if pixels.ndim == 3 and min(pixels.shape[0], pixels.shape[-1]) > MAX_CHANNELS:
        return [plane.astype(np.float32)[..., np.newaxis] for plane in pixels]
    image = _channels_last(pixels)
    return None if image is None else [image]


def _expected_mask(array: np.ndarray) -> np.ndarray | None:
    """What `read_mask` must return: a 2D (after dropping singleton axes) mask of integer labels (any
    integer type, or integer-valued floats) from 0 to the int32 maximum, as int32; None where refused,
    which includes a binary mask (one value over several 4-connected objects)."""
    from skimage.measure import label

    labels = np.squeeze(array)
    if labels.ndim != 2:
        return None
    if array.dtype.kind not in "iu" and not (
        array.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all()
    ):
        return None
    if labels.min() < 0 or labels.max() > INT32_MAX:
        return None
    values = np.unique(labels)
    if len(values) == 2 and values[0] == 0 and label(labels > 0, connectivity=1).max() > 1:
        return None
    return labels.astype(np.int32)


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


def _read(reader, path: Path, array: np.ndarray, expected):
    """`reader(path)`; a refusal must be one line naming the file, and only of an input that the rules
    refuse (`expected` None): a reader that refuses a valid image fails here."""
    event("valid" if expected is not None else "refused by the rules")
    try:
        result = reader(path)
    except UserInputError as error:
        _fails_clearly(error, path)
        assert expected is None, f"{reader.__name__} refused a valid {array.dtype} {array.shape}: {error}"
        return None
    assert expected is not None, f"{reader.__name__} accepted an invalid {array.dtype} {array.shape}"
    return result


# A file of each kind the rules refuse, beside the drawn ones.
REFUSED = [
    np.zeros((6, 7, 5), np.float32),  # no axis of at most 4 channels
    np.full((6, 7), np.nan, np.float32),
    np.ones((6, 7), np.complex64),
    np.zeros((9,), np.uint8),
]


_CHANNELS_FIRST = np.arange(3 * 6 * 7, dtype=np.uint16).reshape(3, 6, 7)
_WITH_SINGLETONS = np.arange(6 * 7 * 2, dtype=np.int32).reshape(6, 7, 2)


@READER_SETTINGS
@given(case=_valid_images())
@example(case=(_CHANNELS_FIRST, np.moveaxis(_CHANNELS_FIRST, 0, -1).astype(np.float32)))
@example(case=(_WITH_SINGLETONS[np.newaxis, :, np.newaxis], _WITH_SINGLETONS.astype(np.float32)))
def test_valid_images_are_read_as_written_pixel_by_pixel(tmp_path, case):
    array, image = case
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, array)
    result = read_image(path)
    assert result.dtype == np.float32 and result.shape == image.shape
    np.testing.assert_array_equal(result, image)
    (single,) = read_image_slices(path)
    np.testing.assert_array_equal(single, image)


@READER_SETTINGS
@given(array=_arrays() | _valid_images().map(lambda case: case[0]) | st.sampled_from(REFUSED))
def test_read_image_gives_the_written_pixels_as_yxc_or_a_clear_error(tmp_path, array):
    path = tmp_path / "image.tif"
    _write(path, array)
    expected = _expected_image(array)
    image = _read(read_image, path, array, expected)
    if image is not None:
        assert image.dtype == np.float32 and image.shape == expected.shape
        np.testing.assert_array_equal(image, expected)


@READER_SETTINGS
@given(array=_arrays() | _valid_images().map(lambda case: case[0]))
@example(array=np.arange(6 * 7 * 8, dtype=np.uint16).reshape(6, 7, 8))  # a (Z, Y, X) stack
@example(array=np.arange(5 * 3 * 6 * 7, dtype=np.float32).reshape(5, 3, 6, 7))  # (Z, C, Y, X)
def test_read_image_slices_gives_the_written_2d_slices_or_a_clear_error(tmp_path, array):
    path = tmp_path / "stack.tif"
    _write(path, array)
    expected = _expected_slices(array)
    slices = _read(read_image_slices, path, array, expected)
    if slices is not None:
        assert len(slices) == len(expected)
        for got, want in zip(slices, expected, strict=True):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


@READER_SETTINGS
@given(array=_arrays() | _valid_masks())
@example(array=np.array([[0, 1, 2], [INT32_MAX, 0, 0], [3, 3, 0]] * 2, np.uint32))  # uint32 in range
@example(array=np.array([[0, 1, 2], [INT32_MAX + 1, 0, 0], [3, 3, 0]] * 2, np.uint32))  # beyond int32
@example(array=np.array([[0, 5, 2], [INT32_MAX, 0, 0], [7, 7, 0]] * 2, np.int64))
@example(array=np.array([[0, 5, 2], [2**40, 0, 0], [7, 7, 0]] * 2, np.int64))
@example(array=np.array([[0, 5, 2], [-1, 0, 0], [7, 7, 0]] * 2, np.int64))
def test_read_mask_gives_the_written_int32_labels_or_a_clear_error(tmp_path, array):
    path = tmp_path / "mask.tif"
    _write(path, array)
    expected = _expected_mask(array)
    mask = _read(read_mask, path, array, expected)
    if mask is not None:
        assert mask.dtype == np.int32 and mask.shape == expected.shape
        np.testing.assert_array_equal(mask, expected)


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
