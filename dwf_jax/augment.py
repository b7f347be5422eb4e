"""Input pipelines that run on device inside the jitted, vmapped training step.

CIFAR-10 stays uint8 on the host (4x less memory and transfer than float32);
cropping, flipping and normalising happen here in pure JAX, so every model of
a zoo gets its own augmentation, reproducible from its PRNG key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dwf_jax.data import DATASETS

# Per-channel statistics of the CIFAR-10 training set, as in the usual PyTorch recipes.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class InputPipeline(NamedTuple):
    """How a batch of stored inputs becomes model inputs, for training and for evaluation."""

    train: Callable[[jax.Array, jax.Array], jax.Array]  # (key, images) -> float32 batch
    eval: Callable[[jax.Array], jax.Array]  # images -> float32 batch


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 pixels -> float32 (x / 255 - mean) / std, per channel (last axis)."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Per image of (N, H, W, C): zero-pad, crop back to H x W at a random offset, flip with probability 1/2.

    Matches torchvision's RandomCrop(size, padding) + RandomHorizontalFlip on PIL images.
    """
    return jax.vmap(lambda k, image: _crop_flip_one(k, image, padding))(jax.random.split(key, images.shape[0]), images)


def _crop_flip_one(key: jax.Array, image: jax.Array, padding: int) -> jax.Array:
    height, width, channels = image.shape
    offset_key, flip_key = jax.random.split(key)
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    dy, dx = jax.random.randint(offset_key, (2,), 0, 2 * padding + 1)
    crop = jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, channels))
    return jnp.where(jax.random.bernoulli(flip_key), crop[:, ::-1], crop)


def _unchanged(images: jax.Array) -> jax.Array:
    return images


def _unchanged_train(key: jax.Array, images: jax.Array) -> jax.Array:
    return images


def _cifar10_eval(images: jax.Array) -> jax.Array:
    return normalize(images, CIFAR10_MEAN, CIFAR10_STD)


def _cifar10_train_augmented(key: jax.Array, images: jax.Array) -> jax.Array:
    return _cifar10_eval(random_crop_flip(key, images))


def _cifar10_train_plain(key: jax.Array, images: jax.Array) -> jax.Array:
    return _cifar10_eval(images)


def input_pipeline(dataset_name: str, augment: bool = True) -> InputPipeline:
    """CIFAR-10: normalise (after crop + flip when training with `augment`); others are stored ready to use.

    The functions are module-level, so equal pipelines are equal objects and jitted
    evaluations keyed on them compile once.
    """
    if dataset_name not in DATASETS:
        raise ValueError(f"unknown dataset {dataset_name!r}; known datasets: {', '.join(DATASETS)}")
    if dataset_name != "cifar10":
        return InputPipeline(train=_unchanged_train, eval=_unchanged)
    return InputPipeline(train=_cifar10_train_augmented if augment else _cifar10_train_plain, eval=_cifar10_eval)
