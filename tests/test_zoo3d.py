"""3D models of the zoo: U-Net, N2V and N2V2 on volumes, isotropic and anisotropic; their geometry per
axis, checked against the network itself; `anisotropic_pool_sizes`; and the MaxBlurPool3D layer."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest

import zoo
from export.portable import portable_model
from zoo.flops import conv_flops
from zoo.layers import MaxBlurPool2D, MaxBlurPool3D

pytestmark = pytest.mark.backends  # every test here computes with the backend's kernels

# z pooled once, y and x twice: a volume whose z spacing is twice its xy spacing.
ANISOTROPIC = [(1, 2, 2), (2, 2, 2)]


def tiny_3d_model(name: str, *, seed: int = 0, **overrides) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return zoo.build_model(name, **({"ndim": 3, "depth": 2, "base_filters": 4} | overrides))


def random_volumes(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    # An eager call: for a tiny model it is faster than tracing `predict`.
    return keras.ops.convert_to_numpy(model(images, training=False))


def layers_of(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


# === Building and running 3D models ===


@pytest.mark.parametrize("pool_sizes", [None, ANISOTROPIC], ids=["isotropic", "anisotropic"])
@pytest.mark.parametrize("name", ["unet", "n2v", "n2v2"])
def test_3d_model_predicts_a_volume_of_the_input_size(name, pool_sizes):
    model = tiny_3d_model(name, pool_sizes=pool_sizes)
    assert tuple(model.inputs[0].shape) == (None, None, None, None, 1)
    # z = 8 is a multiple of the anisotropic model's z step (2) but of nothing larger than 8.
    for shape in [(1, 16, 32, 32, 1), (1, 8, 16, 24, 1)]:
        output = predict(model, random_volumes(shape))
        assert output.shape == (*shape[:-1], model.outputs[0].shape[-1])


def test_3d_unet_names_its_layers_as_the_2d_one():
    volume, image = tiny_3d_model("unet"), zoo.build_model("unet", depth=2, base_filters=4)
    assert [layer.name for layer in volume.layers] == [layer.name for layer in image.layers]
    assert len(layers_of(volume, keras.layers.Conv3D)) == len(layers_of(image, keras.layers.Conv2D))
    assert layers_of(volume, keras.layers.Conv2D) == []


def test_pool_sizes_set_each_levels_pooling_and_up_sampling():
    model = tiny_3d_model("unet", pool_sizes=ANISOTROPIC, upsampling="nearest", kernel_size=(1, 3, 3))
    assert [model.get_layer(f"enc{level}_pool").pool_size for level in (0, 1)] == ANISOTROPIC
    assert [model.get_layer(f"dec{level}_up").size for level in (0, 1)] == ANISOTROPIC
    assert [model.get_layer(f"dec{level}_upconv").kernel_size for level in (0, 1)] == ANISOTROPIC
    assert model.get_layer("enc0_conv1").kernel_size == (1, 3, 3)


def test_transposed_up_sampling_has_the_pool_size_as_kernel_and_stride():
    model = tiny_3d_model("unet", pool_sizes=ANISOTROPIC, upsampling="transpose")
    up = model.get_layer("dec0_up")
    assert isinstance(up, keras.layers.Conv3DTranspose)
    assert up.kernel_size == up.strides == (1, 2, 2)


def test_n2v2_in_3d_blur_pools_with_the_levels_pool_sizes():
    model = tiny_3d_model("n2v2", pool_sizes=ANISOTROPIC)
    pools = layers_of(model, MaxBlurPool3D)
    assert [(layer.name, layer.pool_size) for layer in pools] == [
        ("enc0_blurpool", (1, 2, 2)),
        ("enc1_blurpool", (2, 2, 2)),
    ]
    assert layers_of(model, MaxBlurPool2D) == [] and layers_of(model, keras.layers.MaxPooling3D) == []


@pytest.mark.parametrize("name", ["unet", "n2v2"])
def test_3d_keras_file_round_trip_gives_identical_predictions(name, tmp_path: Path):
    model = tiny_3d_model(name, pool_sizes=ANISOTROPIC)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    volumes = random_volumes((1, 8, 16, 16, 1))
    np.testing.assert_array_equal(predict(loaded, volumes), predict(model, volumes))


def test_a_3d_train_step_runs_and_moves_the_batch_norm_statistics():
    # N2V2: max-blur-pooling and batch norm (on 5D tensors, not the fused 4D kernel) in a traced step.
    model = tiny_3d_model("n2v2", pool_sizes=ANISOTROPIC)
    model.compile(optimizer="adam", loss="mse")
    volumes = random_volumes((2, 8, 16, 16, 1))
    targets = np.zeros((*volumes.shape[:-1], model.outputs[0].shape[-1]), np.float32)
    before = keras.ops.convert_to_numpy(model.get_layer("enc0_bn1").moving_mean)
    loss = model.train_on_batch(volumes, targets)
    assert np.isfinite(loss)
    assert not np.allclose(keras.ops.convert_to_numpy(model.get_layer("enc0_bn1").moving_mean), before)


def test_portable_copy_of_a_3d_n2v2_predicts_the_same_and_has_its_geometry():
    model = tiny_3d_model("n2v2", pool_sizes=ANISOTROPIC, input_channels=2, independent_channels=True)
    portable = portable_model(model)
    assert layers_of(portable, MaxBlurPool3D) == []
    volumes = random_volumes((1, 8, 16, 16, 2))
    np.testing.assert_allclose(predict(portable, volumes), predict(model, volumes), atol=1e-5)
    # The TorchScript export reads the steps of the portable copy, whose blur pools are layer stacks.
    assert zoo.model_geometry(portable) == zoo.model_geometry(model)


def test_flops_of_a_3d_convolution_count_every_voxel_and_tap():
    inputs = keras.Input((None, None, None, 2))
    model = keras.Model(inputs, keras.layers.Conv3D(4, (1, 3, 3), padding="same")(inputs))
    assert conv_flops(model, 4, 8, 8) == 2 * (4 * 8 * 8) * 9 * 2 * 4


@pytest.mark.parametrize(
    "arguments",
    [
        {"pool_sizes": [(1, 2), 2]},  # two axes for a volume
        {"pool_sizes": [(1, 2, 2)]},  # depth 2 needs two
        {"pool_sizes": [(1, 2, 3), 2], "downsampling": "blur"},  # max-blur-pooling pools by 1 or 2
        {"kernel_size": (1, 3)},
        {"kernel_size": (2, 3, 3)},
    ],
    ids=["pool-arity", "pool-count", "blur-pool-3", "kernel-arity", "kernel-even"],
)
def test_invalid_3d_arguments_raise_value_error(arguments):
    with pytest.raises(ValueError, match=next(iter(arguments))):
        tiny_3d_model("unet", **arguments)


# === Geometry per axis ===


def test_anisotropic_pooling_gives_z_a_smaller_step_and_less_context():
    isotropic = zoo.model_geometry(tiny_3d_model("unet"))
    anisotropic = zoo.model_geometry(tiny_3d_model("unet", pool_sizes=ANISOTROPIC))
    assert isotropic.steps == (4, 4, 4) and anisotropic.steps == (2, 4, 4)
    # y and x see what the isotropic model sees; z has one pooling less, so less context.
    assert anisotropic.halos[1:] == isotropic.halos[1:] == (isotropic.halo, isotropic.halo)
    assert anisotropic.halos[0] < isotropic.halos[0]
    assert anisotropic == zoo.Geometry(
        steps=(2, 4, 4), receptive_fields=(27, 47, 47), halos=(13, 23, 23), borders=(13, 24, 24)
    )


def test_scalar_geometry_works_on_an_isotropic_volume_and_refuses_an_anisotropic_one():
    assert zoo.model_geometry(tiny_3d_model("unet")).step == 4
    anisotropic = zoo.model_geometry(tiny_3d_model("unet", pool_sizes=ANISOTROPIC))
    with pytest.raises(ValueError, match=r"step.*\(2, 4, 4\)"):
        _ = anisotropic.step


def measured_offsets(model: keras.Model, geometry: zoo.Geometry, images_per_phase: int = 2) -> np.ndarray:
    """Offsets (z, y, x) from a perturbed input voxel to every output voxel that changes with it.

    The perturbed voxel takes every phase modulo the steps (a pooling window is entered at a different
    place), on the diagonal, each in several random volumes: a ReLU or a max pool blocks some paths in
    one volume, rarely the same paths in all. The volume is large enough that its faces never clip the
    field.
    """
    steps = np.array(geometry.steps)
    size = [math.ceil((2 * h + 2 * s) / s) * s for h, s in zip(geometry.halos, geometry.steps, strict=True)]
    centre = np.array(size) // 2 // steps * steps
    phases = np.repeat(np.arange(steps.max()), images_per_phase)
    voxels = [centre + phase % steps for phase in phases]
    base = random_volumes((len(phases), *size, 1))
    perturbed = base.copy()
    for index, voxel in enumerate(voxels):
        perturbed[(index, *voxel, 0)] += 5.0
    changed = np.abs(predict(model, perturbed) - predict(model, base))[..., 0]
    # Far below any real influence, above the rounding of convolutions computed by tiles.
    changed = changed > 1e-6 * changed.max()
    return np.concatenate([np.argwhere(changed[i]) - voxel for i, voxel in enumerate(voxels)])


@pytest.mark.parametrize(
    "options",
    [
        {"pool_sizes": ANISOTROPIC},
        {"pool_sizes": ANISOTROPIC, "upsampling": "nearest"},
        {"pool_sizes": ANISOTROPIC, "downsampling": "blur", "kernel_size": (1, 3, 3)},
        {"depth": 1, "pool_sizes": [(1, 2, 2)]},
    ],
    ids=["anisotropic-transpose", "anisotropic-nearest", "anisotropic-blur-flat-kernel", "depth1-xy-only"],
)
def test_perturbation_of_one_voxel_reaches_exactly_the_halo_of_each_axis(options):
    # Without batch norm and with a linear output no channel is dead at random initialisation.
    model = tiny_3d_model(
        "unet", base_filters=2, batch_norm=False, final_activation=None, num_classes=1, **options
    )
    geometry = zoo.model_geometry(model)
    assert len(set(geometry.halos)) > 1  # the axes differ, so a mix-up would show
    offsets = measured_offsets(model, geometry)
    np.testing.assert_array_equal(np.abs(offsets).max(axis=0), geometry.halos)
    np.testing.assert_array_equal(offsets.max(axis=0) - offsets.min(axis=0) + 1, geometry.receptive_fields)


# === anisotropic_pool_sizes ===


@pytest.mark.parametrize(
    ("depth", "anisotropy", "expected"),
    [
        (3, 1.0, [(2, 2, 2)] * 3),
        (3, 1.3, [(2, 2, 2)] * 3),  # closer to cubic than pooling xy alone would make it
        (3, 2.0, [(1, 2, 2), (2, 2, 2), (2, 2, 2)]),
        (3, 4.0, [(1, 2, 2), (1, 2, 2), (2, 2, 2)]),
        (2, 10.0, [(1, 2, 2), (1, 2, 2)]),
        (4, 5.0, [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]),
    ],
)
def test_anisotropic_pool_sizes_pool_z_once_the_voxels_are_about_cubic(depth, anisotropy, expected):
    assert zoo.anisotropic_pool_sizes(depth=depth, anisotropy=anisotropy) == expected


@pytest.mark.parametrize(("depth", "anisotropy"), [(0, 2.0), (2, 0.5), (2, float("nan")), (2, float("inf"))])
def test_anisotropic_pool_sizes_refuse_nonsense(depth, anisotropy):
    with pytest.raises(ValueError, match=r"depth|anisotropy"):
        zoo.anisotropic_pool_sizes(depth=depth, anisotropy=anisotropy)


def test_anisotropic_pool_sizes_build_a_model():
    pool_sizes = zoo.anisotropic_pool_sizes(depth=3, anisotropy=4.0)
    model = zoo.build_model("unet", ndim=3, depth=3, base_filters=2, pool_sizes=pool_sizes)
    assert zoo.model_geometry(model).steps == (2, 8, 8)


# === MaxBlurPool3D ===


def max_blur_pool_reference(volume: np.ndarray, pool_size: tuple[int, int, int]) -> np.ndarray:
    """Max-blur-pooling of a (Z, Y, X) volume in numpy: along each pooled axis a max of 2 at stride 1 (the
    window cut at the end), then [1, 2, 1] / 4 centred on every even voxel, zero outside."""
    x = volume
    for axis, pool in enumerate(pool_size):
        if pool == 1:
            continue
        padded = np.concatenate([x, np.take(x, [-1], axis=axis)], axis=axis)  # edge: the window cut
        x = np.maximum(
            np.take(padded, range(x.shape[axis]), axis=axis),
            np.take(padded, range(1, x.shape[axis] + 1), axis=axis),
        )
    for axis, pool in enumerate(pool_size):
        if pool == 1:
            continue
        n = x.shape[axis]
        zeros = np.zeros_like(np.take(x, [0], axis=axis))
        padded = np.concatenate([zeros, x, zeros], axis=axis)
        centres = np.arange(0, n, 2) + 1  # 2q in the padded frame
        x = (
            np.take(padded, centres - 1, axis=axis)
            + 2 * np.take(padded, centres, axis=axis)
            + np.take(padded, centres + 1, axis=axis)
        ) / 4
    return x


@pytest.mark.parametrize("pool_size", [(2, 2, 2), (1, 2, 2)])
@pytest.mark.parametrize("shape", [(6, 8, 10), (5, 7, 9)])
def test_max_blur_pool_3d_equals_the_numpy_reference(pool_size, shape):
    volumes = random_volumes((1, *shape, 2), seed=3)
    layer = MaxBlurPool3D(pool_size)
    output = keras.ops.convert_to_numpy(layer(volumes))[0]
    expected_shape = tuple(n if p == 1 else (n + 1) // 2 for n, p in zip(shape, pool_size, strict=True))
    assert output.shape == (*expected_shape, 2)
    assert layer.compute_output_shape((1, *shape, 2)) == (1, *expected_shape, 2)
    for channel in range(2):
        expected = max_blur_pool_reference(volumes[0, ..., channel].astype(np.float64), pool_size)
        np.testing.assert_allclose(output[..., channel], expected, atol=1e-5)


def test_max_blur_pool_3d_without_z_pooling_is_the_2d_layer_on_every_slice():
    volumes = random_volumes((2, 5, 8, 12, 3), seed=4)
    output = keras.ops.convert_to_numpy(MaxBlurPool3D((1, 2, 2))(volumes))
    for z in range(5):
        slices = keras.ops.convert_to_numpy(MaxBlurPool2D()(volumes[:, z]))
        np.testing.assert_allclose(output[:, z], slices, atol=1e-6)


@pytest.mark.parametrize("pool_size", [(2, 2, 2), (1, 2, 2)])
def test_max_blur_pool_3d_spatial_footprint_is_what_one_voxel_reaches(pool_size):
    # A large positive bump raises every max whose window holds it, so each output voxel that reads the
    # bumped voxel changes, and no other.
    layer = MaxBlurPool3D(pool_size)
    base = random_volumes((1, 7, 9, 9, 1), seed=5)
    reaches = layer.spatial_footprint()
    for voxel in [(3, 4, 4), (2, 5, 3), (0, 0, 8)]:
        bumped = base.copy()
        bumped[(0, *voxel, 0)] += 100.0
        changed = np.abs(keras.ops.convert_to_numpy(layer(bumped) - layer(base)))[0, ..., 0] > 1e-4
        expected = np.ones(changed.shape, bool)
        for axis, (low, high, stride) in enumerate(reaches):
            q = np.arange(changed.shape[axis])
            reads = (low <= voxel[axis] - stride * q) & (voxel[axis] - stride * q <= high)
            expected &= reads.reshape([-1 if a == axis else 1 for a in range(3)])
        np.testing.assert_array_equal(changed, expected, err_msg=f"voxel {voxel}")


def test_max_blur_pool_3d_round_trips_its_pool_size(tmp_path: Path):
    inputs = keras.Input((None, None, None, 2))
    model = keras.Model(inputs, MaxBlurPool3D((1, 2, 2), name="pool")(inputs))
    assert model.weights == []
    model.save(tmp_path / "pool.keras")
    loaded = keras.saving.load_model(tmp_path / "pool.keras")
    assert loaded.get_layer("pool").pool_size == (1, 2, 2)
    volumes = random_volumes((1, 4, 8, 8, 2))
    np.testing.assert_array_equal(predict(loaded, volumes), predict(model, volumes))


@pytest.mark.parametrize("pool_size", [(1, 1, 1), (2, 2), (3, 2, 2)])
def test_max_blur_pool_3d_refuses_other_pool_sizes(pool_size):
    with pytest.raises(ValueError, match="pool_size"):
        MaxBlurPool3D(pool_size)
