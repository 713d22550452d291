"""Your experts' verdicts from a spreadsheet -> the feedback layout every later stage reads.

The CSV (exported from a spreadsheet, a form, another reviewing tool) has one row per verdict:

    ID,class,verdict[,reviewer,reasons]

``ID`` is a sample's file name in ``--samples``, ``class`` its declared class (a check that the
sheet and the folder agree), ``verdict`` one of plausible/implausible, 1/0, yes/no,
align/notalign (any case). Several reviewers per image are combined by majority, as the review
app's export does; a tie is excluded and reported. The result is ``OUT/CLASS/align/*.png``,
``OUT/CLASS/notalign/*.png`` (copies, file names kept) and ``judgements.csv``; every problem in the
sheet is reported at once and nothing is written until the whole sheet is usable.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .layouts import write_feedback_folder
from .naming import check_unique_names, declared_classes, list_images

PLAUSIBLE_WORDS = frozenset({"plausible", "1", "yes", "align"})
IMPLAUSIBLE_WORDS = frozenset({"implausible", "0", "no", "notalign"})
JUDGEMENTS_FILE = "judgements.csv"
EXCLUDED_FILE = "excluded.csv"
# Header spellings a spreadsheet may use, after lower-casing and dropping spaces, '_' and '-'.
COLUMN_ALIASES = {
    "ID": ("id", "imageid", "image", "file", "filename"),
    "class": ("class",),
    "verdict": ("verdict",),
    "reviewer": ("reviewer",),
    "reasons": ("reasons", "reason"),
}
REQUIRED = ("ID", "class", "verdict")
_SHOWN = 10


@dataclass
class Vote:
    row: int  # line number in the CSV (the header is line 1), as a spreadsheet numbers rows
    plausible: bool
    reviewer: str = ""
    reasons: str = ""


@dataclass
class VerdictImport:
    out: Path
    counts: dict[str, dict[str, int]]  # class -> align/notalign -> images
    votes: int
    ties: list[str] = field(default_factory=list)  # IDs excluded because their votes were split evenly
    unjudged: int = 0  # samples without any verdict


def _columns(path: Path, header: list[str]) -> dict[str, str]:
    """Our column name -> the header's spelling of it."""
    normal = {h.lower().replace(" ", "").replace("_", "").replace("-", ""): h for h in header}
    found = {ours: normal[a] for ours, aliases in COLUMN_ALIASES.items() for a in aliases if a in normal}
    missing = [c for c in REQUIRED if c not in found]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'}); the first row "
            "must name the columns ID,class,verdict (optionally reviewer,reasons)"
        )
    return found


def parse_verdict(word: str) -> bool | None:
    word = word.strip().lower()
    return True if word in PLAUSIBLE_WORDS else False if word in IMPLAUSIBLE_WORDS else None


def _listed(problems: list[str]) -> str:
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return "; ".join(problems[:_SHOWN]) + more


