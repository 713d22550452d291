"""Image folders: discovery, labels, decoding, geometry, class maps, batches."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from torch.utils.data import DistributedSampler

from clinalign.data import (
    ClassMap,
    ImageArrayDataset,
    ImageFolderDataset,
    image_channels,
    infinite_batches,
    load_image,
    save_png,
    to_tensor,
    to_uint8,
)
from clinalign.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def mode_of(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def write_rgb(path: Path, color=(200, 30, 30), size=(40, 30), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def write_gray(path: Path, value=100, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


# --------------------------------------------------------------------------------------------
# Discovery and labels


def test_recursive_search_mixed_case_and_directory_names_ignored(tmp_path):
    write_rgb(tmp_path / "cat_top.PNG", fmt="PNG")
    write_rgb(tmp_path / "dog" / "deep" / "cat_inside-dog-folder.JpG", fmt="JPEG")
    write_rgb(tmp_path / "cat" / "dog_inside-cat-folder.jpeg", fmt="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "cat_x.gif").write_bytes(b"GIF89a")  # not an extension the seed reads

    ds = ImageFolderDataset(tmp_path, 16)

    assert len(ds) == 3
    assert ds.class_map.names == ["cat", "dog"]
    declared = {p.name: ds.class_map.names[y] for p, y in zip(ds.paths, ds.labels)}
    assert declared == {
        "cat_top.PNG": "cat",
        "cat_inside-dog-folder.JpG": "cat",
        "dog_inside-cat-folder.jpeg": "dog",
    }
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)


def test_class_map_sorted_and_saved_with_the_run(tmp_path):
    for name in ("zeta_1.png", "alpha_1.png", "mid_1.png", "alpha_2.png"):
        write_rgb(tmp_path / "data" / name)
    ds = ImageFolderDataset(tmp_path / "data", 8)
    assert ds.class_map.names == ["alpha", "mid", "zeta"]
    assert sorted(ds.labels) == [0, 0, 1, 2]

    saved = ds.class_map.save(tmp_path / "run" / "class_map.json")
    assert json.loads(saved.read_text())["names"] == ["alpha", "mid", "zeta"]
    assert list((tmp_path / "run").iterdir()) == [saved]  # the temp file was renamed, not left
    assert ClassMap.load(saved) == ds.class_map

    # A later stage passes the saved map: indices follow it even when a class is absent here.
    write_rgb(tmp_path / "later" / "zeta_9.png")
    later = ImageFolderDataset(tmp_path / "later", 8, class_map=ClassMap.load(saved))
    assert later.labels == [2]


def test_unconditional_needs_no_prefix(tmp_path):
    write_rgb(tmp_path / "scan001.png")
    write_rgb(tmp_path / "a_b.png")
    ds = ImageFolderDataset(tmp_path, 8, class_cond=False)
    assert ds.labels == [0, 0] and len(ds.class_map) == 0


def test_file_without_prefix_names_the_file(tmp_path):
    write_rgb(tmp_path / "cat_1.png")
    write_rgb(tmp_path / "sub" / "noprefix.png")
    with pytest.raises(DataError, match=r"noprefix\.png.*CLASS_anything.*--class_cond False"):
        ImageFolderDataset(tmp_path, 8)


def test_unknown_class_against_given_map_names_file_and_class(tmp_path):
    write_rgb(tmp_path / "cat_1.png")
    write_rgb(tmp_path / "horse_7.png")
    with pytest.raises(DataError, match=r"horse_7\.png.*'horse'.*known classes: cat, dog"):
        ImageFolderDataset(tmp_path, 8, class_map=ClassMap(["cat", "dog"]))


def test_manifest_overrides_prefix(tmp_path):
    write_rgb(tmp_path / "sample_0001.png")
    write_rgb(tmp_path / "sample_0002.png")
    write_rgb(tmp_path / "dog_0003.png")  # not in the manifest: keeps its prefix
    (tmp_path / "manifest.csv").write_text("ID,class\nsample_0001.png,cat\nsample_0002.png,bird\n")
    ds = ImageFolderDataset(tmp_path, 8)
    assert ds.class_map.names == ["bird", "cat", "dog"]
    assert {p.name: ds.class_map.names[y] for p, y in zip(ds.paths, ds.labels)} == {
        "sample_0001.png": "cat",
        "sample_0002.png": "bird",
        "dog_0003.png": "dog",
    }


def test_manifest_class_with_underscore_names_the_file(tmp_path):
    write_rgb(tmp_path / "x1.png")
    (tmp_path / "manifest.csv").write_text("ID,class\nx1.png,band_neutrophil\n")
    with pytest.raises(DataError, match=r"x1\.png.*'band_neutrophil'.*'_'"):
        ImageFolderDataset(tmp_path, 8)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_folder(tmp_path, make):
    root = tmp_path / "data"
    if make == "empty":
        root.mkdir()
        (root / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=str(root)):
        ImageFolderDataset(root, 8)


# --------------------------------------------------------------------------------------------
# Bad files


@pytest.fixture
def folder_with_bad_files(tmp_path) -> Path:
    root = tmp_path / "data"
    for i in range(3):
        write_rgb(root / f"cat_good{i}.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    good_jpeg = root / "tmp.jpg"
    Image.fromarray(noise).save(good_jpeg, quality=95)
    data = good_jpeg.read_bytes()
    good_jpeg.unlink()
    (root / "cat_truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "cat_text.png").write_text("this is not a PNG\n")
    (root / "cat_zero.jpg").write_bytes(b"")
    return root


def test_bad_file_error_names_file_and_fix(folder_with_bad_files):
    with pytest.raises(DataError) as err:
        ImageFolderDataset(folder_with_bad_files, 16)
    message = str(err.value)
    # Files are decoded in sorted order: cat_good* < cat_text < cat_truncated < cat_zero.
    assert "cat_text.png" in message and "--skip_bad_images True" in message


def test_each_bad_file_kind_is_detected(folder_with_bad_files):
    for name in ("cat_truncated.jpg", "cat_text.png", "cat_zero.jpg"):
        with pytest.raises(DataError, match=name):
            load_image(folder_with_bad_files / name, 16)


def test_skip_bad_images_counts_and_warns(folder_with_bad_files, caplog):
    with caplog.at_level(logging.WARNING, logger="clinalign.data.folder"):
        ds = ImageFolderDataset(folder_with_bad_files, 16, skip_bad_images=True)
    assert len(ds) == 3
    assert ds.n_skipped == 3
    assert sorted(p.name for p in ds.skipped) == ["cat_text.png", "cat_truncated.jpg", "cat_zero.jpg"]
    assert all(p.name.startswith("cat_good") for p in ds.paths)
    assert any("skipped 3" in r.getMessage() for r in caplog.records)


def test_all_bad_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "cat_a.png").write_text("x")
    with pytest.raises(DataError, match="none of the 1 images"):
        ImageFolderDataset(tmp_path, 8, skip_bad_images=True)


# --------------------------------------------------------------------------------------------
# Geometry


def test_center_crop_of_landscape_keeps_the_centre(tmp_path):
    # 200x100: the middle 100x100 survives; the side bands must be cut away, the marker kept.
    img = np.full((100, 200, 3), 255, np.uint8)
    img[:, :40] = (255, 0, 0)
    img[:, 160:] = (0, 0, 255)
    img[40:60, 90:110] = 0  # marker at the centre
    path = save_png(img, tmp_path / "x_land.png")
    out = load_image(path, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[16, 16].max() < 40  # the marker
    assert (out[:, :, 1] > 200).mean() > 0.8  # mostly white: no red/blue band inside the crop
    assert out[0, 0].tolist() == out[0, -1].tolist() == [255, 255, 255]


def test_center_crop_of_portrait_keeps_the_centre(tmp_path):
    img = np.full((300, 120, 3), 255, np.uint8)
    img[:60] = (0, 255, 0)
    img[240:] = (0, 255, 0)
    img[140:160, 50:70] = 0
    out = load_image(save_png(img, tmp_path / "x_port.png"), 24)
    assert out.shape == (24, 24, 3)
    assert out[12, 12].max() < 60
    assert out[0, 12].tolist() == [255, 255, 255] and out[-1, 12].tolist() == [255, 255, 255]


def test_upscaling_small_image(tmp_path):
    path = write_rgb(tmp_path / "x_small.png", (10, 20, 30), size=(12, 9))
    out = load_image(path, 27)
    assert out.shape == (27, 27, 3)
    assert np.abs(out.astype(int) - [10, 20, 30]).max() <= 1


def test_real_pbc_originals_are_cropped_to_size():
    raw = SHARED / "pbc_raw_sample"
    if not raw.is_dir():
        pytest.skip("shared PBC sample not present")
    ds = ImageFolderDataset(raw, 64)
    assert ds.images.shape == (len(ds), 64, 64, 3)
    assert len(ds.class_map) == 8


# --------------------------------------------------------------------------------------------
# Modes and channels


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((20, 20, 4), np.uint8)
    arr[..., 0] = 255  # red ...
    arr[:10, :, 3] = 255  # ... opaque in the top half, fully transparent below
    path = save_png(arr, tmp_path / "x_rgba.png")
    assert image_channels(path) == 3
    out = load_image(path, 20)
    assert out[2, 10].tolist() == [255, 0, 0]
    assert out[17, 10].tolist() == [255, 255, 255]


def test_palette_image(tmp_path):
    rgb = Image.new("RGB", (20, 20), (10, 120, 240))
    path = tmp_path / "x_pal.png"
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    assert mode_of(path) == "P"
    out = load_image(path, 20)
    assert out.shape == (20, 20, 3)
    assert np.abs(out[5, 5].astype(int) - [10, 120, 240]).max() <= 4


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 10, 5))
    path = tmp_path / "x_ptrans.png"
    img.save(path, transparency=0)  # palette entry 0 (black) is transparent
    out = load_image(path, 10)
    assert out[2, 2].tolist() == [200, 0, 0]
    assert out[8, 2].tolist() == [255, 255, 255]


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = np.zeros((8, 24), np.uint16)
    arr[:, 8:16] = 128 * 257  # mid grey in 16 bits
    arr[:, 16:] = 65535
    path = tmp_path / "x_16.png"
    Image.fromarray(arr).save(path)
    assert mode_of(path).startswith("I")
    assert image_channels(path) == 1
    out = load_image(path, 8)[..., 0]  # 8x24 -> crop the middle 8x8
    assert out.shape == (8, 8) and (out == 128).all()
    full = pixels_of(path)
    from clinalign.data.transforms import _wide_gray_to_uint8

    assert _wide_gray_to_uint8(full)[0].tolist() == [0] * 8 + [128] * 8 + [255] * 8


def test_32bit_int_and_float_grayscale(tmp_path):
    from clinalign.data.transforms import to_8bit

    signed = Image.fromarray(np.array([[-100, 0, 300]], np.int32), mode="I")
    assert np.asarray(to_8bit(signed)).tolist() == [[0, 64, 255]]  # no declared range: stretched
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), mode="F")
    assert np.asarray(to_8bit(unit)).tolist() == [[0, 128, 255]]


def test_la_image_is_gray_on_white(tmp_path):
    arr = np.zeros((10, 10, 2), np.uint8)
    arr[..., 0] = 50
    arr[:5, :, 1] = 255
    path = tmp_path / "x_la.png"
    Image.fromarray(arr, mode="LA").save(path)
    assert image_channels(path) == 1
    out = load_image(path, 10)
    assert out.shape == (10, 10, 1)
    assert out[2, 2, 0] == 50 and out[8, 2, 0] == 255


def test_grayscale_folder_stays_single_channel_unless_rgb(tmp_path):
    write_gray(tmp_path / "xray_1.png", 10)
    write_gray(tmp_path / "ct_1.png", 250)
    ds = ImageFolderDataset(tmp_path, 8)
    assert ds.channels == 1 and ds[0][0].shape == (1, 8, 8)
    rgb = ImageFolderDataset(tmp_path, 8, rgb=True)
    assert rgb.channels == 3
    x = rgb[0][0]
    assert x.shape == (3, 8, 8) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.equal(x[0], ds[0][0][0])


def test_mixed_gray_and_colour_folder_is_rgb(tmp_path):
    write_gray(tmp_path / "a_gray.png", 77)
    write_rgb(tmp_path / "b_colour.png", (1, 2, 3))
    ds = ImageFolderDataset(tmp_path, 8)
    assert ds.channels == 3 and ds.images.shape == (2, 8, 8, 3)
    assert (ds.images[0] == 77).all()  # the gray image was replicated into 3 channels


def test_cache_off_gives_the_same_tensors(tmp_path):
    write_gray(tmp_path / "a_1.png", 10, size=(30, 50))
    write_rgb(tmp_path / "b_1.jpg", (40, 90, 200))
    cached = ImageFolderDataset(tmp_path, 16)
    lazy = ImageFolderDataset(tmp_path, 16, cache=False)
    assert lazy.images is None and lazy.channels == 3
    for i in range(2):
        assert torch.equal(cached[i][0], lazy[i][0]) and cached[i][1] == lazy[i][1]


# --------------------------------------------------------------------------------------------
# Pixel range


def test_value_range_is_exactly_minus_one_to_one(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[:, 2:] = 255
    t = to_tensor(arr)
    assert t.dtype == torch.float32 and t.shape == (3, 4, 4)
    assert t.min().item() == -1.0 and t.max().item() == 1.0
    ds = ImageFolderDataset(save_png(arr, tmp_path / "d" / "x_1.png").parent, 4)
    assert ds[0][0].min().item() == -1.0 and ds[0][0].max().item() == 1.0


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 3]))))
def test_to_tensor_to_uint8_round_trip(arr):
    t = to_tensor(arr)
    assert t.min() >= -1.0 and t.max() <= 1.0
    assert np.array_equal(to_uint8(t), arr)
    assert np.array_equal(to_uint8(t[None])[0], arr)  # batched NCHW -> NHWC


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=3, max_size=3))
def test_to_uint8_clips_out_of_range(values):
    out = to_uint8(torch.tensor(values).view(3, 1, 1))
    expected = np.clip(np.round((np.clip(values, -1, 1) + 1) * 127.5), 0, 255)
    assert out.shape == (1, 1, 3) and np.abs(out[0, 0].astype(int) - expected).max() <= 1


def test_save_png_is_atomic_and_lossless(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = save_png(arr, tmp_path / "deep" / "x.png")
    assert np.array_equal(pixels_of(path), arr)
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]
    gray = save_png(arr[..., :1], tmp_path / "g.png")
    assert mode_of(gray) == "L"


# --------------------------------------------------------------------------------------------
# ClassMap


def test_class_map_basics():
    cm = ClassMap.from_labels(["b", "a", "b", "c"])
    assert cm.names == ["a", "b", "c"] and len(cm) == 3
    assert cm.index("c") == 2 and cm.indices(["c", "a"]) == [2, 0]
    assert "a" in cm and "z" not in cm
    assert cm.parents == {"a": None, "b": None, "c": None}
    assert ClassMap.from_dict(cm.to_dict()) == cm


def test_class_map_unknown_class_message():
    cm = ClassMap(["lymphocyte", "neutrophil"])
    with pytest.raises(DataError) as err:
        cm.index("blast")
    message = str(err.value)
    assert "'blast'" in message and "lymphocyte, neutrophil" in message and "grow" in message


def test_class_map_grow_appends_and_keeps_indices():
    cm = ClassMap.from_labels(["neutrophil", "basophil", "lymphocyte"])
    before = {name: cm.index(name) for name in cm.names}
    grown = cm.grow("neutrophil-band", parent="neutrophil").grow("neutrophil-seg", "neutrophil")
    grown = grown.grow("atypical-lymphocyte", "lymphocyte")  # sorts first, still goes last
    assert grown.names[:3] == cm.names
    assert grown.names[3:] == ["neutrophil-band", "neutrophil-seg", "atypical-lymphocyte"]
    assert all(grown.index(name) == i for name, i in before.items())
    assert grown.parents["neutrophil-band"] == "neutrophil" and grown.parents["basophil"] is None
    assert grown.children("neutrophil") == ["neutrophil-band", "neutrophil-seg"]
    assert len(cm) == 3  # the original is untouched
    assert ClassMap.from_dict(json.loads(json.dumps(grown.to_dict()))) == grown


@pytest.mark.parametrize(
    "name, parent, pattern",
    [
        ("band_neutrophil", "neutrophil", "'_'"),
        ("neutrophil-band", "eosinophil", "parent class 'eosinophil'"),
        ("neutrophil", None, "already in the class map"),
        ("", None, "empty"),
        ("a/b", None, "'/'"),
    ],
)
def test_class_map_grow_rejects(name, parent, pattern):
    with pytest.raises(DataError, match=pattern):
        ClassMap(["neutrophil"]).grow(name, parent)


def test_class_map_validation():
    with pytest.raises(DataError, match="'_'"):
        ClassMap(["a_b"])
    with pytest.raises(DataError, match="twice"):
        ClassMap(["a", "a"])
    with pytest.raises(DataError, match="not one of the classes"):
        ClassMap(["a"], {"a": "b"})


def test_class_map_load_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ClassMap.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        ClassMap.load(bad)
    bad.write_text('{"names": ["x_y"]}')
    with pytest.raises(DataError, match="bad.json.*'_'"):
        ClassMap.load(bad)


# --------------------------------------------------------------------------------------------
# Batches


def _numbered_dataset(n: int, hflip: bool = False) -> ImageArrayDataset:
    """Image i has pixel value i at (0, 0) and 255 at (0, 1): index and flip are readable back."""
    images = np.zeros((n, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    images[:, 0, 1, 0] = 255
    return ImageArrayDataset(images, [i % 3 for i in range(n)], hflip=hflip)


def _take(gen, k):
    return [tuple(t.clone() for t in batch) for batch in itertools.islice(gen, k)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(all(torch.equal(u, v) for u, v in zip(x, y)) for x, y in zip(a, b))


def test_batches_are_deterministic_by_seed():
    ds = _numbered_dataset(10)
    a = _take(infinite_batches(ds, 4, seed=3), 6)
    b = _take(infinite_batches(ds, 4, seed=3), 6)
    c = _take(infinite_batches(ds, 4, seed=4), 6)
    assert _same(a, b) and not _same(a, c)
    x, y = a[0]
    assert x.shape == (4, 1, 2, 2) and y.dtype == torch.int64
    index = to_uint8(x)[:, 0, 0, 0].astype(int)
    assert y.tolist() == [i % 3 for i in index]  # labels travel with their images


def test_each_epoch_is_a_reshuffled_pass():
    ds = _numbered_dataset(12)
    batches = _take(infinite_batches(ds, 4, seed=0, with_indices=True), 6)
    epoch0 = torch.cat([b[2] for b in batches[:3]]).tolist()
    epoch1 = torch.cat([b[2] for b in batches[3:]]).tolist()
    assert sorted(epoch0) == sorted(epoch1) == list(range(12))
    assert epoch0 != epoch1


@pytest.mark.parametrize("start", [0, 1, 2, 5, 7])
def test_resume_gives_the_batches_of_an_uninterrupted_run(start):
    ds = _numbered_dataset(10, hflip=True)  # 2 steps per epoch with drop_last: resumes cross epochs
    full = _take(infinite_batches(ds, 4, seed=11, with_indices=True), 10)
    resumed = _take(infinite_batches(ds, 4, seed=11, start_step=start, with_indices=True), 10 - start)
    assert _same(full[start:], resumed)


def test_hflip_flips_about_half_deterministically():
    ds = _numbered_dataset(64, hflip=True)
    ((x, _),) = _take(infinite_batches(ds, 64, seed=0), 1)
    flipped = (to_uint8(x)[:, 0, 0, 0] == 255).mean()
    assert 0.25 < flipped < 0.75


def test_two_ranks_get_disjoint_shards_every_epoch():
    ds = _numbered_dataset(21)
    per_rank = [_take(infinite_batches(ds, 5, seed=2, rank=r, world_size=2, with_indices=True), 4) for r in (0, 1)]
    for epoch in range(2):  # 10 items per rank -> 2 steps per epoch
        seen = [torch.cat([b[2] for b in batches[2 * epoch : 2 * epoch + 2]]).tolist() for batches in per_rank]
        assert len(seen[0]) == len(seen[1]) == 10
        assert not set(seen[0]) & set(seen[1])
    first = torch.cat([b[2] for b in per_rank[0][:2]]).tolist()
    second = torch.cat([b[2] for b in per_rank[0][2:4]]).tolist()
    assert first != second


def test_torch_distributed_sampler_is_accepted():
    ds = _numbered_dataset(8)
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=5)
    batches = _take(infinite_batches(ds, 2, sampler=sampler, with_indices=True), 4)
    assert sampler.epoch == 1  # infinite_batches moved it on for the second epoch
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        got = torch.cat([b[2] for b in batches[2 * epoch : 2 * epoch + 2]]).tolist()
        assert got == list(sampler)


def test_drop_last_false_yields_the_remainder_and_small_data_is_an_error():
    ds = _numbered_dataset(5)
    sizes = [len(b[1]) for b in _take(infinite_batches(ds, 2, drop_last=False), 6)]
    assert sizes == [2, 2, 1, 2, 2, 1]
    with pytest.raises(DataError, match="--batch_size 8"):
        next(infinite_batches(ds, 8))


def test_folder_dataset_feeds_batches(tmp_path):
    for i, color in enumerate([(0, 0, 0), (255, 255, 255), (128, 0, 0)]):
        write_rgb(tmp_path / f"c{i}_img.png", color)
    ds = ImageFolderDataset(tmp_path, 8)
    x, y = next(infinite_batches(ds, 3, seed=0))
    assert x.shape == (3, 3, 8, 8) and sorted(y.tolist()) == [0, 1, 2]


def test_real_pbc64_split_loads_when_present():
    val = SHARED / "pbc_64" / "val"
    if not val.is_dir():
        pytest.skip("shared PBC 64px data not present")
    ds = ImageFolderDataset(val, 64)
    assert ds.channels == 3 and len(ds.class_map) == 8 and ds.n_skipped == 0
    assert ds.images.shape[1:] == (64, 64, 3)
