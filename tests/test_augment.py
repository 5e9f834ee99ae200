"""BatchAugmenter: per-image random transforms of training batches (0..1 intensities, before normalisation),
flips with mirrored labels, and draws keyed by seed, rank, epoch and batch."""

from __future__ import annotations

import math

import pytest
import torch

from src.config.schema import AugmentationConfig
from src.data.augment import BatchAugmenter
from src.data.zones import ZONES

BLACK, WHITE = 0.0, 1.0  # the augmenter works on intensities, before the normalisation
ALL_ON = dict(rotation_degrees=10, scale=0.1, translate=0.1, brightness=0.2, contrast=0.2, gamma=0.2,
              noise_std=0.05, erasing_probability=0.5, horizontal_flip=0.5)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _same_inputs_every_run():
    """The test images come from torch's global generator, which starts from a random seed."""
    torch.manual_seed(0)


def config(**strengths: float) -> AugmentationConfig:
    """Every augmentation off except `strengths`."""
    off = {k: 0.0 for k in ALL_ON}
    return AugmentationConfig(**{**off, **strengths})


def augment(aug: AugmentationConfig, images: torch.Tensor, targets: torch.Tensor | None = None,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    targets = torch.zeros(len(images), 6, dtype=torch.long) if targets is None else targets
    return BatchAugmenter(aug, seed)(images, targets)


def blobs(batch: int, shape: tuple[int, int], row: float, col: float) -> torch.Tensor:
    """Black images with a bright Gaussian blob (sigma 1.5 px) centred at (row, col)."""
    r, c = torch.arange(shape[0])[:, None], torch.arange(shape[1])[None, :]
    blob = torch.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * 1.5 ** 2))
    return blob.expand(batch, 1, *shape).clone()


def centroids(images: torch.Tensor) -> torch.Tensor:
    """[B, 2] (row, col) of each image's brightness above black."""
    weight = (images - BLACK)[:, 0]
    r, c = torch.arange(weight.shape[1])[:, None], torch.arange(weight.shape[2])[None, :]
    total = weight.sum((1, 2))
    return torch.stack([(weight * r).sum((1, 2)) / total, (weight * c).sum((1, 2)) / total], 1)


def assert_spans(values: torch.Tensor, low: float, high: float, tolerance: float = 1e-4) -> None:
    """All values lie in [low, high] and reach into both outer quarters (the range is really used)."""
    quarter = (high - low) / 4
    assert values.min() >= low - tolerance and values.max() <= high + tolerance
    assert values.min() < low + quarter and values.max() > high - quarter


@pytest.mark.parametrize("aug", [AugmentationConfig(enabled=False), config()], ids=["disabled", "all-zero"])
def test_disabled_or_zero_strength_is_identity_and_draws_no_random_numbers(aug):
    images, targets = torch.randn(4, 1, 16, 16), torch.randint(0, 5, (4, 6))
    state = torch.get_rng_state()
    out_images, out_targets = BatchAugmenter(aug)(images, targets)
    assert out_images is images and out_targets is targets
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_output_keeps_shape_dtype_device_and_strides_and_leaves_the_input_alone(device, dtype, memory_format):
    images = torch.rand(4, 1, 20, 24).to(device, dtype, memory_format=memory_format)
    targets = torch.randint(0, 5, (4, 6), device=device)
    before = images.clone()
    out, out_targets = augment(AugmentationConfig(**ALL_ON), images, targets)
    assert (out.shape, out.dtype, out.device, out.stride()) == (images.shape, dtype, images.device,
                                                                  images.stride())
    assert (out_targets.dtype, out_targets.device) == (targets.dtype, targets.device)
    assert torch.equal(images, before) and not torch.equal(out, images)


def test_same_seed_same_batch_and_the_global_generator_is_never_drawn_from():
    images, targets = torch.rand(8, 1, 24, 24), torch.randint(0, 5, (8, 6))
    aug = AugmentationConfig(**ALL_ON)
    first, second = augment(aug, images, targets), augment(aug, images, targets)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], augment(aug, images, targets, seed=1)[0])
    # Initialisation and dropout draw from the global generator: augmentation leaves it where it was.
    state = torch.get_rng_state()
    for other in (aug, config(brightness=0.1), config(erasing_probability=1.0)):
        augment(other, images, targets)
    assert torch.equal(torch.get_rng_state(), state)


