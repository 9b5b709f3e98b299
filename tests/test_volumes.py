"""Reading volumes and their label masks: axes from `--axes`, the file's metadata or (only where nothing
else is possible) assumed; pixel sizes from ImageJ and OME metadata; every refusal one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import DATA_DIR

from base.errors import UserInputError
from training.images import (
    MAX_CHANNELS,
    image_axes,
    parse_axes,
    pixel_sizes,
    read_mask_volume,
    read_volume,
)

RNG = np.random.default_rng(0)


def _refused(reader, path: Path, match: str, **kwargs) -> str:
    """The one-line message, naming the file, with which `reader` refuses `path`."""
    with pytest.raises(UserInputError, match=match) as caught:
        reader(path, **kwargs)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    return message


def _imagej(path: Path, array: np.ndarray, axes: str, **metadata) -> Path:
    tifffile.imwrite(path, array, imagej=True, metadata={"axes": axes, **metadata})
    return path


def _labels(shape: tuple[int, ...]) -> np.ndarray:
    """A mask with two labelled boxes."""
    mask = np.zeros(shape, np.uint16)
    mask[..., 1:3, 1:3] = 1
    mask[..., 5:7, 5:7] = 2
    return mask


# === --axes ===


@pytest.mark.parametrize(("text", "expected"), [("zyx", "ZYX"), (" ZCYX ", "ZCYX"), ("tczyx", "TCZYX")])
def test_axes_are_read_in_any_case(text, expected):
    assert parse_axes(text) == expected


@pytest.mark.parametrize(
    ("text", "match"), [("ZQYX", "unknown axis Q"), ("ZZYX", "axis Z more than once"), ("ZCY", "Y and X")]
)
def test_invalid_axes_are_refused(text, match):
    with pytest.raises(UserInputError, match=match):
        parse_axes(text)


# === Axes from the metadata ===


def test_an_imagej_hyperstack_is_read_by_its_axes(tmp_path):
    array = RNG.random((5, 2, 8, 9)).astype(np.float32)
    volume = read_volume(_imagej(tmp_path / "zcyx.tif", array, "ZCYX"))
    assert (volume.axes, volume.source) == ("ZCYX", "metadata")
    np.testing.assert_array_equal(volume.data, np.moveaxis(array, 1, -1))


def test_an_ome_tiff_is_read_by_its_axes(tmp_path):
    path = tmp_path / "cyx.ome.tif"
    array = RNG.random((2, 8, 9)).astype(np.float32)
    tifffile.imwrite(path, array, ome=True, metadata={"axes": "CYX"})
    volume = read_volume(path)
    assert (volume.axes, volume.source, volume.data.shape) == ("CYX", "metadata", (1, 8, 9, 2))


def test_rgb_samples_are_channels(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((4, 8, 9, 3), np.uint8), imagej=True, metadata={"axes": "ZYXS"})
    assert image_axes(path) == "ZYXC"
    assert read_volume(path).data.shape == (4, 8, 9, 3)


def test_axes_tifffile_cannot_place_are_unknown(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((5, 8, 9), np.uint16))  # tifffile calls the first axis Q
    assert image_axes(path) is None


def test_length_one_axes_are_dropped(tmp_path):
    path = tmp_path / "tzcyx.tif"
    tifffile.imwrite(path, np.zeros((1, 5, 1, 8, 9), np.float32), metadata={"axes": "TZCYX"})
    assert read_volume(path).data.shape == (5, 8, 9, 1)


# === Assumed axes ===


def test_a_plain_3d_array_is_taken_as_zyx(tmp_path):
    path = tmp_path / "plain.tif"
    array = RNG.random((5, 8, 9)).astype(np.float32)
    tifffile.imwrite(path, array)
    volume = read_volume(path)
    assert (volume.axes, volume.source) == ("ZYX", "assumed")
    np.testing.assert_array_equal(volume.data[..., 0], array)


def test_a_plain_2d_array_is_one_plane(tmp_path):
    path = tmp_path / "plane.tif"
    tifffile.imwrite(path, np.zeros((1, 8, 9), np.uint16))
    volume = read_volume(path)
    assert (volume.axes, volume.source, volume.data.shape) == ("YX", "assumed", (1, 8, 9, 1))


def test_a_plain_4d_array_needs_axes(tmp_path):
    path = tmp_path / "plain4d.tif"
    tifffile.imwrite(path, np.zeros((31, 2, 61, 57), np.uint16))
    message = _refused(read_volume, path, "without axes")
    assert message == (
        f"{path}: a 4D image (31 x 2 x 61 x 57) without axes in its metadata; pass --axes, e.g. --axes ZCYX"
    )


# === --axes given ===


def test_given_axes_override_the_metadata(tmp_path):
    array = RNG.random((3, 8, 9)).astype(np.float32)
    volume = read_volume(_imagej(tmp_path / "cyx.tif", array, "CYX"), axes="ZYX")
    assert (volume.axes, volume.source, volume.data.shape) == ("ZYX", "--axes", (3, 8, 9, 1))


def test_given_axes_reorder_a_plain_4d_array(tmp_path):
    path = tmp_path / "czyx.tif"
    array = RNG.random((2, 5, 8, 9)).astype(np.float32)
    tifffile.imwrite(path, array)
    np.testing.assert_array_equal(read_volume(path, axes="czyx").data, np.moveaxis(array, 0, -1))


def test_given_axes_must_name_every_dimension(tmp_path):
    path = tmp_path / "plain4d.tif"
    tifffile.imwrite(path, np.zeros((31, 2, 61, 57), np.uint16))
    message = _refused(read_volume, path, "names 3 axes", axes="ZYX")
    assert message == f"{path}: --axes ZYX names 3 axes, the image has 4 (31 x 2 x 61 x 57)"


def test_given_axes_count_length_one_dimensions(tmp_path):
    path = tmp_path / "singleton.tif"
    tifffile.imwrite(path, np.zeros((1, 5, 8, 9), np.uint16))
    _refused(read_volume, path, "the image has 4", axes="ZYX")


def test_invalid_given_axes_name_the_file(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((5, 8, 9), np.uint16))
    _refused(read_volume, path, "unknown axis Q", axes="QYX")


# === Refused volumes ===


def test_a_time_series_is_not_a_volume(tmp_path):
    path = _imagej(tmp_path / "tzyx.tif", np.zeros((5, 3, 8, 9), np.uint16), "TZYX")
    message = _refused(read_volume, path, "time axis")
    assert message == (
        f"{path}: has a time axis (T=5); a time series is not a volume: pass --axes with Z if these are z "
        "slices, or split the frames"
    )


def test_a_time_series_read_as_z_slices_by_the_user(tmp_path):
    path = _imagej(tmp_path / "tyx.tif", np.zeros((5, 8, 9), np.uint16), "TYX")
    assert read_volume(path, axes="ZYX").data.shape == (5, 8, 9, 1)


def test_more_channels_than_allowed_are_refused(tmp_path):
    channels = MAX_CHANNELS + 1
    path = _imagej(tmp_path / "cyx.tif", np.zeros((channels, 8, 9), np.uint16), "CYX")
    _refused(read_volume, path, f"C={channels} channels .* pass --axes with Z")


def test_nan_voxels_are_refused(tmp_path):
    path = tmp_path / "nan.tif"
    array = np.zeros((5, 8, 9), np.float32)
    array[1, 2, 3] = np.nan
    tifffile.imwrite(path, array)
    _refused(read_volume, path, "NaN")


@pytest.mark.filterwarnings("ignore:.*zero-size array:UserWarning")  # tifffile's, writing the case
def test_an_empty_mask_volume_is_refused(tmp_path):
    path = tmp_path / "empty.tif"
    tifffile.imwrite(path, np.zeros((0, 8, 9), np.uint16))
    _refused(read_mask_volume, path, "an empty image")


def test_the_header_size_guard_applies(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint16))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            page.tags["ImageWidth"].overwrite(100_000)
            page.tags["ImageLength"].overwrite(100_000)
    _refused(read_volume, path, "more than the 2 GiB")


# === Pixel sizes ===


def test_imagej_pixel_sizes_are_read(tmp_path):
    path = tmp_path / "zcyx.tif"
    tifffile.imwrite(
        path,
        np.zeros((5, 2, 8, 9), np.uint16),
        imagej=True,
        metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"},
        resolution=(2.0, 2.0),
    )
    assert pixel_sizes(path) == {"z": 2.0, "y": 0.5, "x": 0.5}
    assert read_volume(path).pixel_sizes == {"z": 2.0, "y": 0.5, "x": 0.5}


def test_imagej_pixel_sizes_are_converted_to_micrometres(tmp_path):
    path = tmp_path / "nm.tif"
    tifffile.imwrite(
        path,
        np.zeros((5, 8, 9), np.uint16),
        imagej=True,
        metadata={"axes": "ZYX", "spacing": 500.0, "unit": "nm"},
        resolution=(0.004, 0.004),  # pixels per nm
    )
    assert pixel_sizes(path) == pytest.approx({"z": 0.5, "y": 0.25, "x": 0.25})


def test_ome_pixel_sizes_are_read(tmp_path):
    path = tmp_path / "zyx.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((5, 8, 9), np.uint16),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
    )
    assert pixel_sizes(path) == {"z": 2.0, "y": 0.5, "x": 0.5}


def test_a_resolution_without_unit_is_no_pixel_size(tmp_path):
    path = _imagej(tmp_path / "zyx.tif", np.zeros((5, 8, 9), np.uint16), "ZYX")  # resolution (1, 1)
    assert pixel_sizes(path) == {}


def test_a_plain_tiff_has_no_pixel_sizes(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((5, 8, 9), np.uint16), resolution=(72.0, 72.0), resolutionunit="INCH")
    assert pixel_sizes(path) == {}


# === Masks ===


def test_a_mask_volume_is_read_as_zyx_int32(tmp_path):
    path = tmp_path / "mask.tif"
    mask = _labels((5, 8, 9))
    tifffile.imwrite(path, mask)
    labels = read_mask_volume(path)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, mask)


def test_a_mask_volume_follows_given_axes(tmp_path):
    path = tmp_path / "mask.tif"
    mask = _labels((8, 9, 5))  # Y, X, Z
    tifffile.imwrite(path, mask)
    np.testing.assert_array_equal(read_mask_volume(path, axes="YXZ"), np.moveaxis(mask, -1, 0))


def test_a_binary_mask_volume_is_refused(tmp_path):
    path = tmp_path / "binary.tif"
    tifffile.imwrite(path, (_labels((5, 8, 9)) > 0).astype(np.uint8) * 255)
    _refused(read_mask_volume, path, "binary mask")


def test_a_float_mask_volume_of_integers_is_accepted(tmp_path):
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, _labels((5, 8, 9)).astype(np.float32))
    assert read_mask_volume(path).max() == 2


def test_a_mask_volume_of_fractions_is_refused(tmp_path):
    path = tmp_path / "fractions.tif"
    tifffile.imwrite(path, _labels((5, 8, 9)).astype(np.float32) / 3)
    _refused(read_mask_volume, path, "integer labels")


def test_a_mask_volume_with_channels_is_refused(tmp_path):
    path = _imagej(tmp_path / "zcyx.tif", np.stack([_labels((5, 8, 9))] * 2, axis=1), "ZCYX")
    _refused(read_mask_volume, path, "no channels, got C=2")


def test_a_mask_volume_with_a_time_axis_is_refused(tmp_path):
    path = _imagej(tmp_path / "tzyx.tif", np.stack([_labels((5, 8, 9))] * 3), "TZYX")
    _refused(read_mask_volume, path, "time axis")


# === The real StarDist examples ===


@pytest.fixture
def stardist_dir() -> Path:
    path = DATA_DIR / "stardist_examples"
    if not path.is_dir():
        pytest.skip("../shared/data/stardist_examples not present (only in the project workspace)")
    return path


def test_the_stardist_volume_is_assumed_zyx(stardist_dir):
    volume = read_volume(stardist_dir / "img3d.tif")
    assert (volume.axes, volume.source, volume.data.shape) == ("ZYX", "assumed", (31, 61, 57, 1))
    assert volume.pixel_sizes == {}


def test_the_stardist_mask_volume_holds_its_labels(stardist_dir):
    labels = read_mask_volume(stardist_dir / "mask3d.tif")
    assert labels.shape == (31, 61, 57)
    assert len(np.unique(labels)) == 52  # the background and 51 objects


def test_a_volume_is_normalised_over_all_its_voxels_as_its_package_declares():
    from export.processing import apply, scale_range
    from training.images import percentile_normalize

    volume = np.zeros((4, 8, 8, 1), np.float32)
    volume[2:] = 100.0  # two dark slices, two bright ones
    volume[3, :, :4] = 50.0
    normalized = percentile_normalize(volume, 1.0, 99.8)
    assert normalized[:2].max() < 0.01 and normalized[2].min() > 0.99  # not slice by slice
    assert np.ptp(normalized[:, 0, 0]) > 0.9  # nor column by column
    declared = apply([scale_range(1.0, 99.8, axes=("z", "y", "x"))], volume[np.newaxis])[0]
    np.testing.assert_allclose(declared, normalized, atol=1e-6)
