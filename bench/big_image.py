"""Images larger than memory: blockwise prediction of a large synthetic nuclei image in OME-Zarr.

    python bench/big_image.py SEGMENT_RUN DENOISE_RUN [--sides 20000 6000] [--memory-limit 2]

SEGMENT_RUN and DENOISE_RUN are run folders or shipped model names (`nuclei`). Makes, under --work, a
synthetic nuclei image of each side as OME-Zarr (uint8, chunks of 1024; 1024 x 1024 tiles drawn from 16
generated ones, flipped at random), then for each run and side predicts it as a user would,
`python -m training.predict RUN IMAGE --out OUT --memory-limit GIB`, in a fresh process, recording its
peak resident memory (the process's own, from wait4) and the throughput it prints. Then:

- the in-memory path on 2048 x 2048 (the same command on a TIFF), for the throughput it is compared with;
- blockwise against whole-image prediction on 4096 x 4096 with the segmentation run: the largest
  probability difference and F1@0.5 between the two label images;
- one SIGKILL during the blockwise segmentation of the smallest side, then `--resume`: whether the
  outputs equal the uninterrupted run's, bit for bit.

Prints a table and writes `big_image.json` under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT = re.compile(r"([\d.]+) Mpx in ([\d.]+) s")
TILE = 1024


def make_image(path: Path, side: int, *, seed: int = 0) -> None:
    """A side x side synthetic nuclei image as OME-Zarr, written chunk by chunk."""
    import zarr

    from training.lazy import ngff_attributes
    from training.synthetic import synthetic_nuclei_image

    rng = np.random.default_rng(seed)
    pool = [synthetic_nuclei_image(rng, shape=(TILE, TILE), n_nuclei=(240, 640))[0] for _ in range(16)]
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    group.attrs.update(ngff_attributes("YX", {"y": 0.5, "x": 0.5}, name=path.stem))
    array = group.create_array(
        "0", shape=(side, side), chunks=(TILE, TILE), dtype=np.uint8,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )  # fmt: skip
    for y in range(0, side, TILE):
        for x in range(0, side, TILE):
            tile = pool[rng.integers(len(pool))]
            tile = tile[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
            array[y : y + TILE, x : x + TILE] = tile[: side - y, : side - x]
    tmp.rename(path)


def run_predict(arguments: list[str], *, kill_after_blocks: int | None = None, work: Path | None = None):
    """`python -m training.predict ARGUMENTS` in a fresh process: (seconds, peak RSS in GiB, stdout, exit
    status). With `kill_after_blocks`, SIGKILL it once its progress record holds that many blocks."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "training.predict", *arguments],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    if kill_after_blocks is not None:
        while process.poll() is None:
            records = list(work.glob(".*.blockwise/progress.json")) if work else []
            try:
                done = sum(len(v) for v in json.loads(records[0].read_text())["done"].values())
            except (IndexError, ValueError, KeyError, OSError):
                done = 0
            if done >= kill_after_blocks:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read()
    return time.perf_counter() - start, usage.ru_maxrss / 2**20, output, os.waitstatus_to_exitcode(status)


