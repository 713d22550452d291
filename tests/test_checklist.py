"""The clinical checklist (evaluate/checklist.py): real cells pass, what a haematologist rejects fails."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from clinalign.data.toy import toy_arrays, toy_class_map
from clinalign.errors import DataError
from clinalign.evaluate.checklist import CRITERIA, Checklist

NAMES = toy_class_map(4).names


@pytest.fixture(scope="module")
def checklist() -> Checklist:
    x, y, _ = toy_arrays(4, 150, 32, seed=0)
    return Checklist.calibrate(x, [NAMES[i] for i in y], quantile=0.01)


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    x, y, _ = toy_arrays(4, 60, 32, seed=7)  # cells the calibration never saw
    return x, np.asarray([NAMES[i] for i in y])


def test_held_out_real_cells_pass_about_as_often_as_the_calibration_set(checklist, held_out):
    x, classes = held_out
    summary = checklist.judge(x, list(classes)).summary()
    assert summary["all"] >= 0.8, summary
    assert all(summary["per_class"][c]["all"] >= 0.7 for c in NAMES), summary["per_class"]
    assert abs(summary["all"] - checklist.real_pass["all"]) < 0.1


def test_a_lymphocyte_declared_a_neutrophil_fails(checklist, held_out):
    x, classes = held_out
    lymphocytes = x[classes == "lymphocyte"]
    verdict = checklist.judge(lymphocytes, ["neutrophil"] * len(lymphocytes))
    assert verdict.plausible.mean() <= 0.05
    # ... and the same cells pass as what they are.
    assert checklist.judge(lymphocytes, ["lymphocyte"] * len(lymphocytes)).plausible.mean() >= 0.7


def test_an_eosinophil_smoothed_of_its_granules_fails_on_the_granules(checklist, held_out):
    """The fine detail likelihood training smooths away is what the checklist checks."""
    x, classes = held_out
    eos = x[classes == "eosinophil"]
    smooth = np.stack([ndi.gaussian_filter(im.astype(float), sigma=(1.0, 1.0, 0)) for im in eos])
    verdict = checklist.judge(smooth.clip(0, 255).astype(np.uint8), ["eosinophil"] * len(eos))
    granules = verdict.passed[:, CRITERIA.index("granules")]
    assert granules.mean() <= 0.3 and verdict.plausible.mean() <= 0.3
    assert checklist.judge(eos, ["eosinophil"] * len(eos)).plausible.mean() >= 0.7


def test_noise_and_unknown_classes_fail(checklist):
    noise = np.random.default_rng(0).integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    assert not checklist.judge(noise, [NAMES[i % 4] for i in range(40)]).plausible.any()
    x, _, _ = toy_arrays(4, 2, 32, seed=3)
    assert not checklist.judge(x, ["basophil"] * len(x)).plausible.any()  # never calibrated


def test_round_trip_and_version_check(checklist, held_out):
    x, classes = held_out
    again = Checklist.from_dict(checklist.to_dict())
    np.testing.assert_array_equal(again.judge(x, list(classes)).passed, checklist.judge(x, list(classes)).passed)
    bad = {**checklist.to_dict(), "criteria": ["cell_size"]}
    with pytest.raises(DataError, match="recalibrate"):
        Checklist.from_dict(bad)
    with pytest.raises(DataError, match="quantile"):
        Checklist.calibrate(x, list(classes), quantile=0.5)
