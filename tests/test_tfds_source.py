"""The ``tfds:`` source of jaxgan.data: a prepared data set, offline and missing-TensorFlow advice, bad names.

Skipped where tensorflow-datasets is not installed (it is imported only for ``tfds:`` sources).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from folder_data import SPLITS, gray_ramp, make_config, make_folder
from PIL import Image

from jaxgan import input_pipeline
from jaxgan.data import sources as data_sources
from jaxgan.input_pipeline import DataError


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory):
    """A real, tiny cycle_gan/horse2zebra prepared by a local subclass of the tfds builder (no network)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds.disable_progress_bar()
    images = tmp_path_factory.mktemp("unpacked")
    make_folder(images, {"trainA": 3, "trainB": 5, "testA": 2, "testB": 1})
    Image.fromarray(gray_ramp(40, 48)).save(images / "trainB" / "img_gray.jpg")  # grayscale, as in horse2zebra

    class LocalCycleGan(tfds.builder_cls("cycle_gan"), skip_registration=True):
        name = "cycle_gan"

        def _split_generators(self, dl_manager):
            return [
                tfds.core.SplitGenerator(name=s, gen_kwargs={"path": str(images / s), "label": s[-1]}) for s in SPLITS
            ]

        def _generate_examples(self, path, label):
            for name in sorted(os.listdir(path)):
                yield name, {"image": os.path.join(path, name), "label": label}

    data_dir = tmp_path_factory.mktemp("tfds")
    LocalCycleGan(config="horse2zebra", data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


def test_tfds_source_reads_a_prepared_data_set(tfds_data_dir, monkeypatch):
    monkeypatch.setattr(data_sources, "_download_host_reachable", lambda *a, **k: pytest.fail("no network"))
    config = make_config("tfds:cycle_gan/horse2zebra", data_dir=tfds_data_dir, batch_size=2)
    stream = input_pipeline.create_train_stream(config)
    assert stream.num_images == {"A": 3, "B": 6} and stream.steps_per_epoch == 3
    assert stream.batch(0)["B"].shape == (2, 32, 32, 3)
    shards = [input_pipeline.create_train_stream(config, process_index=p, process_count=2) for p in range(2)]
    assert not set(shards[0].cached_indices["B"]) & set(shards[1].cached_indices["B"])  # 2 shards of 3 images
    np.testing.assert_array_equal(np.concatenate([s.batch(4)["B"] for s in shards]), stream.batch(4)["B"])
    test = input_pipeline.load_test_split(config, "A")
    assert test.images.shape == (2, 32, 32, 3) and test.names == ["testA_00000.png", "testA_00001.png"]


def test_tfds_offline_fails_fast_with_the_folder_advice(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data_sources, "_download_host_reachable", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        input_pipeline.create_train_stream(make_config("tfds:cycle_gan/apple2orange", data_dir=str(tmp_path)))
    assert time.perf_counter() - start < 20
    message = str(error.value)
    assert "not prepared" in message and str(tmp_path) in message
    assert "--config.dataset=folder:/path/to/apple2orange" in message and "apple2orange.zip" in message


def test_tfds_without_tensorflow_explains_how_to_prepare(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data_sources, "_download_host_reachable", lambda *a, **k: True)
    monkeypatch.setattr(data_sources, "_tensorflow_available", lambda: False)
    with pytest.raises(DataError, match=r"needs TensorFlow[\s\S]*folder:"):
        input_pipeline.create_train_stream(make_config("tfds:cycle_gan/maps", data_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "name, match",
    [
        ("cycle_gan/horse2zebr", r"cycle_gan/horse2zebr does not exist. Known: apple2orange"),
        ("cycle_gan/cityscapes", "removed from the tensorflow-datasets builder"),
        ("horse2zebra", r"Did you mean 'tfds:cycle_gan/horse2zebra'"),
        ("mnist", "is not a cycle_gan data set"),
    ],
)
def test_tfds_unknown_names_are_clear_errors(name, match):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=match):
        input_pipeline.create_train_stream(make_config(f"tfds:{name}"))
