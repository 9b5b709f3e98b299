"""Time and memory of predicting a large volume with a trained 3D run, as a user runs it.

    python bench/predict_volume.py RUN_DIR [IMAGE] [--shape 64x1024x1024] [--tile-size 512]

Tiles IMAGE (default: the run's first held-out volume, test else validation) to `--shape` voxels by
mirroring, writes it as a float32 ImageJ TIFF, and runs `python -m training.predict RUN_DIR VOLUME --out
...` in a child process, sampling its resident memory (VmRSS) every 0.2 s. Reports the wall time, the
peak memory, the sizes of the input and of each output file, and the voxels per model call that the
tiling chose. Prints a table and writes `predict_volume.json` under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def held_out_volume(run_dir: Path) -> Path:
    from training.data import recorded_split

    split = recorded_split(run_dir)
    pairs = split.pairs["test"] or split.pairs["val"]
    if not pairs:
        raise SystemExit(f"{run_dir}: no held-out volume recorded; pass IMAGE")
    return pairs[0][0]


def mirrored_to(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`volume` (Z, Y, X) mirrored along each axis until it covers `shape`, then cropped to it."""
    reps = [math.ceil(want / have) for want, have in zip(shape, volume.shape, strict=True)]
    for axis, count in enumerate(reps):
        parts = [volume if i % 2 == 0 else np.flip(volume, axis) for i in range(count)]
        volume = np.concatenate(parts, axis=axis)
    return np.ascontiguousarray(volume[tuple(slice(0, n) for n in shape)])


def tiling_of(run_dir: Path, shape: tuple[int, ...], tile_size: int | None) -> dict:
    """The tiles `predict_with_geometry` chooses for a volume of `shape` (a recording model, no network)."""
    from training.predict import load_run
    from training.tiling import predict_with_geometry
    from zoo import model_geometry

    _, config, model = load_run(run_dir, "last")
    geometry = model_geometry(model)
    calls = []

    def record(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return np.zeros((*batch.shape[:-1], 1), np.float32)

    predict_with_geometry(
        record, np.zeros((*shape, 1), np.float32), geometry, tile_size=tile_size or config.tile_size
    )
    return {
        "calls": len(calls),
        "largest_call": list(max(calls, key=lambda s: math.prod(s[:-1]))[:-1]),
        "voxels_computed_per_voxel": round(sum(math.prod(s[:-1]) for s in calls) / math.prod(shape), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("image", type=Path, nargs="?")
    parser.add_argument("--shape", default="64x1024x1024")
    parser.add_argument("--tile-size", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from memory import Sampler

    shape = tuple(int(n) for n in args.shape.lower().split("x"))
    source = args.image or held_out_volume(args.run_dir)
    volume = mirrored_to(np.squeeze(tifffile.imread(source)).astype(np.float32), shape)
    tiling = tiling_of(args.run_dir, shape, args.tile_size)
    with tempfile.TemporaryDirectory(prefix="bkz-volume-") as scratch:
        path = Path(scratch) / "volume.tif"
        tifffile.imwrite(path, volume, imagej=True, metadata={"axes": "ZYX"})
        del volume
        out = Path(scratch) / "predictions"
        command = [sys.executable, "-m", "training.predict", str(args.run_dir), str(path), "--out", str(out)]
        command += ["--tile-size", str(args.tile_size)] if args.tile_size else []
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
        sampler = Sampler(process, lambda: 0)
        sampler.start()
        process.wait()
        sampler.join()
        seconds = time.perf_counter() - start
        if process.returncode != 0:
            raise SystemExit(f"prediction failed ({process.returncode})")
        result = {
            "run": str(args.run_dir),
            "source": str(source),
            "shape": list(shape),
            "seconds": round(seconds, 1),
            "peak_rss_mib": round(max(rss for _, rss, _ in sampler.samples), 1),
            "input_mib": round(path.stat().st_size / 2**20, 1),
            "outputs_mib": {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(out.iterdir())},
            "tiling": tiling,
        }
    print(json.dumps(result, indent=2))
    target = args.out / args.run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    (target / "predict_volume.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
