"""The deterministic file-name splits that keep the expert and the oracle independent (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from clinalign.data.toy import generate, toy_arrays
from clinalign.errors import DataError
from clinalign.evaluate.data import (
    ImageSet,
    assert_disjoint,
    derived_seed,
    half_of,
    is_held_out,
    match_channels,
    resize_images,
    split_real,
    stratified_cap,
)

NAMES = [f"neutrophil_SEG_{i:06d}.png" for i in range(4000)]


def test_halves_are_deterministic_balanced_and_depend_on_the_name_only():
    halves = [half_of(n) for n in NAMES]
    assert halves == [half_of(n) for n in NAMES]
    assert halves == [half_of(f"/some/other/dir/{n}") for n in NAMES]  # the folder does not matter
    assert 0.45 < halves.count("A") / len(NAMES) < 0.55


def test_test_split_is_independent_of_the_halves():
    held = np.array([is_held_out(n, 0.2) for n in NAMES])
    in_a = np.array([half_of(n) == "A" for n in NAMES])
    assert 0.17 < held.mean() < 0.23
    # Both halves lose about the same share to the test split (independent hashes).
    assert abs(held[in_a].mean() - held[~in_a].mean()) < 0.05


def test_assert_disjoint():
    assert_disjoint(["a_1.png", "b_2.png"], ["c_3.png"], "x")
    with pytest.raises(AssertionError, match="b_2.png"):
        assert_disjoint(["a_1.png", "dir/b_2.png"], ["b_2.png"], "x")


def test_role_seeds_differ():
    assert derived_seed("oracle", 0) != derived_seed("expert", 0)
    assert derived_seed("oracle", 0) == derived_seed("oracle", 0)
    assert derived_seed("oracle", 0) != derived_seed("oracle", 1)


def test_split_real_holds_out_by_name_and_is_stable():
    images, labels, _ = toy_arrays(2, 40, 16, 0)
    classes = ["lymphocyte" if y else "neutrophil" for y in labels]
    real = ImageSet.from_arrays(images, classes)
    train, test = split_real(real, None, 0.25)
    assert len(train) + len(test) == len(real)
    assert not set(train.ids) & set(test.ids)
    assert all(is_held_out(i, 0.25) for i in test.ids)
    # Removing images never moves the others between splits.
    train2, test2 = split_real(real.subset(np.arange(0, 80, 2)), None, 0.25)
    assert set(test2.ids) <= set(test.ids) and set(train2.ids) <= set(train.ids)
    with pytest.raises(DataError):
        split_real(real.subset([0]), None, 0.25)


def test_stratified_cap_keeps_every_class():
    classes = ["a"] * 90 + ["b"] * 10
    idx = stratified_cap(classes, 20, seed=0)
    picked = [classes[i] for i in idx]
    assert picked.count("a") == 18 and picked.count("b") == 2
    assert len(stratified_cap(classes, 0, 0)) == 100


def test_image_set_from_folder_matches_arrays_and_resizes_the_same_way(tmp_path):
    generate(tmp_path, classes=2, per_class=3, size=32, seed=0)
    at16 = ImageSet.from_folder(tmp_path, 16)
    at32 = ImageSet.from_folder(tmp_path, 32)
    assert at16.images.shape == (6, 16, 16, 3) and at16.classes[0] == "lymphocyte"
    assert at16.ids == [p.name for p in at16.paths]
    # In-memory resizing follows the folder loader's pipeline exactly.
    assert np.array_equal(resize_images(at32.images, 16), at16.images)
    assert np.array_equal(at32.at(16, 3).images, at16.images)
    gray = match_channels(at16.images, 1)
    assert gray.shape == (6, 16, 16, 1) and match_channels(gray, 3).shape == (6, 16, 16, 3)
    assert at16.fingerprint() != at32.fingerprint()
    assert at16.fingerprint() == ImageSet.from_folder(tmp_path, 16).fingerprint()


def test_as_image_set_accepts_folder_datasets_and_tuples(tmp_path):
    from clinalign.data.folder import ImageFolderDataset
    from clinalign.evaluate.data import as_image_set

    generate(tmp_path, classes=2, per_class=3, size=16, seed=0)
    want = ImageSet.from_folder(tmp_path, 16)
    got = as_image_set(ImageFolderDataset(tmp_path, 16))
    assert got.ids == want.ids and got.classes == want.classes and np.array_equal(got.images, want.images)
    arrays = as_image_set((want.images, want.classes))
    assert arrays.classes == want.classes and len(set(arrays.ids)) == 6
    with pytest.raises(TypeError):
        as_image_set([want.images])


def test_from_toy_matches_the_generated_folder(tmp_path):
    generate(tmp_path, classes=3, per_class=4, size=16, seed=2)
    folder = ImageSet.from_folder(tmp_path, 16)
    memory = ImageSet.from_toy(3, 4, 16, seed=2)
    assert sorted(memory.ids) == sorted(folder.ids)
    by_id = dict(zip(folder.ids, folder.images))
    assert all(np.array_equal(by_id[i], img) for i, img in zip(memory.ids, memory.images))
