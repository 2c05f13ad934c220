"""Tests of jaxgan.synthetic: determinism, the paired ground truth, and the pipeline's synthetic source."""

from __future__ import annotations

import time

import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from jaxgan import image_io, input_pipeline, synthetic


def test_scenes_are_deterministic_and_differ_by_seed_and_split():
    a = synthetic.render(0, "trainA", [0, 1, 2], 48, "A")
    np.testing.assert_array_equal(a, synthetic.render(0, "trainA", [0, 1, 2], 48, "A"))
    np.testing.assert_array_equal(a[1:2], synthetic.render(0, "trainA", [1], 48, "A"))  # per-scene, not per-call
    assert not np.array_equal(a, synthetic.render(1, "trainA", [0, 1, 2], 48, "A"))
    other_split = synthetic.render(0, "trainB", [0, 1, 2], 48, "A")
    masks = [synthetic.shape_mask(0, split, 0, 48) for split in ("trainA", "trainB")]
    assert not np.array_equal(a, other_split) and not np.array_equal(*masks)
    assert a.dtype == np.uint8 and a.shape == (3, 48, 48, 3)


@pytest.mark.parametrize("split", ["testA", "testB"])
def test_truth_is_the_same_scene_rendered_in_the_other_domain(split):
    own, other = split[-1], "B" if split[-1] == "A" else "A"
    images, truth = synthetic.split_with_truth(0, split, 6, 64)
    np.testing.assert_array_equal(images, synthetic.render(0, split, range(6), 64, own))
    np.testing.assert_array_equal(truth, synthetic.render(0, split, range(6), 64, other))
    plain, banded = (images, truth) if own == "A" else (truth, images)
    light_pixels = 0
    for index in range(6):
        mask = synthetic.shape_mask(0, split, index, 64)
        outside, inside = mask == 0, mask == 1
        assert inside.sum() > 100 and outside.sum() > 1000
        # The background, noise included, is untouched; only the shapes change.
        np.testing.assert_array_equal(plain[index][outside], banded[index][outside])
        # A: one plain fill; B: dark and light bands inside the same outline.
        assert np.ptp(plain[index][inside].astype(int), axis=0).max() <= 1
        levels = banded[index][inside].mean(axis=-1)
        assert (levels < 40).sum() > 20  # the outermost band is dark; small shapes may have no light core
        assert ((levels < 40) | (levels > 200)).mean() > 0.9
        light_pixels += (levels > 200).sum()
    assert light_pixels > 100


def test_bands_follow_the_outline_seen_in_domain_a():
    """B is a local function of the A picture: band parity of the distance to the visible outline."""
    images, truth = synthetic.split_with_truth(0, "testA", 8, 96)
    agree = []
    for image, target in zip(images, truth, strict=True):
        brown = np.abs(image.astype(int) - np.array([148, 92, 51])).sum(-1) < 30  # the plain A fill
        depth = ndimage.distance_transform_edt(brown) / 96 - 0.5 / 96
        light_expected = np.floor(depth / synthetic.BAND_WIDTH).astype(int) % 2 == 1
        light_seen = target.mean(-1) > 128
        agree.append((light_expected == light_seen)[brown].mean())
    assert min(agree) > 0.9, agree


def test_any_size_shows_the_same_scene():
    small = synthetic.shape_mask(3, "trainA", 5, 32)
    large = synthetic.shape_mask(3, "trainA", 5, 128)
    pooled = large.reshape(32, 4, 32, 4).mean(axis=(1, 3))
    assert np.abs(pooled - small).mean() < 0.02
    for size in (16, 64, 256):
        assert synthetic.render(3, "trainA", [5], size, "B").shape == (1, size, size, 3)


def test_a_wider_canvas_keeps_the_pixel_scale():
    """Training images (load_size canvas, crop_size scale) show the test-scale scene with a margin."""
    for index in range(4):
        wide = synthetic.shape_mask(2, "trainB", index, 72, scale=64)
        np.testing.assert_array_equal(wide[4:68, 4:68], synthetic.shape_mask(2, "trainB", index, 64))
        assert wide[:4].max() == wide[68:].max() == wide[:, :4].max() == wide[:, 68:].max() == 0


