"""CAREamics's Noise2Void step at the project's standard N2V sizes: the CAREamics job of `bench/gpu.py`,
run where `import careamics` works (its wheels can be carried to the GPU machine: bench/README.md).

    KERAS_BACKEND=torch python bench/gpu_careamics.py --warmup 3 --steps 20 --result R.json

Keras (on PyTorch) is used only to measure the matrix-product peak the same way as the other jobs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gpu_worker import AUTOCAST_DTYPE, STANDARD, matmul_peak, timed_steps


def conv_flops_torch(network, patch: int, device: str) -> int:
    """Convolution operations of one forward pass of a (1, 1, patch, patch) input, counted by hooks on
    the network's Conv2d and ConvTranspose2d modules (2 per multiply-add, as `zoo.flops`)."""
    import torch

    total = 0

    def count(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        if isinstance(module, torch.nn.ConvTranspose2d):
            total += 2 * inputs[0].numel() * kh * kw * module.out_channels // module.groups
        else:
            total += 2 * output.numel() * kh * kw * module.in_channels // module.groups

    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    hooks = [m.register_forward_hook(count) for m in network.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        network(torch.zeros(1, 1, patch, patch, device=device))
    for hook in hooks:
        hook.remove()
    return total


def careamics_steps(warmup: int, steps: int, scratch: Path) -> dict:
    """CAREamics's Noise2Void at the standard N2V batch, patch and network (U-Net depth 2, 32 filters,
    its defaults otherwise, as `bench/careamics_worker.py` configures it):

    - trainer: `CAREamist.train` on random images for one epoch of warmup + steps batches; the median
      time from one step's end to the next (its data loading and its masking included), as the project's
      own `step_ms` and `careamics_worker.py` measure it;
    - module: the body of its `N2VModule.training_step` (masking on the device, forward, loss) plus
      backward and its optimizer's step, on one batch already on the device, in float32 and under
      bfloat16 autocast: the network's cost, comparable to the project's `train_on_batch`."""
    import careamics
    import torch
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config
    from lightning.pytorch import Callback

    spec = STANDARD["n2v"]
    batch, patch = spec["batch"], spec["patch"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = create_advanced_n2v_config(
        experiment_name="gpu_bench",
        data_type="array",
        axes="SYX",
        patch_size=[patch, patch],
        batch_size=batch,
        num_epochs=1,
        num_steps=warmup + steps,
        model_params={"depth": spec["depth"], "num_channels_init": spec["base_filters"]},
        seed=1,
        logger="none",
    )
    ends: list[float] = []

    class StepEnds(Callback):
        def on_train_batch_end(self, trainer, module, outputs, data, index):
            ends.append(time.perf_counter())

    careamist = CAREamist(config, work_dir=scratch, callbacks=[StepEnds()], enable_progress_bar=False)
    side = 512  # 64 patches of 64^2 an image: enough images for every step of the epoch
    images = np.random.default_rng(0).normal(size=(-(-(warmup + steps) * batch // 64), side, side))
    careamist.train(train_data=images.astype(np.float32))
    gaps = np.diff(ends[warmup - 1 :]) if len(ends) > warmup else np.array([np.nan])
    result = {
        "implementation": f"CAREamics {careamics.__version__} (PyTorch {torch.__version__})",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "trainer": {"step_ms": 1000 * float(np.median(gaps)), "steps_timed": len(gaps)},
        "module": {},
    }

    module = careamist.model.to(device).train()  # Lightning moves it back to the CPU after `fit`
    optimizer = module.configure_optimizers()["optimizer"]
    x = torch.randn(batch, 1, patch, patch, device=device)
    for name, dtype in (("float32", None), ("bfloat16 autocast", torch.bfloat16)):

        def step(dtype=dtype) -> float:
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                masked, original, mask = module.n2v_manipulate(x)
                loss = module.loss_func(module.model(masked), original, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()  # waits for the device

        result["module"][name] = timed_steps(step, warmup, steps)
    flops = 3 * conv_flops_torch(module.model, patch, device) * batch
    side = 8192 if device == "cuda" else 2048
    result |= {"flops_per_step": flops, "peaks": {d: matmul_peak(d, side) for d in ("float32", "bfloat16")}}
    timed = [("float32", result["trainer"]), *((AUTOCAST_DTYPE[p], m) for p, m in result["module"].items())]
    for dtype, measured in timed:
        measured["patches_per_s"] = batch / (measured["step_ms"] / 1000)
        measured["tflops"] = flops / (measured["step_ms"] / 1000) / 1e12
        measured["fraction_of_peak"] = measured["tflops"] / result["peaks"][dtype]["tflops"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--result", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        result = careamics_steps(args.warmup, args.steps, Path(scratch))
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
