"""Train CAREamics' Noise2Void (PyTorch) on one noisy image; the CAREamics half of
`bench/n2v_compare.py`, which runs this file with the Python of CAREamics' own virtual environment.

    CAREAMICS_PYTHON bench/careamics_worker.py --noisy noisy.tif --clean clean.tif --out DIR
        --epochs 10 --steps-per-epoch 50 --batch-size 64 --patch-size 64 --depth 2 --base-filters 32

CAREamics' defaults otherwise (its U-Net with batch norm, 0.2 % masked pixels, flips and rotations,
Adam with plateau reduction, mean/std normalisation). Writes `DIR/result.json`: median step time (from one
step's end to the next, as the project's `step_ms`), training wall time, steps done, PSNR/SSIM of the noisy
and the denoised image, and the time to predict a 2048 x 2048 image (the faster of tiles of 256 and 512
with CAREamics' default overlap of 48).
"""

import json
import time

import numpy as np
import tifffile
from worker_common import budget_arguments, large_image, quality


def main() -> None:
    args = budget_arguments()

    import careamics
    import torch
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config
    from pytorch_lightning.callbacks import Callback

    noisy = tifffile.imread(args.noisy).astype(np.float32)
    clean = tifffile.imread(args.clean).astype(np.float32)
    # CAREamics cuts an epoch's patches from its data: stack copies of the image so that an epoch holds
    # `steps-per-epoch` batches (the same image, the same number of steps as the others).
    per_image = (noisy.shape[0] // args.patch_size) * (noisy.shape[1] // args.patch_size)
    copies = -(-args.steps_per_epoch * args.batch_size // per_image)
    config = create_advanced_n2v_config(
        experiment_name="n2v_compare",
        data_type="array",
        axes="SYX",
        patch_size=[args.patch_size, args.patch_size],
        batch_size=args.batch_size,
        num_epochs=args.epochs,
        num_steps=args.steps_per_epoch,
        model_params={"depth": args.depth, "num_channels_init": args.base_filters},
        seed=args.seed + 1,  # CAREamics wants a positive seed
        logger="none",
    )
    steps: list[float] = []

    class StepTimer(Callback):
        def on_train_epoch_start(self, trainer, module):
            self.last = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = time.perf_counter()
            steps.append(now - self.last)
            self.last = now

    args.out.mkdir(parents=True, exist_ok=True)
    careamist = CAREamist(config, work_dir=args.out, callbacks=[StepTimer()], enable_progress_bar=False)
    start = time.perf_counter()
    careamist.train(train_data=np.stack([noisy] * copies))
    train_seconds = time.perf_counter() - start

    def predict(image, tile):
        prediction, _ = careamist.predict(image, tile_size=(tile, tile), axes="YX")
        return np.squeeze(np.asarray(prediction[0], np.float32))

    denoised = predict(noisy, 256)
    big = large_image(noisy)
    predict_seconds = {}
    for tile in (256, 512):
        predict(noisy, tile)  # warm-up at this tile size
        begin = time.perf_counter()
        predict(big, tile)
        predict_seconds[str(tile)] = time.perf_counter() - begin

    result = {
        "implementation": f"CAREamics {careamics.__version__} (PyTorch {torch.__version__})",
        "step_ms_median": 1000.0 * float(np.median(steps)),
        "steps": len(steps),
        "train_seconds": train_seconds,
        "noisy": quality(clean, noisy),
        "denoised": quality(clean, denoised),
        "denoised_tta": quality(clean, denoised),  # CAREamics' predict has no test-time augmentation
        "predict_2048_seconds": min(predict_seconds.values()),
        "predict_2048_seconds_by_tile": predict_seconds,
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
