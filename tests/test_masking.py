"""Tests for training.masking: blind-spot positions, replacements, structN2V lines and MaskedLoss."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.masking import (
    REPLACEMENTS,
    MaskedLoss,
    blind_spot_mask,
    grid_box_side,
    masked_pixel_count,
)


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _unique_values(batch: int, size: int, channels: int = 1) -> np.ndarray:
    """Patches whose value is the flat pixel index, so a value tells which pixel it came from."""
    plane = np.arange(size * size, dtype=np.float32).reshape(size, size)
    stack = [plane + 10_000 * c for c in range(channels)]
    return np.broadcast_to(np.stack(stack, axis=-1), (batch, size, size, channels)).copy()


def _mask(patches: np.ndarray, seed: int = 0, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masked, original, mask) as numpy arrays."""
    masked, target = blind_spot_mask(patches, [seed, 1], **options)
    channels = patches.shape[-1]
    return masked, target[..., :channels], target[..., channels:]


def _window_without_centre(image: np.ndarray, y: int, x: int, radius: int) -> np.ndarray:
    """Values of the mirrored (2r+1)² window around (y, x), leaving out every copy of the centre pixel."""
    height, width = image.shape
    sources = np.pad(np.arange(height * width).reshape(height, width), radius, mode="reflect")
    values = np.pad(image, radius, mode="reflect")
    window = np.s_[y : y + 2 * radius + 1, x : x + 2 * radius + 1]
    return values[window][sources[window] != y * width + x]


# === Positions ===


@pytest.mark.parametrize("fraction", [0.002, 0.005, 0.01, 0.02, 0.0494, 0.05])
def test_masked_fraction_is_within_25_percent_of_requested(fraction):
    _, _, mask = _mask(_noise((128, 64, 64, 1)), fraction=fraction)
    assert abs(mask.mean() - fraction) <= 0.25 * fraction


@pytest.mark.parametrize("fraction", [0.002, 0.01, 0.05])
def test_each_full_grid_box_holds_exactly_one_masked_pixel_and_cut_boxes_at_most_one(fraction):
    side = grid_box_side(fraction)
    height, width = 50, 70  # not multiples of the box side, so the far boxes are cut
    _, _, mask = _mask(_noise((16, height, width, 1)), fraction=fraction)
    full_y, full_x = height // side, width // side
    boxes_y, boxes_x = -(-height // side), -(-width // side)
    padded = np.zeros((16, boxes_y * side, boxes_x * side))
    padded[:, :height, :width] = mask[..., 0]
    per_box = padded.reshape(16, boxes_y, side, boxes_x, side).sum(axis=(2, 4))
    assert np.all(per_box[:, :full_y, :full_x] == 1)
    assert per_box.max() == 1


def test_pixels_in_cut_edge_boxes_are_masked_as_often_as_interior_pixels():
    # 23 px with box side 10: the last row and column of boxes are cut to 3 px.
    _, _, mask = _mask(_noise((2000, 23, 23, 1)), fraction=0.01)
    mask = mask[..., 0]
    assert grid_box_side(0.01) == 10
    interior, edge_rows = mask[:, :20, :20].mean(), mask[:, 20:, :].mean()
    assert abs(interior - 0.01) < 0.001
    assert abs(edge_rows - 0.01) < 0.002


def test_grid_box_side_picks_the_density_nearest_the_fraction():
    assert grid_box_side(0.25) == 2
    assert grid_box_side(0.01) == 10
    assert grid_box_side(0.002) == 22
    # round(1/sqrt(0.0494)) would be 4, a density of 0.0625 (+27%); 5 gives 0.04 (-19%).
    assert grid_box_side(0.0494) == 5


def test_same_seed_gives_identical_outputs_and_different_seed_differs():
    patches = _noise((4, 32, 32, 2))
    first = _mask(patches, seed=3, fraction=0.02, replacement="uniform", struct_axis=1, struct_span=2)
    again = _mask(patches, seed=3, fraction=0.02, replacement="uniform", struct_axis=1, struct_span=2)
    other = _mask(patches, seed=4, fraction=0.02, replacement="uniform", struct_axis=1, struct_span=2)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], other[2])
    assert not np.array_equal(first[0], other[0])


