"""The package's documentation.md: what the model does, how it was trained, its held-out scores
(`# Validation`) and how to run it in each consumer."""

from __future__ import annotations

from export.describe import CITATIONS, Tensors
from export.run_folder import Run


def _training(run: Run) -> list[str]:
    c = run.config
    data = c.get("data") or (
        "the embedded synthetic nuclei dataset of bioimage-keras-zoo"
        if run.task == "segment"
        else "scikit-image's `cell` image with added Gaussian noise (the embedded demo)"
    )
    lines = [
        f"- Data: {data}",
        f"- Network: {c['model']}, depth {c['depth']}, {c.get('base_filters', '?')} filters in the first "
        f"level, batch norm {'on' if c.get('batch_norm', True) else 'off'}",
        f"- Optimisation: {c.get('epochs', '?')} epochs x {c.get('steps_per_epoch', '?')} steps, batch "
        f"{c.get('batch_size', '?')}, patches of {c.get('patch_size', '?')} px, learning rate "
        f"{c.get('learning_rate', '?')} ({c.get('lr_schedule', '?')} schedule), seed {c.get('seed', '?')}",
        f"- Checkpoint: `{run.checkpoint.name}` of run `{run.folder.name}`",
    ]
    if run.task == "denoise":
        lines.append(
            f"- Masking: {c.get('mask_fraction', '?')} of the pixels per patch, replacement "
            f"{c.get('replacement', '?')}, structN2V axis {c.get('struct_axis')}"
        )
    return lines


def _validation(run: Run) -> list[str]:
    m = run.metrics
    if run.task == "segment":
        instances, iou = m.get("instances", {}), m.get("pixel_iou", {})
        post = m.get("postprocessing", {})
        lines = [
            f"Held-out **{m.get('evaluated_on', '?')}** images of the run ({instances.get('n_images', '?')} "
            f"images, {instances.get('n_true', '?')} objects), never used for training or for choosing "
            "the thresholds:",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        first = (instances.get("per_threshold") or [{}])[0]
        for label, value in [
            ("instance F1 at IoU 0.5", instances.get("f1_at_0.5")),
            ("precision at IoU 0.5", first.get("precision")),
            ("recall at IoU 0.5", first.get("recall")),
            ("mean average precision, IoU 0.5:0.9", instances.get("mean_average_precision")),
            *[(f"pixel IoU, {name}", value) for name, value in iou.items()],
        ]:
            lines.append(
                f"| {label} | {value:.3f} |" if isinstance(value, (int, float)) else f"| {label} | - |"
            )
        lines += [
            "",
            "Instances come from the probabilities by a seeded watershed: pixels with interior probability "
            f"above {post.get('interior_threshold', '?')} are seeds, pixels with interior + boundary above "
            f"{post.get('foreground_threshold', '?')} are foreground, objects under "
            f"{post.get('min_object_size', '?')} px are dropped (thresholds chosen on the validation "
            "images).",
        ]
        return lines
    images = [i for i in m.get("images", []) if "noisy" in i]
    if not images:
        return ["The run had no clean reference image, so no held-out PSNR was measured."]
    lines = [
        "PSNR and SSIM against the clean reference (the data range of the clean image):",
        "",
        "| image | PSNR noisy (dB) | PSNR denoised (dB) | gain (dB) | SSIM noisy | SSIM denoised |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i in images:
        lines.append(
            f"| {i['name']} | {i['noisy']['psnr']:.2f} | {i['denoised']['psnr']:.2f} | "
            f"{i['psnr_gain_db']:+.2f} | {i['noisy']['ssim']:.3f} | {i['denoised']['ssim']:.3f} |"
        )
    lines += [
        "",
        "Noise2Void learns from the noisy images themselves; the image scored here is one the model was "
        "trained on, which is how N2V is used (the clean image was never seen).",
    ]
    return lines


def documentation(run: Run, sizes: Tensors, *, name: str, torchscript: bool) -> str:
    if run.task == "segment":
        normalise = (
            f"Each image is normalised per channel to its {run.config['percentile_low']}th and "
            f"{run.config['percentile_high']}th percentiles (`scale_range`)."
        )
        output = (
            f"`{sizes.output_id}`: softmax probabilities of the classes "
            f"{', '.join(sizes.output_channels)} (they sum to 1)."
        )
    else:
        normalise = (
            "The input is normalised with the training mean and standard deviation "
            "(`fixed_zero_mean_unit_variance`) and the output scaled back (`scale_linear`)."
        )
        output = f"`{sizes.output_id}`: the denoised image, in the input's intensities."
    weights = "ONNX (opset 15), Keras 3 (`.keras`)" + (", TorchScript" if torchscript else "")
    cites = [CITATIONS["unet" if run.task == "segment" else "n2v"]]
    if run.config.get("model") == "n2v2":
        cites.append(CITATIONS["n2v2"])
    if run.config.get("struct_axis") is not None:
        cites.append(CITATIONS["structn2v"])
    lines = [
        f"# {name}",
        "",
        "## Input and output",
        "",
        f"- `{sizes.input_id}`: axes b, y, x, c; {len(sizes.input_channels)} channel(s); height and width "
        f"{sizes.min_size} + n x {sizes.step} pixels (any larger image is predicted in tiles). {normalise}",
        f"- {output} Same height and width as the input; the outer {sizes.halo} pixels of a tile lack "
        "context (the halo) and are cut off when tiling.",
        f"- Weights: {weights}.",
        "",
        "## Training",
        "",
        *_training(run),
        "",
        "# Validation",
        "",
        *_validation(run),
        "",
        "## How to use",
        "",
        "- Fiji / deepImageJ: install the package from its zip file (deepImageJ > Install model), open an "
        "image and run the model; tiling is allowed.",
        "- ilastik: Neural Network Classification / Trainable Domain Adaptation workflows run the "
        "TorchScript weights."
        if torchscript
        else "- ilastik needs the TorchScript weights, which this "
        "package lacks (PyTorch was not installed when it was exported).",
        "- Python: `bioimageio predict PACKAGE.zip --inputs image.tif` (bioimageio.core), or "
        "`bioimageio.core.predict(model=..., inputs=...)`.",
        "",
        "## Limitations",
        "",
        "- 2D images only; a stack is processed slice by slice by the consumer.",
        "- The model knows only what its training data showed; check outputs on new kinds of images.",
        "",
        "## References",
        "",
        *[f"- {text} doi:{doi}" for text, doi in cites],
        "",
    ]
    return "\n".join(lines)
