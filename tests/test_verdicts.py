"""``clinalign verdicts import``: a spreadsheet of verdicts -> CLASS/align|notalign + judgements.csv."""

from __future__ import annotations

import csv

import pytest

from clinalign.cli import main
from clinalign.data.layouts import read_feedback_folder
from clinalign.data.toy import generate
from clinalign.data.verdicts import import_verdicts, parse_verdict
from clinalign.errors import DataError


@pytest.fixture()
def samples(tmp_path):
    out = tmp_path / "samples"
    generate(out, classes=2, per_class=3, size=8, seed=0)  # lymphocyte_*, neutrophil_*
    return out


def _ids(samples):
    return sorted(p.name for p in samples.iterdir())


def _sheet(path, rows, header=("ID", "class", "verdict", "reviewer", "reasons")):
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_every_verdict_word_is_understood():
    for word in ("plausible", "1", "YES", " align "):
        assert parse_verdict(word) is True
    for word in ("Implausible", "0", "no", "notalign"):
        assert parse_verdict(word) is False
    assert parse_verdict("maybe") is None


def test_majority_of_reviewers_decides_ties_are_excluded_and_reported(samples, tmp_path):
    lym, neu = [i for i in _ids(samples) if i.startswith("lymphocyte")], [i for i in _ids(samples) if "neutro" in i]
    rows = [
        (lym[0], "lymphocyte", "plausible", "ada", ""),
        (lym[0], "lymphocyte", "no", "bo", "nucleus"),
        (lym[0], "lymphocyte", "yes", "cy", ""),  # 2 of 3: align
        (lym[1], "lymphocyte", "0", "ada", "texture"),
        (lym[1], "lymphocyte", "notalign", "bo", "colour"),  # notalign
        (neu[0], "neutrophil", "align", "ada", ""),
        (neu[0], "neutrophil", "implausible", "bo", ""),  # 1:1 tie -> excluded
        (neu[1], "neutrophil", "1", "ada", ""),
    ]
    out = tmp_path / "judged"
    result = import_verdicts(_sheet(tmp_path / "v.csv", rows), samples, out)
    assert result.ties == [neu[0]] and result.unjudged == 2 and result.votes == 8
    assert result.counts == {"lymphocyte": {"align": 1, "notalign": 1}, "neutrophil": {"align": 1, "notalign": 0}}
    assert sorted(p.name for p in (out / "lymphocyte" / "align").iterdir()) == [lym[0]]
    assert (out / "lymphocyte" / "notalign" / lym[1]).read_bytes() == (samples / lym[1]).read_bytes()
    assert not any(out.rglob(neu[0]))
    judged = read_feedback_folder(out, 8)  # what reward train reads
    assert sorted(zip(judged.classes, judged.plausible.tolist())) == [
        ("lymphocyte", 0),
        ("lymphocyte", 1),
        ("neutrophil", 1),
    ]
    table = {r["ID"]: r for r in csv.DictReader((out / "judgements.csv").open())}
    assert table[lym[0]]["plausible"] == "1" and table[lym[0]]["plausible_votes"] == "2"
    assert table[lym[1]]["reasons"] == "texture | colour" and table[lym[1]]["reviewers"] == "ada;bo"
    assert [r["ID"] for r in csv.DictReader((out / "excluded.csv").open())] == [neu[0]]


def test_a_sheet_without_reviewers_counts_each_row_as_a_vote(samples, tmp_path):
    (lym, *_) = _ids(samples)
    rows = [(lym, "lymphocyte", "no"), (lym, "lymphocyte", "no"), (lym, "lymphocyte", "yes")]
    sheet = _sheet(tmp_path / "v.csv", rows, header=("image ID", "Class", "Verdict"))
    result = import_verdicts(sheet, samples, tmp_path / "out")
    assert result.counts == {"lymphocyte": {"align": 0, "notalign": 1}}


def test_every_problem_in_the_sheet_is_reported_with_its_row_and_nothing_is_written(samples, tmp_path):
    lym = _ids(samples)[0]
    rows = [
        (lym, "lymphocyte", "perhaps", "ada", ""),  # row 2: unknown word
        ("lymphocyte_999999.png", "lymphocyte", "yes", "ada", ""),  # row 3: not a sample
        (lym, "neutrophil", "yes", "bo", ""),  # row 4: declared lymphocyte
        (lym, "lymphocyte", "yes", "cy", ""),
        (lym, "lymphocyte", "no", "cy", ""),  # rows 5 and 6: cy twice
    ]
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        import_verdicts(_sheet(tmp_path / "v.csv", rows), samples, out)
    text = str(err.value)
    assert "v.csv" in text and "nothing was written" in text
    assert "1 unknown verdict (row 2: 'perhaps')" in text
    assert "1 unknown ID (row 3: 'lymphocyte_999999.png')" in text
    assert "1 class mismatch (row 4:" in text and "'neutrophil' in the sheet, 'lymphocyte' in the samples" in text
    assert f"cy judged {lym} on rows [5, 6]" in text
    assert not out.exists()


def test_missing_columns_and_a_non_empty_out(samples, tmp_path):
    with pytest.raises(DataError, match=r"missing column\(s\) verdict \(found: ID, class, score\)"):
        import_verdicts(_sheet(tmp_path / "v.csv", [], header=("ID", "class", "score")), samples, tmp_path / "o")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DataError, match="not empty"):
        import_verdicts(_sheet(tmp_path / "w.csv", []), samples, tmp_path / "full")


def test_cli(samples, tmp_path, capsys):
    lym = _ids(samples)[0]
    sheet = _sheet(tmp_path / "v.csv", [(lym, "lymphocyte", "yes", "ada", "")])
    out = tmp_path / "judged"
    assert main(["verdicts", "import", str(sheet), "--samples", str(samples), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote 1 judged images from 1 verdicts" in text and "5 sample(s)" in text
    assert (out / "lymphocyte" / "align" / lym).exists() and (out / "judgements.csv").exists()
    assert main(["verdicts", "import", str(sheet), "--samples", str(samples), "--out", str(out)]) == 2
