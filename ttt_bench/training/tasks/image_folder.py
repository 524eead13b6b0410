"""Images from a folder on disk, read at r x r, for pixel classification on data of your own (GPU runs).

Three layouts are recognised, in this order:
    CIFAR-10 python    data_batch_1 ... data_batch_5, test_batch (and batches.meta for class names)
    split folders      train/<class>/<image> and val/<class>/<image> (or test/)
    class folders      <class>/<image>: each class split by test_fraction, the same way on every run
Images are decoded with Pillow and resized on reading, so a large folder is never held at full size.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ttt_bench.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class ImageFolder:
    classes: list[str]
    train_images: torch.Tensor  # [n, C, r, r] in [0, 1]
    train_labels: torch.Tensor  # [n] class indices into `classes`
    test_images: torch.Tensor
    test_labels: torch.Tensor
    description: str


def read_image_folder(root: str | Path, side: int, test_fraction: float, max_per_class: int,
                      grayscale: bool) -> ImageFolder:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"task 'image-folder': root={str(root)!r} is not a folder")
    if (root / "test_batch").is_file() and (root / "data_batch_1").is_file():
        return _read_cifar(root, side, max_per_class, grayscale)
    test_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = _class_names(root / "train")
        train = _read_classes(root / "train", classes, side, max_per_class, grayscale)
        test = _read_classes(test_dir, classes, side, max_per_class, grayscale)
        return ImageFolder(classes, *train, *test, f"images in {root} (train/, {test_dir.name}/)")
    classes = _class_names(root)
    images, labels = _read_classes(root, classes, side, max_per_class, grayscale)
    test_mask = _held_out(labels, test_fraction)
    return ImageFolder(classes, images[~test_mask], labels[~test_mask], images[test_mask], labels[test_mask],
                       f"images in {root} ({test_fraction:g} of each class held out)")


def resize(images: torch.Tensor, side: int) -> torch.Tensor:
    """[n, C, H, W] -> [n, C, side, side]: area averaging to shrink (no aliasing), bilinear to enlarge."""
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    shrinking = side < images.shape[-1]
    mode = {"mode": "area"} if shrinking else {"mode": "bilinear", "align_corners": False}
    return F.interpolate(images, size=(side, side), **mode)


def _read_cifar(root: Path, side: int, max_per_class: int, grayscale: bool) -> ImageFolder:
    def batches(names: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        data, labels = [], []
        for path in names:
            with path.open("rb") as file:
                batch = pickle.load(file, encoding="bytes")
            data.append(np.asarray(batch[b"data"], dtype=np.uint8))
            labels += list(batch[b"labels"])
        images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32)).float() / 255.0
        labels = torch.tensor(labels)
        keep = _first_per_class(labels, max_per_class)
        images = images[keep].mean(dim=1, keepdim=True) if grayscale else images[keep]
        return resize(images, side), labels[keep]

    meta = root / "batches.meta"
    if meta.is_file():
        with meta.open("rb") as file:
            classes = [name.decode() for name in pickle.load(file, encoding="bytes")[b"label_names"]]
    else:
        classes = [str(i) for i in range(10)]
    train = batches(sorted(root.glob("data_batch_*")))
    test = batches([root / "test_batch"])
    return ImageFolder(classes, *train, *test, f"CIFAR-10 batches in {root}")


def _class_names(folder: Path) -> list[str]:
    classes = sorted(path.name for path in folder.iterdir() if path.is_dir())
    if len(classes) < 2:
        raise ConfigError(f"task 'image-folder': {folder} holds {len(classes)} class folders; classification needs "
                          f"at least 2 (one sub-folder of images per class)")
    return classes


def _read_classes(folder: Path, classes: list[str], side: int, max_per_class: int,
                  grayscale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    images, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if max_per_class:
            files = files[:max_per_class]
        if not files:
            raise ConfigError(f"task 'image-folder': {folder / name} has no images ({', '.join(IMAGE_SUFFIXES)})")
        for path in files:
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if grayscale else "RGB")
                    shrinking = side < max(image.size)
                    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
                    pixels = np.asarray(image.resize((side, side), resample), dtype=np.uint8)
            except OSError as error:
                raise ConfigError(f"task 'image-folder': cannot read image {path}: {error}") from None
            images.append(pixels.reshape(side, side, -1))
            labels.append(index)
    array = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return array, torch.tensor(labels)


def _first_per_class(labels: torch.Tensor, limit: int) -> torch.Tensor:
    """Indices of the first `limit` examples of each class (all when limit is 0), in file order."""
    if not limit:
        return torch.arange(len(labels))
    keep = [torch.nonzero(labels == c).flatten()[:limit] for c in labels.unique()]
    return torch.cat(keep).sort().values


def _held_out(labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """A mask of the held-out images: the last `fraction` of each class (at least one), in file order."""
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        members = torch.nonzero(labels == c).flatten()
        count = max(1, round(fraction * len(members)))
        if count >= len(members):
            raise ConfigError(f"task 'image-folder': class {int(c)} has {len(members)} images; holding out "
                              f"{fraction:g} of them leaves none to train on")
        mask[members[-count:]] = True
    return mask
