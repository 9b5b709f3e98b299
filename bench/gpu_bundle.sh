#!/usr/bin/env bash
# The wheels that `bench/gpu.py` needs on a GPU machine without network whose Python has NumPy, SciPy,
# scikit-image, tifffile and JAX and/or PyTorch, but no TensorFlow and no Keras: Keras and the packages
# that Keras and this project's training code import beyond such an image (pydantic, rich, ...), built
# for that machine's Python (the compiled ones: h5py, optree, pydantic-core). With --careamics, also
# CAREamics 0.3.5 and what it needs to import and train (no more: not its prediction writers, not
# imagecodecs), with torchvision for the machine's torch.
#
#   bash bench/gpu_bundle.sh [--careamics] [--python-version 3.12] [--torchvision 0.26.0] [--dest DIR]
#
# Run it where pip reaches PyPI. The Keras set takes the versions of this checkout's environment
# ($PYTHON, default .venv/bin/python), so the device runs what the tests ran; the CAREamics set is the
# one that was checked to import and train (bench/README.md, "On a GPU machine", says how and gives
# the sizes). The folder defaults to bench/results/wheels (ignored by git); the total must stay under
# the 64 MiB that a device call carries.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
python_version=3.12
torchvision=0.26.0 # the torchvision of torch 2.11
dest=bench/results/wheels
careamics=false
while [ $# -gt 0 ]; do
    case "$1" in
        --careamics) careamics=true ;;
        --python-version) python_version=$2; shift ;;
        --torchvision) torchvision=$2; shift ;;
        --dest) dest=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

# Keras's requirements less numpy, ml-dtypes and packaging (JAX, onnx and pytest bring them), and
# pydantic for training.config (imported by training.callbacks, whose optimizer the steps use).
KERAS_SET="keras absl-py h5py namex optree rich markdown-it-py mdurl pydantic pydantic-core annotated-types
typing-inspection"
# CAREamics 0.3.5 and the requirements it imports to train, less those of the image and the Keras set.
CAREAMICS_SET="careamics==0.3.5 torchvision==$torchvision lightning==2.6.6 lightning-utilities==0.15.3
torchmetrics==1.8.2 bioimageio.core==0.11.0 bioimageio.spec==0.5.12.0 genericache==0.5.2 zarr==3.1.6
numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1 pandas==3.1.1 xarray==2026.9.0
python-dateutil==4.0.0 matplotlib==3.11.2 fonttools==4.68.0 kiwisolver==1.5.1 contourpy==1.3.3
cycler==0.12.1 pyparsing==3.3.3 psutil==7.2.2 PyYAML==6.0.3 tqdm==4.70.0 email-validator==2.4.0
exceptiongroup==1.3.2 loguru==0.7.3 Markdown==3.11.3 python-dotenv==1.2.4 pydantic-settings==2.16.3
platformdirs==4.14.9 zipp==4.1.2 httpx==0.28.1 idna==3.20 ruyaml==0.91.0"

pins=$("$PYTHON" -c 'import sys, importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $KERAS_SET)
packages="$pins"
if $careamics; then packages="$packages $CAREAMICS_SET"; fi

abi=cp${python_version/./}
platforms=""
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 \
    manylinux2010 manylinux_2_5 manylinux1; do
    platforms="$platforms --platform ${tag}_x86_64"
done
mkdir -p "$dest"
# shellcheck disable=SC2086 # the lists are meant to split
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp --abi "$abi" --abi abi3 --abi none $platforms --platform any -d "$dest" $packages
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -cb "$dest"/*.whl | tail -1 | cut -f1 | awk '{printf "%.1f MiB", $1 / 1048576}') in $dest"