def test_independent_channels_get_their_own_positions_shared_ones_the_same():
    patches = _noise((4, 32, 32, 3))
    _, _, independent = _mask(patches, fraction=0.02, independent_channels=True)
    _, _, shared = _mask(patches, fraction=0.02, independent_channels=False)
    assert not np.array_equal(independent[..., 0], independent[..., 1])
    assert not np.array_equal(independent[..., 1], independent[..., 2])
    np.testing.assert_array_equal(shared[..., 0], shared[..., 1])
    np.testing.assert_array_equal(shared[..., 0], shared[..., 2])
    # Each channel still gets the requested density on its own.
    for c in range(3):
        assert abs(independent[..., c].mean() - 0.02) <= 0.25 * 0.02


# === Replacements ===


def test_uniform_replacement_never_uses_the_centre_and_covers_the_window():
    size, radius = 24, 2
    masked, _, mask = _mask(_unique_values(512, size), fraction=0.05, radius=radius)
    b, y, x, _ = np.nonzero(mask)
    source_y, source_x = np.divmod(masked[b, y, x, 0].astype(int), size)
    assert np.all((source_y != y) | (source_x != x))
    assert np.all(np.abs(source_y - y) <= radius) and np.all(np.abs(source_x - x) <= radius)
    # Away from the border every offset of the window except (0, 0) should be about equally likely.
    inner = (y >= radius) & (y < size - radius) & (x >= radius) & (x < size - radius)
    offsets = (source_y - y)[inner] * (2 * radius + 1) + (source_x - x)[inner]
    counts = np.bincount(offsets + radius * (2 * radius + 1) + radius, minlength=(2 * radius + 1) ** 2)
    counts = np.delete(counts, (2 * radius + 1) ** 2 // 2)
    assert np.all(np.abs(counts - counts.mean()) < 0.25 * counts.mean())


def test_uniform_replacement_with_shared_positions_takes_all_channels_from_one_neighbour():
    masked, _, mask = _mask(_unique_values(8, 16, channels=2), fraction=0.05)
    b, y, x, _ = np.nonzero(mask[..., :1])
    np.testing.assert_array_equal(masked[b, y, x, 1] - masked[b, y, x, 0], 10_000)


@pytest.mark.parametrize("radius", [1, 3])
def test_median_replacement_is_numpy_median_of_mirrored_window_without_centre(radius):
    patches = _noise((6, 16, 16, 1))
    masked, _, mask = _mask(patches, fraction=0.05, radius=radius, replacement="median")
    for b, y, x, _ in zip(*np.nonzero(mask), strict=True):
        expected = np.median(_window_without_centre(patches[b, ..., 0], y, x, radius))
        np.testing.assert_allclose(masked[b, y, x, 0], expected, rtol=1e-6)


def test_mean_replacement_is_numpy_mean_of_mirrored_window_without_centre():
    patches = _noise((6, 16, 16, 1))
    masked, _, mask = _mask(patches, fraction=0.05, radius=2, replacement="mean")
    for b, y, x, _ in zip(*np.nonzero(mask), strict=True):
        expected = np.mean(_window_without_centre(patches[b, ..., 0], y, x, 2))
        np.testing.assert_allclose(masked[b, y, x, 0], expected, rtol=1e-5, atol=1e-6)


def test_zero_replacement_sets_masked_pixels_to_zero():
    masked, _, mask = _mask(_noise((4, 32, 32, 2)) + 5.0, fraction=0.02, replacement="zero")
    assert mask.sum() > 0
    assert np.all(masked[mask == 1] == 0.0)


@pytest.mark.parametrize("replacement", REPLACEMENTS)
def test_unmasked_pixels_are_unchanged_and_target_holds_the_original(replacement):
    patches = _noise((4, 32, 32, 2))
    masked, original, mask = _mask(patches, fraction=0.02, replacement=replacement)
    np.testing.assert_array_equal(original, patches)
    np.testing.assert_array_equal(masked[mask == 0], patches[mask == 0])
    assert np.all(masked[mask == 1] != patches[mask == 1])
    assert set(np.unique(mask)) == {0.0, 1.0}


# === structN2V ===


@pytest.mark.parametrize(("axis", "span"), [(0, 3), (1, 3), (0, 1)])
def test_struct_line_hides_span_pixels_each_side_along_axis_with_values_in_patch_range(axis, span):
    patches = _noise((8, 48, 48, 1))
    masked, _, mask = _mask(patches, fraction=0.002, replacement="zero", struct_axis=axis, struct_span=span)
    expected_line = np.zeros(patches.shape, dtype=bool)
    for b, y, x, c in zip(*np.nonzero(mask), strict=True):
        for k in [*range(-span, 0), *range(1, span + 1)]:
            ly, lx = (y + k, x) if axis == 0 else (y, x + k)
            if 0 <= ly < 48 and 0 <= lx < 48:
                expected_line[b, ly, lx, c] = True
    centres = mask == 1
    line_only = expected_line & ~centres
    # Exactly the centres and their lines change: nothing beyond the span, nothing on the other axis.
    np.testing.assert_array_equal(masked != patches, centres | expected_line)
    low = patches.min(axis=(1, 2), keepdims=True)
    high = patches.max(axis=(1, 2), keepdims=True)
    in_range = (masked >= low) & (masked <= high)
    assert line_only.sum() > 0 and np.all(in_range[line_only])
    assert np.all(masked[centres] == 0.0)  # the centre keeps its own replacement


def test_struct_line_values_are_drawn_anew_from_each_channels_whole_patch_range():
    # Channel 0 rises along x, channel 1 along y and lies far above: a line along y (one column) must
    # still draw from channel 0's whole range, never from its column or from the other channel's values.
    batch, size = 16, 32
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    patches = np.empty((batch, size, size, 2), np.float32)
    patches[..., 0] = ramp[None, None, :]
    patches[..., 1] = 100.0 + ramp[None, :, None]
    masked, _, mask = _mask(patches, fraction=0.01, replacement="zero", struct_axis=0, struct_span=3)
    line = (masked != patches) & (mask == 0)
    hidden = masked[..., 0][line[..., 0]]
    assert hidden.size > 100
    assert hidden.min() >= 0.0 and hidden.max() <= 1.0
    assert np.all(masked[..., 1][line[..., 1]] >= 100.0)
    # Uniform over [0, 1]: spread far beyond one column, and no two pixels with the same draw.
    assert hidden.std() > 0.2
    assert np.unique(hidden).size == hidden.size


def test_struct_mask_marks_centres_only():
    patches = _noise((8, 48, 48, 1))
    _, _, plain_mask = _mask(patches, fraction=0.002)
    _, _, struct_mask = _mask(patches, fraction=0.002, struct_axis=0, struct_span=4)
    np.testing.assert_array_equal(struct_mask, plain_mask)


@pytest.mark.parametrize("axis", [0, 1])
def test_struct_centre_replacement_never_comes_from_the_hidden_line(axis):
    size, radius, span = 24, 2, 1
    masked, _, mask = _mask(
        _unique_values(256, size), fraction=0.05, radius=radius, struct_axis=axis, struct_span=span
    )
    b, y, x, _ = np.nonzero(mask)
    source_y, source_x = np.divmod(masked[b, y, x, 0].astype(int), size)
    along, across = (source_y - y, source_x - x) if axis == 0 else (source_x - x, source_y - y)
    assert not np.any((across == 0) & (np.abs(along) <= span))
    # Every other pixel of the window stays a candidate: the line beyond the span, and beside the line.
    assert np.any((across == 0) & (np.abs(along) == radius))
    assert np.any((across != 0) & (along == 0))


def test_independent_channels_take_struct_lines_and_zero_replacement_per_channel():
    patches = _noise((4, 32, 32, 2))
    masked, _, mask = _mask(
        patches, fraction=0.01, replacement="zero", struct_axis=1, struct_span=2, independent_channels=True
    )
    assert masked.shape == patches.shape
    assert np.all(masked[mask == 1] == 0.0)
    changed = masked != patches
    # Each channel hides its own centres and lines, so the channels change in different places.
    assert not np.array_equal(changed[..., 0], changed[..., 1])
    assert np.array_equal(changed.sum(axis=(1, 2, 3)) > mask.sum(axis=(1, 2, 3)), [True] * 4)


def test_default_radius_is_two():
    size = 24
    masked, _, mask = _mask(_unique_values(256, size), fraction=0.05)
    b, y, x, _ = np.nonzero(mask)
    source_y, source_x = np.divmod(masked[b, y, x, 0].astype(int), size)
    reach = np.maximum(np.abs(source_y - y), np.abs(source_x - x))
    assert reach.max() == 2


def test_a_one_pixel_high_patch_mirrors_onto_its_only_row():
    patches = np.broadcast_to(np.arange(64, dtype=np.float32), (4, 1, 64)).copy()[..., None]
    masked, _, mask = _mask(patches, fraction=0.05)
    b, y, x, _ = np.nonzero(mask)
    distance = np.abs(masked[b, y, x, 0] - x)
    assert len(b) > 0 and np.all((distance >= 1) & (distance <= 2))


@pytest.mark.parametrize("dtype", [np.uint16, np.float64])
def test_patches_of_any_dtype_give_float32_outputs(dtype):
    patches = (_noise((2, 16, 16, 1)) * 100 + 1000).astype(dtype)
    for options in ({}, {"struct_axis": 0, "struct_span": 2}, {"replacement": "mean"}):
        masked, target = blind_spot_mask(patches, [0], fraction=0.05, **options)
        assert masked.dtype == np.float32 and target.dtype == np.float32


# === Seeds and dtypes ===


def test_same_seed_gives_same_output_and_another_seed_another():
    patches = _noise((5, 20, 28, 2))
    options = {"fraction": 0.02, "replacement": "median", "struct_axis": 0, "struct_span": 2}
    first, second = blind_spot_mask(patches, [9, 1], **options), blind_spot_mask(patches, [9, 1], **options)
    for got, want in zip(first, second, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32
    other = blind_spot_mask(patches, [9, 2], **options)
    assert not np.array_equal(first[1], other[1])


def test_masked_batches_feed_keras_fit():
    patches = _noise((16, 32, 32, 1))
    masked, target = blind_spot_mask(patches, [0, 7], fraction=0.02, replacement="median")
    inputs = keras.Input((32, 32, 1), name="image")
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", name="conv")(inputs))
    model.compile(optimizer="adam", loss=MaskedLoss())
    history = model.fit(masked, target, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


# === MaskedLoss ===


def _hand_made_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    target = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)[None, ..., None]
    mask = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)[None, ..., None]
    prediction = np.array([[0.0, 2.0], [3.0, 1.0]], dtype=np.float32)[None, ..., None]
    return target, mask, prediction


def test_masked_mse_counts_only_masked_pixels():
    target, mask, prediction = _hand_made_case()
    y_true = np.concatenate([target, mask], axis=-1)
    # Masked errors are 1 and 3: (1 + 9) / 2.
    assert float(MaskedLoss()(y_true, prediction)) == pytest.approx(5.0)
    prediction[0, 0, 1, 0] = 100.0  # an unmasked pixel
    assert float(MaskedLoss()(y_true, prediction)) == pytest.approx(5.0)


def test_masked_mae_and_per_sample_values():
    target, mask, prediction = _hand_made_case()
    y_true = np.concatenate([np.concatenate([target, mask], axis=-1)] * 2)
    prediction = np.concatenate([prediction, target])  # second sample is perfect
    per_sample = MaskedLoss(kind="mae").call(
        keras.ops.convert_to_tensor(y_true), keras.ops.convert_to_tensor(prediction)
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_sample), [2.0, 0.0])
    assert float(MaskedLoss(kind="mae")(y_true, prediction)) == pytest.approx(1.0)


