"""Which split `training.data.find_pairs` uses when a data folder offers several: an explicit `--split-csv`
or `DATA/index.csv` wins over `train/ val/ test/` sub-folders, which win over a random split."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from base.errors import UserInputError
from training.data import SEGMENTATION_LAYOUT, find_pairs


def _names(split) -> dict[str, list[str]]:
    return {name: [image.name for image, _ in pairs] for name, pairs in split.pairs.items()}


def _csv_split(data: Path) -> dict[str, list[str]]:
    with (data / "index.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {s: sorted(f"{r['name']}.tif" for r in rows if r["split"] == s) for s in ("train", "val", "test")}


@pytest.fixture
def both_layouts(tiny_segment_data: Path, tmp_path: Path) -> Path:
    """The tiny dataset (images/, masks/, index.csv) with train/ and val/ sub-folders beside it that split
    the same images differently (every image but the first for training, the first for validation)."""
    data = Path(shutil.copytree(tiny_segment_data, tmp_path / "data"))
    images = sorted((data / "images").iterdir())
    for split, chosen in (("train", images[1:]), ("val", images[:1])):
        for sub in ("images", "masks"):
            (data / split / sub).mkdir(parents=True)
            for image in chosen:
                shutil.copy(data / sub / image.name, data / split / sub / image.name)
    return data


def test_index_csv_wins_over_sub_folders(both_layouts: Path) -> None:
    split = find_pairs(both_layouts)

    assert split.source == str(both_layouts / "index.csv")
    assert _names(split) == _csv_split(both_layouts)
    assert split.data_dir == both_layouts and split.layout == SEGMENTATION_LAYOUT
    assert all(
        image.parent == both_layouts / "images" for pairs in split.pairs.values() for image, _ in pairs
    )


def test_an_explicit_split_csv_wins_over_sub_folders(both_layouts: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    names = sorted(p.stem for p in (both_layouts / "images").iterdir())
    other.write_text(
        "name,split\n" + "".join(f"{n},{'val' if i == 0 else 'train'}\n" for i, n in enumerate(names))
    )
    (both_layouts / "index.csv").unlink()

    split = find_pairs(both_layouts, split_csv=other)

    assert split.source == str(other)
    assert _names(split) == {"train": [f"{n}.tif" for n in names[1:]], "val": [f"{names[0]}.tif"], "test": []}


def test_sub_folders_are_the_split_without_a_csv(both_layouts: Path) -> None:
    (both_layouts / "index.csv").unlink()
    images = sorted(p.name for p in (both_layouts / "images").iterdir())

    split = find_pairs(both_layouts)

    assert split.source == "folders"
    assert _names(split) == {"train": images[1:], "val": images[:1], "test": []}
    assert all(image.parent == both_layouts / "train" / "images" for image, _ in split.pairs["train"])


def test_a_csv_that_leaves_an_image_out_is_refused(both_layouts: Path) -> None:
    rows = (both_layouts / "index.csv").read_text().splitlines()
    (both_layouts / "index.csv").write_text("\n".join(rows[:-1]) + "\n")

    with pytest.raises(UserInputError, match="no split given for 1 image"):
        find_pairs(both_layouts)