def test_ranks_draw_their_own_augmentations_each_reproducible_and_resumable_inside_an_epoch():
    images, targets = torch.rand(8, 1, 24, 24), torch.randint(0, 5, (8, 6))
    aug = AugmentationConfig(**ALL_ON)

    def epoch(rank: int, number: int = 1, first_batch: int = 0, batches: int = 3) -> list[torch.Tensor]:
        augmenter = BatchAugmenter(aug, seed=7, rank=rank)
        augmenter.set_epoch(number, first_batch)
        return [augmenter(images, targets)[0] for _ in range(batches)]

    rank0, rank1 = epoch(0), epoch(1)
    assert not any(torch.allclose(a, b, atol=1e-3) for a, b in zip(rank0, rank1))  # same seed, other rank
    assert all(torch.equal(a, b) for a, b in zip(rank0, epoch(0)))  # the same run again
    assert all(torch.equal(a, b) for a, b in zip(rank1, epoch(1)))
    assert torch.equal(epoch(0, first_batch=2, batches=1)[0], rank0[2])  # resumed after two batches
    assert not torch.allclose(rank0[0], rank0[1], atol=1e-3)  # each batch its own draws
    assert not torch.allclose(epoch(0, number=2, batches=1)[0], rank0[0], atol=1e-3)  # and each epoch


@pytest.mark.parametrize("strength", ["rotation_degrees", "scale", "translate", "brightness", "contrast",
                                      "gamma", "noise_std"])
def test_every_image_of_a_batch_gets_its_own_parameters(strength):
    images = (0.2 + 0.6 * torch.rand(1, 1, 24, 24)).expand(8, 1, 24, 24).clone()
    out, _ = augment(config(**{strength: ALL_ON[strength]}), images)
    for i in range(len(out)):
        for j in range(i):
            assert not torch.allclose(out[i], out[j], atol=1e-4), (i, j)


def mirrored_zone(name: str) -> str:
    side, level = name.split("_")
    return {"right": "left", "left": "right"}[side] + "_" + level