def test_generation_is_fast():
    start = time.perf_counter()
    for split in ("trainA", "trainB"):
        synthetic.render(11, split, range(400), 72, split[-1])
    for split in ("testA", "testB"):
        synthetic.split_with_truth(11, split, 50, 64)
    assert time.perf_counter() - start < 10.0  # about 1.3 s on a shared 2-core machine


def test_translation_error_against_the_identity_baseline():
    images, truth = synthetic.split_with_truth(0, "testA", 4, 64)
    source, target = image_io.to_float(images), image_io.to_float(truth)
    perfect = synthetic.translation_error(target, source, target)
    assert perfect["l1"] == 0 and perfect["ratio"] == 0 and perfect["pooled_ratio"] == 0
    nothing = synthetic.translation_error(source, source, target)
    assert nothing["ratio"] == pytest.approx(1.0) and nothing["l1_identity"] > 0.05
    shifted = synthetic.translation_error(np.roll(target, 1, axis=2), source, target)
    assert shifted["pooled_ratio"] < shifted["ratio"] < 1.0
    # By region: doing nothing is exact on the background (up to rounding) and wrong on the shapes.
    assert nothing["background_l1"] < 0.01 and nothing["shapes_l1"] == nothing["shapes_l1_identity"] > 0.5
    assert perfect["shapes_l1"] == perfect["background_l1"] == 0
    mask = np.stack([synthetic.shape_mask(0, "testA", i, 64) for i in range(4)]) > 0.5
    changed = np.abs(source - target).mean(axis=-1) > 0.1
    assert (changed == mask).mean() > 0.98  # the "shapes" region is the shapes, up to antialiased edges
    # Shapes halfway between source and truth on the true background: half the shapes error, no other.
    halfway = np.where(changed[..., None], (source + target) / 2, target)
    half = synthetic.translation_error(halfway, source, target)
    assert half["background_l1"] == 0 and half["shapes_l1"] == pytest.approx(nothing["shapes_l1"] / 2, rel=1e-5)


def _config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "dataset": "synthetic",
            "data_dir": "",
            "batch_size": 2,
            "load_size": 72,
            "crop_size": 64,
            "preprocess": "resize_and_crop",
            "flip": True,
            "seed": 0,
            "synthetic_num_train": 12,
            "synthetic_num_test": 5,
        }
    )
    config.update(overrides)
    return config


def test_pipeline_synthetic_source():
    config = _config()
    stream = input_pipeline.create_train_stream(config)
    assert stream.num_images == {"A": 12, "B": 12} and stream.steps_per_epoch == 6
    batch = stream.batch(0)
    assert batch["A"].shape == (2, 64, 64, 3) and batch["A"].dtype == np.float32
    assert batch["B"].min() >= -1 and batch["B"].max() <= 1
    test = input_pipeline.load_test_split(config, "A", max_images=3)
    assert test.names == ["synthetic_00000.png", "synthetic_00001.png", "synthetic_00002.png"]
    images, truth = synthetic.split_with_truth(0, "testA", 3, 64)
    np.testing.assert_array_equal(test.images, image_io.to_float(images))
    np.testing.assert_array_equal(test.truth, image_io.to_float(truth))
    # The training seed changes the order and the crops, not the data set.
    reseeded = _config(seed=5)
    for domain in "AB":
        np.testing.assert_array_equal(
            input_pipeline.load_test_split(reseeded, domain).images,
            input_pipeline.load_test_split(config, domain).images,
        )
    assert not np.array_equal(input_pipeline.create_train_stream(reseeded).batch(0)["A"], batch["A"])


def test_pipeline_synthetic_shards_render_only_their_own_scenes():
    config = _config(batch_size=4)
    parts = [input_pipeline.create_train_stream(config, process_index=p, process_count=2) for p in range(2)]
    assert [len(p.cached_indices["A"]) for p in parts] == [6, 6]
    whole = input_pipeline.create_train_stream(config)
    np.testing.assert_array_equal(np.concatenate([p.batch(2)["A"] for p in parts]), whole.batch(2)["A"])
