"""Exported packages on PyTorch: bioimage.io's own test of the TorchScript weights on a chosen device, then
the speed of whole-image prediction by precision.

    python bench/package_torch.py PACKAGE.zip [PACKAGE.zip ...] [--device cuda] [--side 2048]

Needs PyTorch, NumPy, tifffile and PyYAML or ruyaml, and no TensorFlow: this is the route of the
PyTorch consumers of a package (ilastik, bioimage.io's Python tools), and the way to measure the packages
on a GPU machine that has PyTorch but no TensorFlow. For each package:

- `bioimageio.core.test_model(rdf, weight_format="torchscript", devices=[device])`, when bioimageio.core
  can be imported (`export.check.test_model_check`): its status, which is a pass only when it reads
  `passed`, and the messages of the tests that failed. The zip is opened with `export.check.safe_extract`.
- The package's sample input, tiled to SIDE x SIDE and standardised, through the TorchScript module in
  one call on the device, in float32 and under autocast to float16 and bfloat16. (The trace fixes
  PyTorch's default `allow_tf32=True` in each convolution, so "float32" convolutions run in TF32 on
  NVIDIA GPUs since Ampere, whatever the global flags say.) Median of --repeats timed calls after two
  warm-ups, the device synchronised around each; megapixels per second, and the largest difference of
  each output from float32's, relative to the range of float32's output.

Prints a table and writes `package-torch-<time>.json` into --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker_common import large_image

from export.check import safe_extract, test_model_check
from export.errors import ExportError

ROOT = Path(__file__).resolve().parents[1]


def read_rdf(path: Path) -> dict:
    """rdf.yaml as a dict, with PyYAML or else with ruyaml (which bioimageio.spec brings)."""
    try:
        import yaml
    except ImportError:
        from ruyaml import YAML

        return YAML(typ="safe").load(path.read_text())
    return yaml.safe_load(path.read_text())


def speed(module, image: np.ndarray, device: str, repeats: int) -> list[dict]:
    import torch

    x = torch.from_numpy(image[np.newaxis, ..., np.newaxis]).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows, reference = [], None
    for name, dtype in (
        ("float32", None),
        ("float16 autocast", torch.float16),
        ("bfloat16 autocast", torch.bfloat16),
    ):

        def once(dtype=dtype) -> tuple[float, np.ndarray]:
            sync()
            start = time.perf_counter()
            with (
                torch.no_grad(),
                torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None),
            ):
                y = module(x)
            sync()
            return time.perf_counter() - start, y

        try:
            for _ in range(2):
                once()
            seconds = statistics.median(once()[0] for _ in range(repeats))
        except RuntimeError as error:  # a precision the device or the trace does not support
            rows.append({"precision": name, "error": str(error).splitlines()[0]})
            continue
        y = once()[1]
        output = y.float().cpu().numpy()
        if reference is None:
            reference = output
        spread = float(reference.max() - reference.min()) or 1.0
        rows.append(
            {
                "precision": name,
                "seconds": seconds,
                "megapixels_per_s": image.size / seconds / 1e6,
                "output_device": str(y.device),
                "max_relative_difference": float(np.abs(output - reference).max() / spread),
            }
        )
    return rows


def measure(package: Path, device: str, side: int, repeats: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        rdf_path = safe_extract(package, Path(scratch))
        folder, rdf = rdf_path.parent, read_rdf(rdf_path)
        try:
            status = test_model_check(rdf_path, "torchscript", [device]).detail
        except ImportError as error:
            status = f"not run: {error}"
        module = torch.jit.load(str(folder / rdf["weights"]["torchscript"]["source"]), map_location=device)
        module.eval()
        sample = tifffile.imread(folder / rdf["inputs"][0]["sample_tensor"]["source"]).astype(np.float32)
    sample = sample.squeeze()
    image = large_image((sample - sample.mean()) / (sample.std() + 1e-6), side)
    return {
        "package": str(package),
        "name": rdf["name"],
        "test_model": status,
        "rows": speed(module, image, device, repeats),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("packages", type=Path, nargs="+")
    parser.add_argument("--device", default="cpu", help="a PyTorch device: cpu, cuda, cuda:1 ...")
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args()
    import torch

    machine = {
        "device": torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    size = f"{args.side}x{args.side}"
    print(f"# {machine['device']}, PyTorch {machine['torch']}, {size}, median of {args.repeats}")
    results = []
    for package in args.packages:
        try:
            result = measure(package, args.device, args.side, args.repeats)
        except ExportError as error:
            parser.error(str(error))
        results.append(result)
        test = f"bioimageio.core test_model (torchscript, {args.device})"
        print(f"\n{result['name']}: {test}: {result['test_model']}")
        print("| precision | s | Mpx/s | x float32 | max diff / range | output on |")
        print("| --- | --- | --- | --- | --- | --- |")
        base = next((r["seconds"] for r in result["rows"] if "seconds" in r), None)
        for row in result["rows"]:
            if "error" in row:
                print(f"| {row['precision']} | failed: {row['error']} | | | | |")
                continue
            print(
                f"| {row['precision']} | {row['seconds']:.4f} | {row['megapixels_per_s']:.1f} "
                f"| {base / row['seconds']:.2f} | {row['max_relative_difference']:.1e} "
                f"| {row['output_device']} |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"package-torch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine, "side": args.side, "results": results}, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