def zarr_array(path: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(path), mode="r")["0"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("segment_run")
    parser.add_argument("denoise_run")
    parser.add_argument("--sides", type=int, nargs="+", default=[20000, 6000])
    parser.add_argument("--memory-limit", type=float, default=2.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/big_image"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import tifffile

    from training.metrics import evaluate_instances

    args.work.mkdir(parents=True, exist_ok=True)
    limit = ["--memory-limit", str(args.memory_limit)]
    results: dict = {"memory_limit_gib": args.memory_limit, "runs": []}
    for side in sorted(args.sides, reverse=True):
        image = args.work / f"nuclei{side}.ome.zarr"
        if not image.exists():
            make_image(image, side)
        for name, run in (("segment", args.segment_run), ("denoise", args.denoise_run)):
            out = args.work / f"{name}{side}"
            shutil.rmtree(out, ignore_errors=True)
            seconds, rss, output, code = run_predict([run, str(image), "--out", str(out), *limit])
            found = THROUGHPUT.search(output)
            if code != 0 or found is None:
                print(output)
                raise SystemExit(f"{name} {side}: exit {code}")
            megapixels, predict_seconds = float(found[1]), float(found[2])
            results["runs"].append({
                "model": name, "side": side, "peak_rss_gib": round(rss, 3), "wall_s": round(seconds, 1),
                "predict_s": predict_seconds, "mpx_per_s": round(megapixels / predict_seconds, 3),
            })  # fmt: skip
            print(results["runs"][-1], flush=True)

    # The in-memory path on 2048 x 2048, and blockwise against whole on 4096 x 4096.
    small = zarr_array(args.work / f"nuclei{min(args.sides)}.ome.zarr")
    for side in (2048, 4096):
        tifffile.imwrite(args.work / f"nuclei{side}.tif", small[:side, :side])
    for name, run in (("segment", args.segment_run), ("denoise", args.denoise_run)):
        out = args.work / f"memory{name}"
        times = []
        for _ in range(3):
            shutil.rmtree(out, ignore_errors=True)
            seconds, rss, output, code = run_predict(
                [run, str(args.work / "nuclei2048.tif"), "--out", str(out)]
            )
            times.append(seconds)
        # The same command on a tiny image: the start-up (imports, model, conversion) to subtract.
        tifffile.imwrite(args.work / "tiny.tif", small[:64, :64])
        startup = []
        for _ in range(3):
            shutil.rmtree(out, ignore_errors=True)
            startup.append(run_predict([run, str(args.work / "tiny.tif"), "--out", str(out)])[0])
        net = float(np.median(times) - np.median(startup))
        results[f"in_memory_2048_{name}"] = {
            "wall_s": round(float(np.median(times)), 2), "startup_s": round(float(np.median(startup)), 2),
            "mpx_per_s": round(2048**2 / 1e6 / net, 3), "peak_rss_gib": round(rss, 3),
        }  # fmt: skip
        print(name, results[f"in_memory_2048_{name}"], flush=True)

    whole, blocks = args.work / "whole4096", args.work / "blocks4096"
    for folder in (whole, blocks):
        shutil.rmtree(folder, ignore_errors=True)
    image = str(args.work / "nuclei4096.tif")
    run_predict([args.segment_run, image, "--out", str(whole)])
    run_predict([args.segment_run, image, "--out", str(blocks), "--blockwise", *limit])
    p_whole = tifffile.imread(whole / "nuclei4096_probabilities.tif")
    p_blocks = zarr_array(blocks / "nuclei4096_probabilities.ome.zarr")
    pairs = [
        (tifffile.imread(whole / "nuclei4096_labels.tif"), zarr_array(blocks / "nuclei4096_labels.ome.zarr"))
    ]
    scores = evaluate_instances(pairs)
    results["agreement_4096"] = {
        "largest_probability_difference": float(np.abs(p_whole - p_blocks).max()),
        "f1_at_0.5": scores["f1_at_0.5"],
        "objects_whole": scores["n_true"],
        "objects_blocks": scores["n_pred"],
    }
    print(results["agreement_4096"], flush=True)

    side = min(args.sides)
    image, reference = args.work / f"nuclei{side}.ome.zarr", args.work / f"segment{side}"
    killed = args.work / f"killed{side}"
    shutil.rmtree(killed, ignore_errors=True)
    command = [args.segment_run, str(image), "--out", str(killed), *limit]
    _, _, _, code = run_predict(command, kill_after_blocks=3, work=killed)
    seconds, rss, output, resumed = run_predict([*command, "--resume"])
    same = all(
        np.array_equal(zarr_array(killed / n), zarr_array(reference / n))
        for n in (f"nuclei{side}_probabilities.ome.zarr", f"nuclei{side}_labels.ome.zarr")
    )
    results["kill_and_resume"] = {
        "side": side,
        "killed_exit": code,
        "resumed_exit": resumed,
        "identical": same,
    }
    print(results["kill_and_resume"], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "big_image.json").write_text(json.dumps(results, indent=2))
    print("| model | side | peak RSS (GiB) | Mpx/s | wall (s) |\n|---|---|---|---|---|")
    for r in results["runs"]:
        cells = [
            r["model"],
            r["side"],
            f"{r['peak_rss_gib']:.2f}",
            f"{r['mpx_per_s']:.2f}",
            f"{r['wall_s']:.0f}",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
