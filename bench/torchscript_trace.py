"""The TorchScript weights traced three ways, timed in one run: the model as Keras computes it (the trace
the packages had before), with batch norm folded, and folded and channels-first (what
`export.torchscript` writes now, `export.torchscript.prediction_copy`).

    python bench/torchscript_trace.py [--side 2048] [--repeats 5] [--device cpu] [--models n2v unet]

Needs PyTorch; runs Keras under its PyTorch backend whatever KERAS_BACKEND says. The standard N2V and
U-Net of `bench/throughput.py` (the U-Net with the segmentation task's 3 softmax classes), with their
initial weights and random batch-norm statistics (the speed does not depend on them), made portable as
an export makes them. For each model and trace: the whole SIDE x SIDE single-channel image in one call,
as `bench/package_torch.py` times a package; the three traces take turns, after one warm-up each; the
median of --repeats (and the best: other work on the machine only ever adds time); megapixels per second
and the speed relative to the first trace, both from the median. Also, for each trace, the largest
difference from Keras that the export's check measures (`export.torchscript.trace_error`, relative to
the output's magnitude) and the graph's size: permutes and contiguous copies of activations, batch-norm
operations, convolutions.

Prints a table and writes `torchscript-trace-<time>.json` into --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"  # before Keras is imported, here or by the project's modules

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from throughput import STANDARD  # noqa: E402

import zoo  # noqa: E402
from export.folding import folded_model  # noqa: E402
from export.layout import channels_first_model  # noqa: E402
from export.portable import portable_model  # noqa: E402
from export.torchscript import trace, trace_error  # noqa: E402

TRACES = {
    "as Keras computes": lambda model: model,
    "batch norm folded": folded_model,
    "folded, channels-first": lambda model: channels_first_model(folded_model(model)),
}
# What Keras's PyTorch batch normalisation becomes in a trace (`keras.src.backend.torch.nn`).
BATCH_NORM_KINDS = ("aten::batch_norm", "aten::rsqrt", "aten::rsqrt_")
COUNTED = ("permute", "contiguous", "batch_norm", "convolution")  # `graph_counts`' columns


def standard_model(name: str) -> keras.Model:
    spec = STANDARD[name]
    options = {"depth": spec["depth"], "base_filters": spec["base_filters"]}
    if name == "unet":
        options |= {"num_classes": 3, "final_activation": "softmax"}
    keras.utils.set_random_seed(0)
    model = zoo.build_model(name, **options)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma),
                    rng.normal(0.0, 0.2, beta),
                    rng.normal(0.0, 0.5, mean),
                    rng.uniform(0.5, 2.0, variance),
                ]
            )
    return portable_model(model)


def graph_counts(traced) -> dict[str, int]:
    """Operations on activations (weights are parameters, whose permutes are cheap) in the traced graph."""
    counts = collections.Counter()
    for node in traced.inlined_graph.nodes():
        source = next(node.inputs(), None)
        on_weights = source is not None and source.node().kind() == "prim::GetAttr"
        if node.kind() in ("aten::permute", "aten::contiguous") and not on_weights:
            counts[node.kind().removeprefix("aten::")] += 1
        elif node.kind() in BATCH_NORM_KINDS:
            counts["batch_norm"] += 1
        elif node.kind() == "aten::_convolution":
            counts["convolution"] += 1
    return dict(counts)


def measure(name: str, side: int, repeats: int, device: str) -> list[dict]:
    import torch

    model = standard_model(name)
    traces = {label: trace(copy(model)) for label, copy in TRACES.items()}
    rows = {
        label: {"trace": label, "trace_error": trace_error(traced, model), **graph_counts(traced)}
        for label, traced in traces.items()
    }
    image = np.random.default_rng(1).normal(size=(1, side, side, 1)).astype(np.float32)
    x = torch.from_numpy(image).to(device)
    modules = {label: traced.to(device) for label, traced in traces.items()}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def once(module) -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            module(x)
        sync()
        return time.perf_counter() - start

    times = collections.defaultdict(list)
    for module in modules.values():
        once(module)
    for _ in range(repeats):
        for label, module in modules.items():
            times[label].append(once(module))
    first = statistics.median(times[next(iter(TRACES))])
    for label, row in rows.items():
        seconds = statistics.median(times[label])
        row |= {
            "seconds": seconds,
            "best_seconds": min(times[label]),
            "all_seconds": times[label],
            "megapixels_per_s": side * side / seconds / 1e6,
            "speed_up": first / seconds,
        }
    return list(rows.values())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="a PyTorch device: cpu, cuda, cuda:1 ...")
    parser.add_argument("--models", nargs="+", choices=sorted(STANDARD), default=["n2v", "unet"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args()
    import torch

    machine = {
        "device": torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
    }
    print(
        f"# {machine['device']}, PyTorch {machine['torch']} ({machine['threads']} threads), "
        f"Keras {machine['keras']}, {args.side}x{args.side}, median of {args.repeats}"
    )
    results = {}
    for name in args.models:
        results[name] = measure(name, args.side, args.repeats, args.device)
        print(f"\n{name}")
        print(f"| trace | s | best s | Mpx/s | x first | error / magnitude | {' | '.join(COUNTED)} |")
        print("| --- " * (6 + len(COUNTED)) + "|")
        for row in results[name]:
            print(
                f"| {row['trace']} | {row['seconds']:.3f} | {row['best_seconds']:.3f} "
                f"| {row['megapixels_per_s']:.2f} "
                f"| {row['speed_up']:.2f} | {row['trace_error']:.1e} | "
                + " | ".join(str(row.get(column, 0)) for column in COUNTED)
                + " |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"torchscript-trace-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine, "side": args.side, "results": results}, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