def read_votes(path: str | Path, samples: dict[str, tuple[Path, str]]) -> dict[str, list[Vote]]:
    """ID -> its votes, checked against the samples; one DataError lists every bad row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets often write a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the verdicts CSV ({exc})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    col = _columns(path, [h.strip() for h in reader.fieldnames or []])
    reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
    votes: dict[str, list[Vote]] = {}
    problems: dict[str, list[str]] = {"unknown verdict": [], "unknown ID": [], "class mismatch": []}
    for row in reader:
        line, cell = reader.line_num, {ours: (row.get(theirs) or "").strip() for ours, theirs in col.items()}
        image_id, verdict = cell["ID"], parse_verdict(cell["verdict"])
        if verdict is None:
            problems["unknown verdict"].append(f"row {line}: {cell['verdict']!r}")
        if image_id not in samples:
            problems["unknown ID"].append(f"row {line}: {image_id!r}")
        elif cell["class"] != samples[image_id][1]:
            problems["class mismatch"].append(
                f"row {line}: {image_id} is {cell['class']!r} in the sheet, {samples[image_id][1]!r} in the samples"
            )
        if verdict is not None and image_id in samples:
            votes.setdefault(image_id, []).append(
                Vote(line, verdict, cell.get("reviewer", ""), cell.get("reasons", ""))
            )
    _raise_problems(path, problems, _repeated_reviewers(votes))
    if not votes:
        raise DataError(f"{path}: no verdicts below the header; add one row per verdict: ID,class,verdict")
    return votes


def _repeated_reviewers(votes: dict[str, list[Vote]]) -> list[str]:
    repeated = []
    for image_id, vs in votes.items():
        rows: dict[str, list[int]] = {}
        for v in vs:
            if v.reviewer:
                rows.setdefault(v.reviewer, []).append(v.row)
        repeated += [f"{who} judged {image_id} on rows {rs}" for who, rs in rows.items() if len(rs) > 1]
    return repeated


def _raise_problems(path: Path, problems: dict[str, list[str]], repeated: list[str]) -> None:
    fixes = {
        "unknown verdict": "use plausible/implausible, 1/0, yes/no or align/notalign",
        "unknown ID": "the ID is the sample's file name in --samples; fix the ID or pass the right --samples",
        "class mismatch": "the sheet's class must be the sample's declared class (its file-name prefix)",
        "reviewer twice": "keep one verdict per reviewer and image",
    }
    found = {**problems, "reviewer twice": repeated}
    lines = [f"{len(v)} {kind} ({_listed(v)}): {fixes[kind]}" for kind, v in found.items() if v]
    if lines:
        raise DataError(f"{path}: nothing was written; " + " | ".join(lines))


def decide(votes: list[Vote]) -> bool | None:
    """The majority verdict; None on a tie."""
    yes = sum(v.plausible for v in votes)
    no = len(votes) - yes
    return None if yes == no else yes > no


JUDGEMENT_COLUMNS = ["ID", "class", "plausible", "plausible_votes", "implausible_votes", "reviewers", "reasons"]
EXCLUDED_COLUMNS = ["ID", "class", "plausible_votes", "implausible_votes", "why"]


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def import_verdicts(csv_path: str | Path, samples_dir: str | Path, out: str | Path) -> VerdictImport:
    """Write ``out`` in the feedback layout from a verdicts CSV about the images in ``samples_dir``."""
    samples_dir = Path(samples_dir)
    out = Path(out)
    if out.exists() and (
        not out.is_dir() or any(out.iterdir())
    ):  # checked before reading, so a bad --out costs nothing
        raise DataError(f"{out}: already exists and is not empty; pass a new output folder")
    paths = list_images(samples_dir)
    check_unique_names(paths, "verdicts name images by file name; rename one of them")
    samples = {p.name: (p, c) for p, c in zip(paths, declared_classes(paths, samples_dir))}
    votes = read_votes(csv_path, samples)
    items, rows, ties, excluded = [], [], [], []
    for image_id in sorted(votes):
        vs, (path, cls) = votes[image_id], samples[image_id]
        verdict = decide(vs)
        yes = sum(v.plausible for v in vs)
        tally = [str(yes), str(len(vs) - yes)]
        if verdict is None:
            ties.append(image_id)
            excluded.append([image_id, cls, *tally, "tie"])
            continue
        items.append((path, cls, verdict))
        reviewers = ";".join(v.reviewer for v in vs if v.reviewer)
        reasons = " | ".join(v.reasons for v in vs if v.reasons)
        rows.append([image_id, cls, str(int(verdict)), *tally, reviewers, reasons])
    if not items:
        raise DataError(f"{csv_path}: every judged image is a tie ({len(ties)}); nothing to write")
    extra = {JUDGEMENTS_FILE: _csv_text(JUDGEMENT_COLUMNS, rows)}
    if excluded:
        extra[EXCLUDED_FILE] = _csv_text(EXCLUDED_COLUMNS, excluded)
    counts = write_feedback_folder(out, items, extra_files=extra)
    n_votes = sum(len(vs) for vs in votes.values())
    return VerdictImport(out, counts, n_votes, ties, unjudged=len(samples) - len(votes))
