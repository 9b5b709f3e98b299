"""Which split `training.data.find_pairs` uses: an explicit `--split-csv`, else `DATA/index.csv`, else
`train/ val/ test/` sub-folders, else a seeded random split; a CSV beside sub-folders is refused."""

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


@pytest.mark.parametrize("explicit", [False, True], ids=["index.csv", "--split-csv"])
def test_a_split_csv_beside_sub_folders_is_refused_as_two_splits(
    both_layouts: Path, tmp_path: Path, explicit: bool
) -> None:
    """A CSV and train/ val/ test/ sub-folders split one folder two ways; neither wins in silence."""
    csv_file = both_layouts / "index.csv"
    if explicit:
        csv_file = Path(shutil.move(csv_file, tmp_path / "other.csv"))

    with pytest.raises(UserInputError) as refused:
        find_pairs(both_layouts, split_csv=csv_file if explicit else None)

    assert str(refused.value).startswith(f"{csv_file}: a split CSV")
    assert "train/ val/ test/ sub-folders" in str(refused.value)


def test_index_csv_splits_the_images_folder(both_layouts: Path) -> None:
    for name in ("train", "val"):
        shutil.rmtree(both_layouts / name)

    split = find_pairs(both_layouts)

    assert split.source == str(both_layouts / "index.csv")
    assert _names(split) == _csv_split(both_layouts)
    assert split.data_dir == both_layouts and split.layout == SEGMENTATION_LAYOUT
    assert all(
        image.parent == both_layouts / "images" for pairs in split.pairs.values() for image, _ in pairs
    )


def test_an_explicit_split_csv_wins_over_index_csv(both_layouts: Path, tmp_path: Path) -> None:
    for name in ("train", "val"):
        shutil.rmtree(both_layouts / name)
    other = tmp_path / "other.csv"
    names = sorted(p.stem for p in (both_layouts / "images").iterdir())
    other.write_text(
        "name,split\n" + "".join(f"{n},{'val' if i == 0 else 'train'}\n" for i, n in enumerate(names))
    )
    assert _csv_split(both_layouts)["val"] != [f"{names[0]}.tif"], "index.csv splits otherwise"

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
    for name in ("train", "val"):
        shutil.rmtree(both_layouts / name)
    rows = (both_layouts / "index.csv").read_text().splitlines()
    (both_layouts / "index.csv").write_text("\n".join(rows[:-1]) + "\n")

    with pytest.raises(UserInputError, match="no split given for 1 image"):
        find_pairs(both_layouts)


# === The random split: images/ and masks/ with no CSV and no sub-folders ===


def _unsplit(folder: Path, n: int) -> Path:
    """`n` image/mask pairs (img00.tif ...) in images/ and masks/, nothing saying how to split them
    (`find_pairs` only pairs names; the files are not read)."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for i in range(n):
            (folder / sub / f"img{i:02d}.tif").write_bytes(b"II*\0")
    return folder


def _stems(split) -> dict[str, list[str]]:
    return {name: [image.stem for image, _ in pairs] for name, pairs in split.pairs.items()}


@pytest.mark.parametrize(
    ("n", "val_fraction", "test_fraction", "sizes"),
    [
        (20, 0.15, 0.15, (14, 3, 3)),
        (20, 0.25, 0.1, (13, 5, 2)),
        (20, 0.1, 0.0, (18, 2, 0)),
        (40, 0.3, 0.2, (20, 12, 8)),
        (3, 0.15, 0.15, (1, 1, 1)),  # too few for the fractions: one validation and one test image
        (2, 0.15, 0.15, (1, 1, 0)),  # the one image not for training validates
    ],
)
def test_the_random_split_follows_the_fractions(tmp_path, n, val_fraction, test_fraction, sizes):
    split = find_pairs(_unsplit(tmp_path, n), val_fraction=val_fraction, test_fraction=test_fraction, seed=3)

    assert split.source == "random" and split.layout == SEGMENTATION_LAYOUT
    assert tuple(len(split.pairs[name]) for name in ("train", "val", "test")) == sizes
    stems = _stems(split)
    everything = [stem for name in ("train", "val", "test") for stem in stems[name]]
    # No image in two splits, none left out, each with its own mask; each split sorted by name.
    assert sorted(everything) == [f"img{i:02d}" for i in range(n)]
    for pairs in split.pairs.values():
        assert all(image == tmp_path / "images" / image.name for image, _ in pairs)
        assert all(mask == tmp_path / "masks" / image.name for image, mask in pairs)
        assert pairs == sorted(pairs)


def test_the_random_split_is_reproducible_from_its_seed(tmp_path):
    data = _unsplit(tmp_path, 20)
    by_seed = {seed: _stems(find_pairs(data, seed=seed)) for seed in range(4)}

    assert all(_stems(find_pairs(data, seed=seed)) == stems for seed, stems in by_seed.items())
    assert len({str(stems) for stems in by_seed.values()}) == 4  # each seed its own split
    # Not the first or last names by rule: the held-out images are drawn from the whole set.
    held_out = {stem for stems in by_seed.values() for stem in stems["val"] + stems["test"]}
    assert len(held_out) > 6


def test_a_single_pair_leaves_no_validation_image_and_is_refused(tmp_path):
    data = _unsplit(tmp_path, 1)
    with pytest.raises(UserInputError) as caught:
        find_pairs(data)
    assert str(caught.value) == (
        f"{data}: no validation images after the split (random); "
        "validation drives checkpointing and the learning-rate schedule"
    )
