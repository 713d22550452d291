"""Small versions of bench/review_load.py: a real uvicorn server, concurrent reviewers, and a
SIGKILL mid-load; every acknowledged verdict must be stored exactly once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "review_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("review_load_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kill", [False, True], ids=["load", "kill"])
def test_no_verdict_lost_or_duplicated(db_url, tmp_path, kill):
    bench = load_bench()
    result = bench.run(reviewers=4, verdicts=200, per_image=2, kill=kill, db_url=db_url, workdir=tmp_path, timeout=90)
    assert result["acknowledged"] == 200
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["unexpected"] == 0
    assert result["stored"] == 200
    if kill:
        assert len(result["kills"]) == 1
    assert result["ok"], result
