"""Search data: digits splits (stratified, disjoint, upsampled to 3 channels), the PIL
ImageFolder reader, any dataset object, random batches."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from latbench.errors import ConfigError, DatasetError
from latbench.search.data import (
    ImageFolder,
    batch_of,
    digits,
    load_data,
    loader,
    random_batch,
)


def test_digits_splits_are_stratified_disjoint_and_sized() -> None:
    data = digits(resolution=16, seed=3)
    assert data.num_classes == 10 and data.resolution == 16
    train, val, test = data.sizes()
    assert train + val + test == 1797
    assert abs(train / 1797 - 0.6) < 0.01 and abs(val / 1797 - 0.2) < 0.01
    parts = [set(split.indices) for split in (data.train, data.val, data.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    labels = data.train.dataset.labels
    for split in (data.train, data.val, data.test):
        counts = np.bincount(labels[split.indices], minlength=10)
        assert counts.min() > 0.8 * counts.mean()  # every class in every split
    x, y = data.train[0]
    assert tuple(x.shape) == (3, 16, 16) and 0 <= y < 10
    assert float(x[0].std()) > 0 and bool((x[0] == x[1]).all())  # grey repeated
    # the same seed gives the same split, another seed another
    assert digits(16, seed=3).train.indices == data.train.indices
    assert digits(16, seed=4).train.indices != data.train.indices


def test_loader_batches_and_batch_of() -> None:
    data = digits(resolution=8)
    xb, yb = next(iter(loader(data.val, 32, shuffle=True, seed=1)))
    assert tuple(xb.shape) == (32, 3, 8, 8) and tuple(yb.shape) == (32,)
    x2, y2 = batch_of(data.test, 20, seed=0)
    assert tuple(x2.shape) == (20, 3, 8, 8) and len(set(y2.tolist())) > 3
    # two ranks of a distributed loader read disjoint shards of equal size
    shards = [loader(data.train, 16, True, 0, rank, 2) for rank in (0, 1)]
    seen = [set(int(i) for i in s.sampler) for s in shards]
    assert not (seen[0] & seen[1]) and len(seen[0]) == len(seen[1])


def test_image_folder_reads_pngs(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for label, name in enumerate(("cat", "dog", "eel")):
        (tmp_path / name).mkdir()
        for i in range(5):
            pixels = (rng.random((12, 10, 3)) * 255 * (label + 1) / 3).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path, resolution=8)
    assert folder.classes == ["cat", "dog", "eel"] and len(folder) == 15
    x, y = folder[7]
    assert tuple(x.shape) == (3, 8, 8) and y == 1
    data = load_data(str(tmp_path), resolution=8, seed=0)
    assert data.num_classes == 3 and sum(data.sizes()) == 15
    (tmp_path / "eel" / "broken.png").write_bytes(b"not a png")
    broken = ImageFolder(tmp_path, resolution=8)
    with pytest.raises(DatasetError, match="broken.png"):
        broken[broken.files.index((tmp_path / "eel" / "broken.png", 2))]


def test_image_folder_errors(tmp_path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "missing", 8)
    (tmp_path / "only").mkdir()
    with pytest.raises(DatasetError, match="two class folders"):
        ImageFolder(tmp_path, 8)


def test_any_dataset_object_and_bad_sources() -> None:
    import torch

    class Toy:
        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int):
            return torch.full((3, 4, 4), float(i)), i % 4

    data = load_data(Toy(), resolution=4, num_classes=4)
    assert sum(data.sizes()) == 40 and data.num_classes == 4
    with pytest.raises(ConfigError, match="num_classes"):
        load_data(Toy(), resolution=4)
    with pytest.raises(ConfigError, match="neither"):
        load_data(42)
    with pytest.raises(ConfigError, match="fractions"):
        digits(8, fractions=(0.5, 0.5, 0.5))


def test_random_batch_is_seeded() -> None:
    x, y = random_batch(6, 8, 10, seed=1)
    assert tuple(x.shape) == (6, 3, 8, 8) and int(y.max()) < 10
    assert bool((random_batch(6, 8, 10, seed=1)[0] == x).all())
    assert not bool((random_batch(6, 8, 10, seed=2)[0] == x).all())