def test_masked_loss_of_sample_without_masked_pixels_is_zero_not_nan():
    y_true = np.zeros((1, 4, 4, 2), dtype=np.float32)
    assert float(MaskedLoss()(y_true, np.ones((1, 4, 4, 1), dtype=np.float32))) == 0.0


def test_masked_loss_of_one_masked_pixel_is_its_error():
    target, mask, prediction = _hand_made_case()
    mask[0, 1, 1, 0] = 0.0
    y_true = np.concatenate([target, mask], axis=-1)
    assert float(MaskedLoss()(y_true, prediction)) == pytest.approx(1.0)


def test_masked_loss_has_its_name_and_passes_keras_options_on():
    assert MaskedLoss().name == "masked_loss"
    target, mask, prediction = _hand_made_case()
    y_true = np.concatenate([np.concatenate([target, mask], axis=-1)] * 2)
    prediction = np.concatenate([prediction, target])  # per sample: 5 and 0
    assert float(MaskedLoss(reduction="sum")(y_true, prediction)) == pytest.approx(5.0)
    assert float(MaskedLoss()(y_true, prediction)) == pytest.approx(2.5)


def test_masked_loss_serialization_round_trip():
    loss = MaskedLoss(kind="mae", name="n2v_loss")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, MaskedLoss)
    assert restored.get_config() == loss.get_config()
    target, mask, prediction = _hand_made_case()
    y_true = np.concatenate([target, mask], axis=-1)
    assert float(restored(y_true, prediction)) == float(loss(y_true, prediction))


