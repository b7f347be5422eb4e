"""Tests for dwf_jax.augment on tiny arrays."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwf_jax import augment


def random_images(n, height=8, width=8, seed=0):
    """Pixels in [1, 255] so the zero padding is distinguishable from image content."""
    return np.random.default_rng(seed).integers(1, 256, (n, height, width, 3)).astype(np.uint8)


def test_normalize_matches_numpy():
    images = random_images(3)
    out = augment.normalize(images, augment.CIFAR10_MEAN, augment.CIFAR10_STD)
    expected = (images / 255.0 - np.array(augment.CIFAR10_MEAN)) / np.array(augment.CIFAR10_STD)
    assert out.dtype == jnp.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_crop_flip_deterministic_per_key():
    images = random_images(16)
    a = augment.random_crop_flip(jax.random.key(0), images)
    b = augment.random_crop_flip(jax.random.key(0), images)
    c = augment.random_crop_flip(jax.random.key(1), images)
    assert a.shape == images.shape and a.dtype == jnp.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_crop_flip_outputs_are_padded_windows_or_their_flips():
    """Brute force: each output is one of the (2p+1)^2 windows of the padded input, maybe flipped."""
    padding, n = 1, 200
    images = random_images(n, height=4, width=4)
    out = np.asarray(augment.random_crop_flip(jax.random.key(2), images, padding=padding))
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    seen = set()
    for i in range(n):
        matches = []
        for dy, dx, flip in itertools.product(range(2 * padding + 1), range(2 * padding + 1), (False, True)):
            window = padded[i, dy : dy + 4, dx : dx + 4]
            if np.array_equal(out[i], window[:, ::-1] if flip else window):
                matches.append((dy, dx, flip))
        assert len(matches) == 1, f"image {i}: matches {matches}"
        seen.add(matches[0])
    assert len(seen) == 2 * (2 * padding + 1) ** 2  # every offset and flip occurs


def test_no_padding_only_flips():
    images = random_images(8)
    out = np.asarray(augment.random_crop_flip(jax.random.key(3), images, padding=0))
    for image, result in zip(images, out, strict=False):
        assert np.array_equal(result, image) or np.array_equal(result, image[:, ::-1])


def test_flip_rate_about_half():
    images = np.broadcast_to(np.array([1, 2], np.uint8).reshape(1, 1, 2, 1), (2000, 1, 2, 1))
    out = np.asarray(augment.random_crop_flip(jax.random.key(4), images, padding=0))
    assert 0.4 < np.mean(out[:, 0, 0, 0] == 2) < 0.6


def test_crop_flip_under_jit():
    images = random_images(4)
    jitted = jax.jit(augment.random_crop_flip, static_argnames="padding")
    np.testing.assert_array_equal(
        jitted(jax.random.key(5), images, padding=2), augment.random_crop_flip(jax.random.key(5), images, padding=2)
    )


def test_cifar10_pipeline_jit_vmap():
    """As the zoo calls it: one key and one batch per model, under jit(vmap)."""
    images = random_images(2 * 4, height=32, width=32).reshape(2, 4, 32, 32, 3)
    keys = jax.random.split(jax.random.key(6), 2)
    pipeline = augment.input_pipeline("cifar10")
    train = jax.jit(jax.vmap(pipeline.train))(keys, images)
    assert train.shape == images.shape and train.dtype == jnp.float32
    cropped = jax.vmap(augment.random_crop_flip)(keys, images)
    expected = augment.normalize(cropped, augment.CIFAR10_MEAN, augment.CIFAR10_STD)
    np.testing.assert_allclose(train, expected, rtol=1e-6, atol=1e-6)
    evaluated = jax.jit(pipeline.eval)(images[0])
    expected = augment.normalize(images[0], augment.CIFAR10_MEAN, augment.CIFAR10_STD)
    np.testing.assert_allclose(evaluated, expected, atol=1e-6)
    no_augment = augment.input_pipeline("cifar10", augment=False)
    np.testing.assert_allclose(jax.jit(no_augment.train)(keys[0], images[0]), evaluated)


@pytest.mark.parametrize("name", ["iris", "mnist", "fashion_mnist"])
def test_other_datasets_identity(name):
    x = np.random.default_rng(7).random((5, 4)).astype(np.float32)
    pipeline = augment.input_pipeline(name)
    np.testing.assert_array_equal(jax.jit(pipeline.train)(jax.random.key(0), x), x)
    np.testing.assert_array_equal(jax.jit(pipeline.eval)(x), x)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="cifar10"):
        augment.input_pipeline("svhn")
