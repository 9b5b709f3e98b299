"""Instance masks: a binary mask (Fiji's 0/255) is refused with how to label it; label images pass."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from base.errors import UserInputError
from training.images import read_mask


def _two_squares(value_a: int, value_b: int) -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[2:10, 2:10] = value_a
    mask[20:28, 20:28] = value_b
    return mask


@pytest.mark.parametrize("value", [255, 1])
def test_a_binary_mask_of_several_objects_is_refused_with_how_to_label_it(tmp_path, value):
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, _two_squares(value, value))
    with pytest.raises(UserInputError, match=r"mask\.tif: a binary mask .* 2 separate objects.*Count Masks"):
        read_mask(path)


def test_label_images_and_a_single_object_are_read(tmp_path):
    tifffile.imwrite(tmp_path / "labels.tif", _two_squares(1, 2))
    np.testing.assert_array_equal(np.unique(read_mask(tmp_path / "labels.tif")), [0, 1, 2])
    single = np.zeros((32, 32), np.uint8)
    single[4:12, 4:12] = 255
    tifffile.imwrite(tmp_path / "single.tif", single)
    assert read_mask(tmp_path / "single.tif").max() == 255
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((32, 32), np.uint8))
    assert read_mask(tmp_path / "empty.tif").max() == 0