def test_masked_pixel_count_counts_mask_channels_per_sample():
    target = np.zeros((2, 8, 8, 4), dtype=np.float32)
    target[..., :2] = 3.0  # the original values: not counted
    target[0, 1, 1, 2:] = 1.0
    target[1, 3, 4, 3] = 1.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(masked_pixel_count(target)), [2.0, 1.0])


# === Argument checks ===


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 0.3}, "fraction"),
        ({"radius": 0}, "radius"),
        ({"radius": 11}, "radius"),
        ({"radius": 2.5}, "radius"),
        ({"replacement": "nearest"}, "replacement"),
        ({"struct_axis": 2, "struct_span": 1}, "struct_axis"),
        ({"struct_axis": 0, "struct_span": 11}, "struct_span"),
        ({"struct_axis": 0, "struct_span": -1}, "struct_span"),
        ({"struct_span": 2}, "struct_axis"),
        ({"struct_span": 1}, "struct_axis"),
        ({"struct_axis": 0.5, "struct_span": 1}, "struct_axis"),
        ({"struct_axis": 0, "struct_span": 1.5}, "struct_span"),
    ],
)
def test_bad_arguments_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        blind_spot_mask(np.zeros((1, 16, 16, 1)), [0, 0], **options)


def test_bad_shapes_and_loss_kind_raise_value_error():
    with pytest.raises(ValueError, match="shape"):
        blind_spot_mask(np.zeros((16, 16, 1)), [0, 0])
    with pytest.raises(ValueError, match="seed"):
        blind_spot_mask(np.zeros((1, 16, 16, 1)), [0, -1])
    with pytest.raises(ValueError, match="kind"):
        MaskedLoss(kind="huber")
