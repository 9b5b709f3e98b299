"""bench/gpu.py: the order of its jobs, its table and speed-ups, the CAREamics FLOP count, and (slow) one
real run end to end."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402
import gpu_worker  # noqa: E402


def plan_arguments(**overrides) -> argparse.Namespace:
    values = {
        "backends": ["jax", "torch"],
        "precisions": list(gpu.PRECISIONS),
        "models": list(gpu.MODELS),
        "warmup": 1,
        "steps": 2,
        "unet_steps": 1,
        "side": 256,
        "repeats": 1,
        "no_careamics": False,
        "no_predict": False,
    }
    return argparse.Namespace(**(values | overrides))


def test_plan_runs_the_peer_first_and_float16_last(monkeypatch):
    monkeypatch.setattr(gpu, "installed", lambda module: True)
    keys = [key for key, _, _ in gpu.plan(plan_arguments())]
    assert keys[0] == "careamics"
    assert keys[-2:] == ["train/jax/mixed_float16", "train/torch/mixed_float16"]
    assert keys.index("predict/torch") == len(keys) - 3
    assert sorted(keys) == sorted(set(keys))


def test_plan_leaves_out_what_cannot_or_need_not_run(monkeypatch):
    monkeypatch.setattr(gpu, "installed", lambda module: module != "careamics")
    keys = [key for key, _, _ in gpu.plan(plan_arguments(backends=["jax"], no_predict=True))]
    assert keys == ["train/jax/float32", "train/jax/mixed_bfloat16", "train/jax/mixed_float16"]


def test_each_training_job_runs_under_its_own_backend(monkeypatch):
    monkeypatch.setattr(gpu, "installed", lambda module: False)
    for key, backend, command in gpu.plan(plan_arguments(precisions=["float32"])):
        if key.startswith("train/"):
            assert key.split("/")[1] == backend
            assert command[command.index("--precision") + 1] == "float32"


def summary_with_results() -> dict:
    peak = {"dtype": "bfloat16", "tflops": 800.0}
    n2v = {"step_ms": 5.0, "batch": 64, "patch": 64, "patches_per_s": 12800.0, "tflops": 20.0}
    jobs = {
        "careamics": {
            "implementation": "CAREamics 0.3.5 (PyTorch 2.11.0)",
            "trainer": {"step_ms": 20.0, "patches_per_s": 3200.0, "tflops": 5.0, "fraction_of_peak": 0.01},
            "module": {
                "float32": {
                    "step_ms": 10.0,
                    "patches_per_s": 6400.0,
                    "tflops": 10.0,
                    "fraction_of_peak": 0.02,
                },
            },
            "peaks": {"float32": {"dtype": "float32", "tflops": 400.0}},
        },
        "train/jax/mixed_bfloat16": {
            "peak": peak,
            "models": {"n2v": n2v | {"fraction_of_peak": 0.025}, "unet": {"error": "ValueError: no"}},
        },
        "train/torch/mixed_bfloat16": {"skipped": "time budget (360 s) spent"},
    }
    summary = {"plan": {"models": ["n2v", "unet"]}, "jobs": jobs}
    summary["n2v_speedup_vs_careamics"] = gpu.speedups(jobs)
    return summary


def test_speedups_divide_careamics_step_by_ours():
    ratios = summary_with_results()["n2v_speedup_vs_careamics"]
    assert ratios == {"jax/mixed_bfloat16": {"trainer": 4.0, "module float32": 2.0}}


def test_table_shows_results_errors_and_skipped_jobs():
    table = gpu.table(summary_with_results())
    assert "| n2v (64 x 64^2) | jax | mixed_bfloat16 | 5.0 | 12800 | 20 | 2.5% | 800 (bfloat16) |" in table
    assert "| unet | jax | mixed_bfloat16 | ValueError: no |" in table
    assert "| n2v | torch | mixed_bfloat16 | time budget (360 s) spent |" in table
    assert "CAREamics 0.3.5 (PyTorch 2.11.0), trainer | torch | float32 | 20.0 |" in table
    assert "jax/mixed_bfloat16: 4.00x; 2.00x" in table


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_careamics_flop_count_matches_the_convolutions():
    import torch
    from gpu_careamics import conv_flops_torch

    network = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),  # 8 x 8 x 4 outputs of 9 multiply-adds
        torch.nn.ConvTranspose2d(4, 2, 2, stride=2),  # 8 x 8 x 4 inputs spread over 2 x 2 x 2 outputs
    )
    assert conv_flops_torch(network, 8, "cpu") == 2 * 64 * 4 * 9 + 2 * 256 * 4 * 2


def test_timed_steps_waits_for_the_warmup():
    calls = []
    measured = gpu_worker.timed_steps(lambda: calls.append(1), warmup=3, steps=4)
    assert len(calls) == 7
    assert measured["steps_timed"] == 4


@pytest.mark.slow
def test_quick_run_writes_a_result_for_each_job(tmp_path):
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    out = tmp_path / "gpu.json"
    command = [sys.executable, "bench/gpu.py", "--quick", "--backends", backend, "--out", str(out)]
    printed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    summary = json.loads(out.read_text())
    assert summary["jobs"][f"train/{backend}/float32"]["models"]["n2v"]["step_ms"] > 0
    if backend == "torch":
        assert summary["jobs"]["predict/torch"]["models"]["n2v"]["rows"][0]["seconds"] > 0
    assert f"| n2v (64 x 64^2) | {backend} | float32 |" in printed
