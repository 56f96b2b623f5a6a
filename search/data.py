"""Data for training supernets and candidates: scikit-learn digits by default, any torch-style
Dataset or an ImageFolder path for real use.

Digits (1,797 8x8 grey images, 10 classes) is the only real image data available offline; it is
upsampled to the space's resolution and repeated to 3 channels, and split train / val / test,
stratified. The supernet trains weights on `train`, architecture parameters on `val`, and the
derived network is scored on `test`.

torchvision cannot be installed beside this torch, so `ImageFolder` is a small reader of
`root/<class>/<image>` files with PIL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latbench.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm")
# ImageNet channel statistics: the usual normalisation for photographs.
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class DataSplits:
    """Train / validation / test datasets of (image CHW float32 tensor, label) items."""

    name: str
    train: Any
    val: Any
    test: Any
    num_classes: int
    resolution: int

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)


class ArrayImages:
    """Images kept small as an (N, C, h, w) float32 array, resized to `resolution` per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, resolution: int) -> None:
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(self.images[index])
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x[None], size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False)[0]
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1).contiguous()
        return x, int(self.labels[index])


class Subset:
    """Items `indices` of a dataset (keeps the labels at hand for stratified splits)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


class ImageFolder:
    """`root/<class>/<image>` files; classes are the sorted folder names."""

    def __init__(self, root: Path, resolution: int) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder {self.root} does not exist")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.files: list[tuple[Path, int]] = [
            (f, label) for label, name in enumerate(self.classes)
            for f in sorted((self.root / name).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        if len(self.classes) < 2 or not self.files:
            raise DatasetError(f"image folder {self.root} needs at least two class folders of "
                               f"images ({', '.join(IMAGE_SUFFIXES)}); found "
                               f"{len(self.classes)} classes, {len(self.files)} images")
        self.resolution = resolution
        self.labels = np.array([label for _, label in self.files], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import torch
        from PIL import Image, UnidentifiedImageError

        path, label = self.files[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((self.resolution, self.resolution),
                                                  Image.Resampling.BILINEAR)
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"cannot read image {path}: {exc}") from exc
        array = (np.asarray(rgb, dtype=np.float32) / 255.0 - _MEAN) / _STD
        return torch.from_numpy(array.transpose(2, 0, 1).copy()), label


def _stratified_split(labels: np.ndarray, fractions: Sequence[float],
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"split fractions must be three positive numbers summing to 1, got "
                          f"{tuple(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts[0] += idx[:n_train].tolist()
        parts[1] += idx[n_train:n_train + n_val].tolist()
        parts[2] += idx[n_train + n_val:].tolist()
    out = tuple(np.sort(np.array(p, dtype=np.int64)) for p in parts)
    if any(len(p) == 0 for p in out):
        raise DatasetError(f"{len(labels)} items are too few to split {tuple(fractions)}")
    return out  # type: ignore[return-value]


def split(dataset: Any, name: str, num_classes: int, resolution: int, seed: int = 0,
          fractions: Sequence[float] = DEFAULT_FRACTIONS, labels: np.ndarray | None = None
          ) -> DataSplits:
    """Split any map-style dataset of (image, label) items, stratified by label."""
    if labels is None:
        labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = np.array([int(dataset[i][1]) for i in range(len(dataset))])
    train, val, test = _stratified_split(np.asarray(labels), fractions, seed)
    return DataSplits(name, Subset(dataset, train), Subset(dataset, val), Subset(dataset, test),
                      num_classes, resolution)


def digits(resolution: int = 32, seed: int = 0,
           fractions: Sequence[float] = DEFAULT_FRACTIONS) -> DataSplits:
    """scikit-learn's 8x8 digits, standardised, upsampled to `resolution`, 3 channels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    images = (images - images.mean()) / images.std()
    dataset = ArrayImages(images[:, None], bunch.target, resolution)
    return split(dataset, "digits", 10, resolution, seed, fractions)


def image_folder(root: Path, resolution: int, seed: int = 0,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS) -> DataSplits:
    dataset = ImageFolder(root, resolution)
    return split(dataset, f"imagefolder:{root}", len(dataset.classes), resolution, seed,
                 fractions)


def load_data(source: Any = "digits", resolution: int = 32, seed: int = 0,
              num_classes: int | None = None,
              fractions: Sequence[float] = DEFAULT_FRACTIONS) -> DataSplits:
    """"digits", a path to an image folder, or any dataset object (then give num_classes)."""
    if isinstance(source, DataSplits):
        return source
    if isinstance(source, str) and source == "digits":
        return digits(resolution, seed, fractions)
    if isinstance(source, str | Path):
        return image_folder(Path(source), resolution, seed, fractions)
    if not hasattr(source, "__getitem__") or not hasattr(source, "__len__"):
        raise ConfigError(f"data source {source!r} is neither 'digits', a folder, nor a "
                          "dataset")
    if num_classes is None:
        raise ConfigError("give num_classes with a dataset object")
    return split(source, type(source).__name__, num_classes, resolution, seed, fractions)


def random_batch(n: int, resolution: int, num_classes: int = 10, seed: int = 0
                 ) -> tuple[Any, Any]:
    """CIFAR-like random images and labels (for zero-cost proxies without data)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, resolution, resolution, generator=generator),
            torch.randint(0, num_classes, (n,), generator=generator))


def batch_of(dataset: Any, n: int, seed: int = 0) -> tuple[Any, Any]:
    """n items of a dataset drawn without replacement, stacked."""
    import torch

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    items = [dataset[int(i)] for i in idx]
    return (torch.stack([x for x, _ in items]),
            torch.tensor([int(y) for _, y in items], dtype=torch.int64))


def loader(dataset: Any, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
           world_size: int = 1, drop_last: bool = False) -> Any:
    """A DataLoader; with world_size > 1 each rank reads its own shard (same seed everywhere,
    so ranks agree on the shuffle)."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                     shuffle=shuffle, seed=seed, drop_last=True)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      drop_last=drop_last)
