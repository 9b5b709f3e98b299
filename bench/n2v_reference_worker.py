"""Train juglab's `n2v` 0.3.3 (TensorFlow 2.15 / Keras 2) on one noisy image; the reference half of
`bench/n2v_compare.py`, which runs this file with the Python of the reference's own virtual environment.

    REF_PYTHON bench/n2v_reference_worker.py --noisy noisy.tif --clean clean.tif --out DIR
        --epochs 10 --steps-per-epoch 50 --batch-size 64 --patch-size 64 --depth 2 --base-filters 32

The configuration follows the n2v 2D example notebooks (patches with 8-fold augmentation, 90/10 patch
split, 0.198 % of pixels masked, `uniform_withCP`, radius 5, learning rate 4e-4 with plateau reduction,
its best-validation weights for prediction). Writes `DIR/result.json`: median step time, training
wall time, PSNR and SSIM of the noisy and the denoised image against the clean one.
"""

import json
import time

import numpy as np
import tifffile
from worker_common import budget_arguments, large_image, quality


def main() -> None:
    args = budget_arguments()

    import tensorflow as tf
    from n2v.internals.N2V_DataGenerator import N2V_DataGenerator
    from n2v.models import N2V, N2VConfig

    np.random.seed(args.seed)  # noqa: NPY002 (n2v draws its patches and masks from the global state)
    tf.random.set_seed(args.seed)
    noisy = tifffile.imread(args.noisy).astype(np.float32)
    clean = tifffile.imread(args.clean).astype(np.float32)
    shape = (args.patch_size, args.patch_size)
    patches = N2V_DataGenerator().generate_patches_from_list([noisy[None, ..., None]], shape=shape)
    n_train = int(0.9 * len(patches))
    x_train, x_val = patches[:n_train], patches[n_train:]
    config = N2VConfig(
        x_train,
        unet_kern_size=3,
        unet_n_depth=args.depth,
        unet_n_first=args.base_filters,
        train_steps_per_epoch=args.steps_per_epoch,
        train_epochs=args.epochs,
        train_loss="mse",
        batch_norm=True,
        train_batch_size=args.batch_size,
        n2v_perc_pix=0.198,
        n2v_patch_shape=shape,
        n2v_manipulator="uniform_withCP",
        n2v_neighborhood_radius=5,
    )
    model = N2V(config, "n2v_reference", basedir=str(args.out))
    model.prepare_for_training()
    steps: list[float] = []

    class StepTimer(tf.keras.callbacks.Callback):
        """The same measure as the project's `step_ms`: from one step's end to the next."""

        def on_epoch_begin(self, epoch, logs=None):
            self.last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            steps.append(now - self.last)
            self.last = now

    model.callbacks.append(StepTimer())
    start = time.perf_counter()
    model.train(x_train, x_val)
    train_seconds = time.perf_counter() - start
    denoised = model.predict(noisy, axes="YX")
    denoised_tta = model.predict(noisy, axes="YX", tta=True)

    # Prediction speed on a 2048 x 2048 image (the noisy image tiled), after a warm-up; n2v tiles with
    # CSBDeep's `n_tiles`, and the fastest of three settings counts (1x1: the whole image at once).
    big = large_image(noisy)
    model.predict(noisy, axes="YX", n_tiles=(2, 2))
    predict_seconds = {}
    for tiles in ((1, 1), (2, 2), (4, 4)):
        start = time.perf_counter()
        model.predict(big, axes="YX", n_tiles=tiles)
        predict_seconds[f"{tiles[0]}x{tiles[1]}"] = time.perf_counter() - start

    result = {
        "implementation": f"n2v 0.3.3 (TensorFlow {tf.__version__})",
        "step_ms_median": 1000.0 * float(np.median(steps)),
        "steps": len(steps),
        "train_seconds": train_seconds,
        "noisy": quality(clean, noisy),
        "denoised": quality(clean, denoised.astype(np.float32)),
        "denoised_tta": quality(clean, denoised_tta.astype(np.float32)),
        "predict_2048_seconds": min(predict_seconds.values()),
        "predict_2048_seconds_by_tiles": predict_seconds,
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
