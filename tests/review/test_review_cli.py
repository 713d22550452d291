"""``clinalign review ...`` commands, batch loading, and the database setup."""

from __future__ import annotations

import json
import re

import pytest
from review_helpers import make_png, make_reference, make_samples
from sqlalchemy import func, select, text

from clinalign.cli import main
from clinalign.review.db import QC, REFERENCE, SAMPLE, Batch, Image, Slot, Store

LINK = re.compile(r"^http://lab\.example:9000/r/[A-Za-z0-9_-]{43}$")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["review", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_end_to_end(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    samples = make_samples(tmp_path / "samples", n=4)
    reference = make_reference(tmp_path / "ref")
    code, out, _ = run(
        capsys,
        "add-batch",
        "--db",
        db,
        "--samples",
        str(samples),
        "--reference",
        str(reference),
        "--per_image",
        "2",
        "--name",
        "week1",
        "--qc_share",
        "0.2",
    )
    assert code == 0
    assert "8 synthetic images" in out and "2 QC items" in out and "12 reference images" in out
    code, out, _ = run(capsys, "add-reviewer", "alice", "--db", db, "--base_url", "http://lab.example:9000")
    assert code == 0 and LINK.match(out.strip())
    code, out2, _ = run(
        capsys, "add-reviewer", "alice", "--db", db, "--base_url", "http://lab.example:9000", "--rotate"
    )
    assert code == 0 and out2 != out
    code, out, _ = run(capsys, "add-admin", "boss", "--db", db, "--base_url", "http://lab.example:9000")
    assert code == 0 and LINK.match(out.strip())
    code, out, _ = run(
        capsys,
        "add-concept",
        "--db",
        db,
        "--batch",
        "week1",
        "--name",
        "neutrophil-band",
        "--parent",
        "neutrophil",
    )
    assert code == 0 and "neutrophil-band" in out
    code, out, _ = run(capsys, "export", "--db", db, "--out", str(tmp_path / "fb"))
    assert code == 0 and json.loads(out)["excluded"] == {"no votes": 8}
    assert (tmp_path / "fb" / "votes.csv").is_file()
    code, out, _ = run(capsys, "stats", "--db", db)
    assert code == 0 and json.loads(out)["totals"]["required"] == 16
    code, out, _ = run(capsys, "export-labelstudio", "--db", db, "--out", str(tmp_path / "ls"))
    assert code == 0 and json.loads(out)["tasks"] == 8
    code, out, _ = run(
        capsys,
        "import-labelstudio",
        "--db",
        db,
        "--json",
        str(tmp_path / "ls" / "tasks.json"),
        "--batch",
        "week1",
    )
    assert code == 0 and json.loads(out)["matched"] == 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["add-reviewer", "alice"], "already exists; pass --rotate"),
        (["add-reviewer", "bad/name"], "name 'bad/name'"),
        (
            ["add-concept", "--batch", "b1", "--name", "neutrophil_band", "--parent", "neutrophil"],
            "never '_'",
        ),
        (["add-concept", "--batch", "b1", "--name", "x-y", "--parent", "blast"], "not a class of batch"),
        (
            ["add-concept", "--batch", "nope", "--name", "x-y", "--parent", "neutrophil"],
            "no batch named 'nope'",
        ),
        (["export", "--rule", "mode", "--out", "OUT"], "--rule 'mode'"),
        (["add-batch", "--samples", "SAMPLES", "--name", "b1"], "already exists"),
        (["add-batch", "--samples", "SAMPLES", "--name", "b2", "--per_image", "0"], "--per_image 0"),
        (["add-batch", "--samples", "SAMPLES", "--name", "b2", "--qc_share", "0.95"], "--qc_share"),
        (["add-batch", "--samples", "MISSING", "--name", "b2"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    samples = make_samples(tmp_path / "samples")
    assert main(["review", "add-batch", "--db", db, "--samples", str(samples), "--name", "b1"]) == 0
    assert main(["review", "add-reviewer", "alice", "--db", db]) == 0
    capsys.readouterr()
    argv = [
        a.replace("SAMPLES", str(samples))
        .replace("MISSING", str(tmp_path / "missing"))
        .replace("OUT", str(tmp_path / "o"))
        for a in argv
    ]
    code, _, err = run(capsys, *argv, "--db", db)
    assert code == 2
    assert err.startswith("clinalign: error:") and message in err and err.count("\n") == 1


def test_bad_database_urls(tmp_path, capsys):
    for db, message in [
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("mysql://x@y/z", "unsupported database"),
        (f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", "does not exist"),
    ]:
        code, _, err = run(capsys, "stats", "--db", db)
        assert code == 2 and message in err, (db, err)


def test_sqlite_is_durable_wal(tmp_path):
    store = Store(str(tmp_path / "plain-path.db"))  # a bare path means SQLite
    with store.write() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert s.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    store.dispose()


def test_add_batch_layouts_and_atomicity(tmp_path, store):
    from clinalign.errors import DataError
    from clinalign.review.ingest import add_batch

    # manifest.csv overrides the prefix; references in prefix layout.
    samples = make_samples(tmp_path / "s", classes=("neutrophil",), n=2)
    (samples / "manifest.csv").write_text("ID,class\nneutrophil_000001.png,monocyte\n")
    ref = tmp_path / "r"
    for i, cls in enumerate(["neutrophil", "monocyte", "neutrophil"]):
        make_png(ref / f"{cls}_{i}.png", (200, 100 + i, 120))
    summary = add_batch(store, samples, reference=ref, per_image=3, qc_share=0.5, strip=1)
    assert summary.classes == {"neutrophil": 1, "monocyte": 1} and summary.references == 2
    assert summary.qc == 2  # 50 % of the queue
    with store.read() as s:
        assert s.scalar(select(Batch.name)) == "s"
        assert s.scalar(select(func.count()).select_from(Slot)) == 3 * 4
        kinds = sorted(s.scalars(select(Image.kind)))
        assert kinds.count(SAMPLE) == 2 and kinds.count(QC) == 2 and kinds.count(REFERENCE) == 2

    # Errors leave nothing behind.
    broken = make_samples(tmp_path / "broken", n=1)
    (broken / "neutrophil_999999.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="neutrophil_999999.png: not a readable image"):
        add_batch(store, broken, name="broken")
    dup = make_samples(tmp_path / "dup" / "a", n=1)
    make_samples(tmp_path / "dup" / "b", n=1)
    with pytest.raises(DataError, match="same file name"):
        add_batch(store, dup.parent, name="dup")
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 1


def test_serve_knows_its_address_for_invite_links():
    from clinalign.review.cli import serve_base_url

    assert serve_base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert serve_base_url("review.lab", 80) == "http://review.lab:80"
    assert serve_base_url("::1", 8000) == "http://[::1]:8000"
    assert serve_base_url("0.0.0.0", 8000) is None  # every address: only --base_url can say which


def test_add_batch_names_every_file_without_a_class_prefix(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    samples = make_samples(tmp_path / "samples", n=1)
    make_png(samples / "cell001.png", (200, 100, 120))
    make_png(samples / "deep" / "cell002.png", (200, 110, 120))
    code, _, err = run(capsys, "add-batch", "--db", db, "--samples", str(samples))
    assert code == 2 and err.count("\n") == 1
    assert "2 of 4 images have no class prefix" in err and "cell001.png" in err and "cell002.png" in err
    assert "manifest.csv" in err and "CLASS_" in err
    assert "--class_cond" not in err  # a flag of other commands, not of add-batch


def test_add_batch_names_every_unreadable_file_with_the_count(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    samples = make_samples(tmp_path / "samples", n=2)
    (samples / "neutrophil_900000.png").write_bytes(b"not a png")
    (samples / "lymphocyte_900001.png").write_text("also not a png")
    code, _, err = run(capsys, "add-batch", "--db", db, "--samples", str(samples))
    assert code == 2 and err.count("\n") == 1
    assert "2 of 6 files are not readable PNG or JPEG images" in err
    assert "neutrophil_900000.png" in err and "lymphocyte_900001.png" in err
    assert "BytesIO" not in err and " at 0x" not in err


def test_role_mismatch_reads_well(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    assert main(["review", "add-admin", "boss", "--db", db]) == 0
    assert main(["review", "add-reviewer", "ada", "--db", db]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "add-reviewer", "boss", "--db", db, "--rotate")
    assert code == 2 and "'boss' is an admin, not a reviewer" in err
    code, _, err = run(capsys, "add-admin", "ada", "--db", db, "--rotate")
    assert code == 2 and "'ada' is a reviewer, not an admin" in err