@pytest.mark.parametrize("level", range(3), ids=["sup", "mid", "inf"])
def test_flip_moves_the_patient_right_lung_blob_to_image_right_and_mirrors_every_zone_label(level):
    size = 30
    band = slice(level * size // 3, (level + 1) * size // 3)
    pixels = torch.zeros(1, 1, size, size)
    pixels[..., band, 2:9] = 1.0  # image left = patient's right
    images = pixels
    name = ("sup", "mid", "inf")[level]
    right, left = ZONES.index(f"right_{name}"), ZONES.index(f"left_{name}")
    targets = torch.tensor([[0, 1, 2, 3, 4, 0]])
    targets[0, right], targets[0, left] = 3, 1  # the blob's zone is the severe one
    out, out_targets = augment(config(horizontal_flip=1.0), images, targets)
    assert torch.allclose(out, images.flip(-1), atol=1e-5)
    assert out[0, 0, band, size - 9:size - 2].min() > WHITE - 1e-4  # the blob is now on the image right
    assert out[0, 0, :, : size // 2].max() < BLACK + 1e-4
    expected = [int(targets[0, ZONES.index(mirrored_zone(name))]) for name in ZONES]
    assert out_targets[0].tolist() == expected and out_targets[0, left] == 3


def test_labels_are_mirrored_exactly_for_the_flipped_images_of_a_batch():
    pixels = torch.zeros(32, 1, 12, 12)
    pixels[..., :4, :3] = 1.0
    targets = torch.tensor([0, 1, 2, 3, 4, 0]).repeat(32, 1)
    out, out_targets = augment(config(horizontal_flip=0.5), pixels, targets)
    flipped = out[:, 0, :4, -3:].mean((1, 2)) > 0
    assert 0 < int(flipped.sum()) < 32
    assert torch.equal(out_targets[flipped], torch.tensor([1, 0, 3, 2, 0, 4]).repeat(int(flipped.sum()), 1))
    assert torch.equal(out_targets[~flipped], targets[~flipped])


def test_labels_are_untouched_without_flip():
    targets = torch.randint(0, 5, (16, 6))
    _, out_targets = augment(AugmentationConfig(**{**ALL_ON, "horizontal_flip": 0.0}),
                             torch.rand(16, 1, 16, 16), targets)
    assert torch.equal(out_targets, targets)


SQUARE, CENTRE, RADIUS = (33, 33), 16.0, 8.0


def polar(points: torch.Tensor, centre: tuple[float, float] = (CENTRE, CENTRE)) -> tuple[torch.Tensor, ...]:
    """Distance from `centre` and angle (degrees) of [B, 2] (row, col) points."""
    d = points - torch.tensor(centre)
    return d.norm(dim=1), torch.rad2deg(torch.atan2(d[:, 0], d[:, 1]))


@pytest.mark.parametrize("shape", [SQUARE, (33, 49)], ids=["square", "wide"])
def test_rotation_turns_about_the_centre_within_the_configured_angle(shape):
    centre = ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    images = blobs(64, shape, centre[0], centre[1] + RADIUS)
    distance, angle = polar(centroids(augment(config(rotation_degrees=20), images)[0]), centre)
    assert torch.allclose(distance, torch.full_like(distance, RADIUS), atol=0.2)
    assert_spans(angle, -20, 20, tolerance=0.5)


def test_zoom_scales_distances_from_the_centre_within_1_plus_minus_scale():
    images = blobs(64, SQUARE, CENTRE, CENTRE + RADIUS)
    distance, angle = polar(centroids(augment(config(scale=0.2), images)[0]))
    assert_spans(distance / RADIUS, 0.8, 1.2, tolerance=0.02)
    assert angle.abs().max() < 0.5


def test_translation_shifts_each_axis_within_the_configured_fraction_of_the_side():
    shift = centroids(augment(config(translate=0.1), blobs(64, SQUARE, CENTRE, CENTRE))[0]) - CENTRE
    limit = 0.1 * SQUARE[1]
    for axis in shift.T:
        assert_spans(axis, -limit, limit, tolerance=0.1)


def test_a_centred_dot_stays_within_the_translation_radius_under_every_geometric_change():
    geometric = config(rotation_degrees=45, scale=0.5, translate=0.1, horizontal_flip=0.5)
    distance, _ = polar(centroids(augment(geometric, blobs(64, SQUARE, CENTRE, CENTRE))[0]))
    assert distance.max() <= math.sqrt(2) * 0.1 * SQUARE[1] + 0.1


def test_strong_intensity_changes_stay_within_the_black_to_white_range():
    images = torch.rand(32, 1, 16, 16)
    out, _ = augment(config(brightness=1.0, contrast=1.0, gamma=0.9, noise_std=0.5), images)
    assert out.min() >= BLACK - 1e-5 and out.max() <= WHITE + 1e-5
    assert torch.isclose(out.min(), torch.tensor(BLACK), atol=1e-5)  # values were clamped, not rescaled
    assert torch.isclose(out.max(), torch.tensor(WHITE), atol=1e-5)


def test_brightness_contrast_gamma_and_noise_act_within_their_strengths_in_0_1_intensity():
    grey = torch.full((64, 1, 16, 16), 0.5)
    two_tone = grey.clone()
    two_tone[..., ::2] = 0.4
    two_tone[..., 1::2] = 0.6

    def intensity(aug: AugmentationConfig, images: torch.Tensor) -> torch.Tensor:
        return augment(aug, images)[0]

    assert_spans(intensity(config(brightness=0.2), grey).mean((1, 2, 3)) - 0.5, -0.2, 0.2)
    contrast = intensity(config(contrast=0.3), two_tone)
    assert_spans(contrast.std((1, 2, 3)) / two_tone.std((1, 2, 3)), 0.7, 1.3)
    assert torch.allclose(contrast.mean((1, 2, 3)), torch.full((64,), 0.5), atol=1e-5)
    assert_spans(intensity(config(gamma=0.5), grey).mean((1, 2, 3)).log() / math.log(0.5), 0.5, 1.5)
    noise = intensity(config(noise_std=0.05), grey) - 0.5
    assert abs(float(noise.std()) - 0.05) < 0.005 and abs(float(noise.mean())) < 0.005


def test_erasing_hits_about_the_configured_share_of_images_with_one_mean_filled_rectangle():
    images = 0.2 + 0.6 * torch.rand(400, 1, 32, 32)
    out, _ = augment(config(erasing_probability=0.3), images)
    changed = ~torch.isclose(out, images, atol=1e-5)[:, 0]
    erased = changed.flatten(1).any(1)
    assert abs(float(erased.float().mean()) - 0.3) < 0.06
    for i in torch.nonzero(erased)[:, 0].tolist():
        rows, cols = torch.nonzero(changed[i], as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert len(rows) >= 0.99 * height * width  # one filled rectangle
        assert 0.015 <= height * width / 32 ** 2 <= 0.23 and 0.25 <= height / width <= 4
        assert torch.allclose(out[i, 0][changed[i]], images[i].mean(), atol=1e-4)
