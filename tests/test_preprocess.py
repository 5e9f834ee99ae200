"""Intensity scaling, resizing, storage quantisation and normalisation presets."""

import warnings

import numpy as np
import pytest
import torch

from src.data.preprocess import (
    from_storage,
    normalization_stats,
    preprocess_image,
    resize,
    scale_intensity,
    to_storage,
)


def test_scale_intensity_clips_to_percentiles():
    # Values 0..100: the 10th and 90th percentiles are exactly 10 and 90.
    values = np.random.default_rng(0).permutation(101).astype(np.float32)
    image = scale_intensity(values.reshape(1, 101), 10, 90)
    assert image.dtype == np.float32 and image.shape == (1, 101)
    np.testing.assert_allclose(image[0], np.clip((values - 10) / 80, 0, 1), atol=1e-6)


def test_scale_intensity_full_range_and_outlier():
    image = np.random.default_rng(1).normal(1000, 50, (40, 40))
    image[0, 0] = 1e6  # a hot pixel
    full = scale_intensity(image, 0, 100)
    assert full.min() == 0 and full.max() == 1 and np.median(full) < 0.01  # the outlier squashes it
    clipped = scale_intensity(image, 1, 99)
    assert clipped[0, 0] == 1 and 0.3 < np.median(clipped) < 0.7


def test_scale_intensity_constant_image_is_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = scale_intensity(np.full((8, 5), 7.0), 0.5, 99.5)
    assert image.dtype == np.float32 and not image.any()


def test_resize_plain_stretches():
    image = resize(np.ones((30, 20), dtype=np.float32), 16, "plain")
    assert image.shape == (16, 16) and image.dtype == np.float32
    np.testing.assert_allclose(image, 1, atol=1e-6)


def test_resize_antialiases_when_downscaling():
    checker = (np.indices((63, 63)).sum(axis=0) % 2).astype(np.float32)
    image = resize(checker, 21, "plain")  # plain sampling every 3rd pixel would give pure 0/1
    assert abs(image.mean() - 0.5) < 0.05 and image.std() < 0.1


@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (50, 7), (5, 3)])
def test_resize_pad_keeps_aspect_and_centres(shape):
    size = 16
    image = resize(np.ones(shape, dtype=np.float32), size, "pad")
    assert image.shape == (size, size) and image.dtype == np.float32
    rows, cols = np.nonzero(image > 0)
    top, bottom, left, right = rows.min(), size - 1 - rows.max(), cols.min(), size - 1 - cols.max()
    content_h, content_w = size - top - bottom, size - left - right
    assert max(content_h, content_w) == size  # the long side fills the square
    assert abs(content_w / content_h - shape[1] / shape[0]) <= 1 / min(content_h, content_w)
    assert abs(top - bottom) <= 1 and abs(left - right) <= 1
    np.testing.assert_allclose(image[top : size - bottom, left : size - right], 1, atol=1e-6)
    assert np.count_nonzero(image) == content_h * content_w  # padding bands are exactly zero


def test_resize_pad_on_square_equals_plain():
    image = np.random.default_rng(2).random((40, 40), dtype=np.float32)
    np.testing.assert_array_equal(resize(image, 16, "pad"), resize(image, 16, "plain"))


def test_resize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="crop"):
        resize(np.ones((4, 4), dtype=np.float32), 2, "crop")


@pytest.mark.parametrize("dtype, levels", [("uint8", 255), ("uint16", 65535)])
def test_storage_round_trip(dtype, levels):
    image = np.random.default_rng(3).random((32, 32), dtype=np.float32)
    image[0, :3] = [0.0, 1.0, -0.2]
    image[1, 0] = 1.3
    stored = to_storage(image, dtype)
    assert stored.dtype == np.dtype(dtype)
    assert stored[0, 0] == 0 and stored[0, 1] == levels and stored[0, 2] == 0 and stored[1, 0] == levels
    restored = from_storage(stored)
    assert restored.dtype == np.float32
    assert np.abs(restored - np.clip(image, 0, 1)).max() <= 0.5 / levels + 1e-6
    tensor = from_storage(torch.from_numpy(stored))
    assert tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.numpy(), restored, rtol=1e-6)


def test_storage_rejects_other_dtypes():
    with pytest.raises(ValueError, match="float16"):
        to_storage(np.zeros((2, 2)), "float16")
    with pytest.raises(ValueError, match="int16"):
        from_storage(np.zeros((2, 2), dtype=np.int16))


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_preprocess_image_clips_before_resizing(dtype):
    image = np.add.outer(np.arange(60.0), np.arange(40.0))
    image[10, 10] = 1e6  # one hot pixel must not darken the whole image
    out = preprocess_image(image, 32, "pad", 0.5, 99.5, dtype)
    assert out.shape == (32, 32) and out.dtype == np.dtype(dtype)
    assert not out[:, :5].any() and not out[:, -5:].any()  # 60x40 -> 32x21: side bands are zero
    content = from_storage(out)[:, 6:26]
    assert 0.35 < np.median(content) < 0.65 and content.max() == 1


def test_normalization_presets():
    imagenet_mean, imagenet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    mean, std = normalization_stats("imagenet", 0.1, 0.1)
    assert mean == pytest.approx(np.mean(imagenet_mean), abs=1e-3)
    assert std == pytest.approx(np.mean(imagenet_std), abs=1e-3)
    assert normalization_stats("medical", 0.1, 0.1) == (0.5, 0.25)
    mean, std = normalization_stats("simple", 0.1, 0.1)
    assert ((0 - mean) / std, (1 - mean) / std) == (-1, 1)  # 0..1 -> -1..1
    assert normalization_stats("custom", 0.3, 0.2) == (0.3, 0.2)
    with pytest.raises(ValueError, match="zscore"):
        normalization_stats("zscore", 0.5, 0.5)
