"""Real pools G, E, O: disjoint, stratified, reproducible, recorded; judges that never see G."""

from __future__ import annotations

import json

import pytest

from clinalign.data.naming import declared_classes, list_images
from clinalign.data.pools import POOLS_FILE, split_pools, write_pools, write_toy_pools
from clinalign.data.toy import generate
from clinalign.errors import DataError


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    generate(out, classes=3, per_class=30, size=16, seed=0)
    return out


def test_g_is_stratified_reproducible_and_seeded(train):
    a, b, c = split_pools(train, 8, seed=0), split_pools(train, 8, seed=0), split_pools(train, 8, seed=1)
    assert sorted(declared_classes(a.G)) == sorted(["eosinophil", "lymphocyte", "neutrophil"] * 8)
    assert a.G == b.G and a.E == b.E and a.O == b.O
    assert {p.name for p in a.G} != {p.name for p in c.G}
    assert len(a.G) + len(a.E) + len(a.O) == 90
    a.check_disjoint()


def test_pools_are_written_disjoint_and_recorded(train, tmp_path):
    pools = split_pools(train, 8, seed=0)
    folders = write_pools(pools, tmp_path / "pools")
    names = {k: {p.name for p in list_images(f)} for k, f in folders.items()}
    assert not (names["G"] & names["E"] or names["G"] & names["O"] or names["E"] & names["O"])
    record = json.loads((tmp_path / "pools" / POOLS_FILE).read_text())
    assert record["per_class"] == 8 and record["G"]["n"] == 24
    assert {k: record[k]["n"] for k in ("G", "E", "O")} == {k: len(v) for k, v in names.items()}
    assert len({record[k]["fingerprint"] for k in ("G", "E", "O")}) == 3
    assert write_pools(pools, tmp_path / "pools") == folders  # the same pools are reused
    with pytest.raises(DataError, match="other data or settings"):
        write_pools(split_pools(train, 9, seed=0), tmp_path / "pools")


def test_a_shared_image_is_caught(train):
    pools = split_pools(train, 8, seed=0)
    pools.E.append(pools.G[0])
    with pytest.raises(AssertionError, match="G and E share 1"):
        pools.check_disjoint()


def test_real_per_class_above_a_class_count_names_the_class(train):
    with pytest.raises(DataError, match=r"real_per_class 30 .*eosinophil has 30"):
        split_pools(train, 30)


def test_toy_pools_are_fresh_cells_with_distinct_ids(tmp_path):
    folders = write_toy_pools(
        tmp_path / "toy", classes=2, per_class=3, expert_per_class=5, oracle_per_class=4, test_per_class=2, size=16
    )
    names = {k: {p.name for p in list_images(f)} for k, f in folders.items()}
    assert {k: len(v) for k, v in names.items()} == {"G": 6, "E": 10, "O": 8, "test": 4}
    assert len(set().union(*names.values())) == 28


def test_toy_label_noise_puts_other_classes_cells_in_g_only_and_is_recorded(tmp_path):
    from collections import Counter

    from clinalign.data.toy import subtype_of

    root = tmp_path / "toy"
    kwargs = dict(classes=3, per_class=8, expert_per_class=4, oracle_per_class=4, test_per_class=2, size=16)
    folders = write_toy_pools(root, **kwargs, label_noise=0.25)
    g = list_images(folders["G"])
    assert Counter(declared_classes(g)) == {"eosinophil": 8, "lymphocyte": 8, "neutrophil": 8}  # as many per class
    wrong = [p for p in g if p.stem.endswith("_gx")]
    assert Counter(declared_classes(wrong)) == {"eosinophil": 2, "lymphocyte": 2, "neutrophil": 2}
    for p in wrong:  # the cell drawn is another class's, named in the subtype token
        assert subtype_of(p).lower() != declared_classes([p])[0]
    for pool in ("E", "O", "test"):  # the expert and the oracle learnt from clean cells
        assert not [p for p in list_images(folders[pool]) if "_gx" in p.name]
    summary = json.loads((root / POOLS_FILE).read_text())
    assert summary["label_noise"] == 0.25 and summary["mislabelled_per_class"] == 2
    assert write_toy_pools(root, **kwargs, label_noise=0.25) == folders  # reused
    with pytest.raises(DataError, match=r"label noise 0.25, not 0.0: give a new output folder"):
        write_toy_pools(root, **kwargs)
    # the clean cells are the clean pools' own: the same seed draws the same first cells
    clean = write_toy_pools(tmp_path / "clean", **kwargs)
    g_clean = {p.name: p.read_bytes() for p in list_images(clean["G"])}
    assert all(g_clean[p.name] == p.read_bytes() for p in g if not p.stem.endswith("_gx"))


def test_real_label_noise_renames_a_share_of_g_per_class_and_leaves_e_and_o_alone(train, tmp_path):
    from collections import Counter

    from clinalign.data.toy import subtype_of

    clean, noisy = split_pools(train, 8, seed=0), split_pools(train, 8, seed=0, label_noise=0.25)
    assert noisy.G == clean.G and noisy.E == clean.E and noisy.O == clean.O  # the same files
    folders = write_pools(noisy, tmp_path / "pools")
    g = list_images(folders["G"])
    classes = declared_classes(g)
    assert Counter(classes) == {"eosinophil": 8, "lymphocyte": 8, "neutrophil": 8}  # as many per class
    # the original name follows the new class: its own class is the subtype token
    wrong = [(p, c) for p, c in zip(g, classes) if subtype_of(p) in Counter(classes) and subtype_of(p) != c]
    assert Counter(c for _, c in wrong) == {"eosinophil": 2, "lymphocyte": 2, "neutrophil": 2}
    assert all((train / p.name.split("_", 1)[1]).exists() for p, _ in wrong)
    record, before = json.loads((tmp_path / "pools" / POOLS_FILE).read_text()), clean.summary()
    assert record["label_noise"] == 0.25 and record["mislabelled_per_class"] == 2
    assert record["G"]["fingerprint"] != before["G"]["fingerprint"]
    assert (record["E"], record["O"]) == (before["E"], before["O"])  # the judges' pools are unchanged
    assert "label_noise" not in before
    with pytest.raises(DataError, match="other data or settings"):
        write_pools(clean, tmp_path / "pools")
    with pytest.raises(DataError, match=r"--label_noise must be in \[0, 1\), got 1.0"):
        split_pools(train, 8, label_noise=1.0)
