"""docs/your-data.md, run as written: every command of its walkthrough blocks, in order, on toy cells.

The commands come from the doc itself: each shell block preceded by ``<!-- walkthrough -->`` (parsed
like tests/test_docs.py parses every block). Each command runs with tiny sizes put in its place
(``TINY_VALUES`` replace the doc's values, ``TINY_FLAGS`` are set per command), from a temporary
folder standing in for the reader's working directory, ``~/`` being a temporary home with toy
sources. The people's part is played by the test:

- Ctrl-C: ``clinalign train`` runs in a subprocess that gets SIGINT after its first checkpoint;
  the same command then resumes in-process;
- ``review serve`` runs as a real server on a free port; reviewer ``ada`` judges her queue through
  its HTTP API with her private link, reviewer ``bo`` is the doc's ``expert simulate --reviewer bo``;
- a verdict sheet (``verdicts import FILE.csv``) is written by "the experts" when the doc's file
  does not exist yet: two reviewers, agreeing on some images and tied on others;
- ``loop --db`` is given ``--review_timeout`` (a test cannot wait): it pauses after loading each
  round's batch, both reviewers judge it, and the same command is rerun until the loop is done.

Everything else goes through ``clinalign.cli.main`` exactly as the doc writes it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from clinalign.cli import main

from .conftest import REPO, subprocess_env
from .test_docs import _commands_of_block, clinalign_argv

DOC = REPO / "docs" / "your-data.md"
MARK = "<!-- walkthrough -->"

# The doc's sizes -> tiny ones, wherever the flag appears.
TINY_VALUES = {
    "--size": "16",
    "--image_size": "16",
    "--real_per_class": "4",
    "--num_channels": "16",
    "--num_res_blocks": "1",
    "--diffusion_steps": "50",
    "--batch_size": "4",
    "--save_interval": "2",
    "--num_samples": "12",  # 4 per class: as many as a tiny round judges
    "--steps": "4",
}
# Flags set (added, or replacing the doc's value) per command.
TINY_FLAGS = {
    "train": {"--attention_resolutions": "8", "--num_heads": "2"},
    "loop": {
        "--samples_per_class": "4",
        "--finetune_steps": "3",
        "--finetune_batch": "4",
        "--reward_epochs": "2",
        "--steps": "4",
        "--sampler": "ddim",
    },
    "evaluate": {"--epochs": "2", "--bootstrap": "10", "--utility_steps": "5"},
    "expert": {"--epochs": "2"},
}
# What the walkthrough must contain (a doc edit that drops a step fails here, not silently).
REQUIRED = {
    ("data", "import"),
    ("data", "pools"),
    ("train",),
    ("sample",),
    ("review", "add-batch"),
    ("review", "add-reviewer"),
    ("review", "serve"),
    ("expert", "simulate"),
    ("review", "export"),
    ("verdicts", "import"),
    ("loop", "simulated"),
    ("loop", "db"),
    ("loop", "feedback"),
    ("evaluate",),
}
CLASSES = 3
PER_CLASS = 20  # per class in the source; 16 reach data/train, 4 of them pool G


def walkthrough() -> list[list[str]]:
    """The ``clinalign`` argument lists of the doc's walkthrough blocks, in order."""
    lines = DOC.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        assert lines[i + 1].startswith("```bash"), f"your-data.md:{i + 2}: {MARK} must precede a ```bash block"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        for cmd in _commands_of_block(DOC, lines, i + 2, end):
            argv, runner = clinalign_argv(cmd.words)
            assert argv is not None and runner == "clinalign", f"{cmd.where}: not a clinalign command: {cmd.text}"
            found.append(argv)
    return found


def kind(argv: list[str]) -> tuple[str, ...]:
    if argv[0] == "loop":
        return ("loop", "db" if "--db" in argv else "feedback" if "--feedback" in argv else "simulated")
    if argv[0] in ("data", "review", "expert", "verdicts", "reward", "concepts"):
        return tuple(argv[:2])
    return (argv[0],)


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def set_flag(argv: list[str], flag: str, new: str) -> list[str]:
    if flag in argv:
        i = argv.index(flag)
        return [*argv[: i + 1], new, *argv[i + 2 :]]
    return [*argv, flag, new]


def tiny(argv: list[str], home: Path, port: int) -> list[str]:
    """The doc's command at the test's sizes, paths and port."""
    out = []
    for k, word in enumerate(argv):
        flag = argv[k - 1] if k else ""
        if flag in TINY_VALUES:
            word = TINY_VALUES[flag]
        elif flag == "--host":
            word = "127.0.0.1"
        elif flag == "--port":
            word = str(port)
        elif flag == "--base_url":
            word = f"http://127.0.0.1:{port}"
        elif word.startswith("~/"):
            word = str(home / word[2:])
        out.append(word)
    for flag, new in TINY_FLAGS.get(argv[0], {}).items():
        out = set_flag(out, flag, new)
    return out


def run(argv: list[str]) -> str:
    """``clinalign ARGV`` in this process; its stdout (also echoed for the test log)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = main(argv)
    print(buffer.getvalue(), end="")
    assert status == 0, f"clinalign {' '.join(argv)} exited {status}"
    return buffer.getvalue()


def default_sigint() -> None:
    """In the child: Ctrl-C raises KeyboardInterrupt even when this test was started with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_sources(home: Path) -> None:
    """What a reader brings: class folders with their own file names, a seed-named folder, a CSV."""
    from clinalign.data.toy import generate

    toy = home / "toy"
    generate(toy, classes=CLASSES, per_class=PER_CLASS, size=32, seed=0)
    rows = ["path,class"]
    for k, src in enumerate(sorted(toy.glob("*.png"))):
        cls = src.name.partition("_")[0]
        for dest in (
            home / "cells" / cls / f"smear{k % 2}" / f"cell{k:04d}.png",  # class folders, any depth
            home / "cells_named" / f"{cls}_cell{k:04d}.png",
            home / "raw" / f"cell{k:04d}.png",
        ):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())
        rows.append(f"raw/cell{k:04d}.png,{cls}")
    (home / "labels.csv").write_text("\n".join(rows) + "\n")


class Walkthrough:
    """Runs the doc's commands and plays the people."""

    def __init__(self, root: Path, caplog) -> None:
        self.root, self.home, self.port, self.caplog = root, root / "home", free_port(), caplog
        self.links: dict[str, str] = {}
        self.server: subprocess.Popen | None = None
        self.simulated_reviewer: list[str] | None = None
        self.played: Counter = Counter()
        self.kinds: list[tuple[str, ...]] = []

    def step(self, doc_argv: list[str]) -> None:
        argv = tiny(doc_argv, self.home, self.port)
        self.kinds.append(kind(argv))
        key = kind(argv)
        if key == ("train",):
            self.train_with_ctrl_c(argv)
        elif key == ("review", "serve"):
            self.serve(argv)
            self.judge_over_http("ada")
        elif key == ("review", "add-reviewer"):
            self.links[argv[2]] = run(argv).strip().splitlines()[-1]
        elif key == ("expert", "simulate"):
            self.simulated_reviewer = argv
            assert "judged" in run(argv)
        elif key == ("verdicts", "import"):
            self.fill_sheet(Path(argv[2]), Path(value(argv, "--samples")))
            assert "judged images from" in run(argv)
        elif argv[0] == "loop":
            self.loop(argv)
        else:
            run(argv)

    # -- training: Ctrl-C, then the same command resumes -------------------------------------

    def train_with_ctrl_c(self, argv: list[str]) -> None:
        checkpoints = Path(value(argv, "--run_dir")) / "checkpoints"
        log = self.root / "train_interrupted.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "clinalign", *set_flag(argv, "--max_steps", "1000000")],
                cwd=self.root,
                env=subprocess_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=default_sigint,
            )
            try:
                deadline = time.monotonic() + 180
                while not any(checkpoints.glob("step_*")) and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert proc.poll() is None, log.read_text()[-3000:]
                proc.send_signal(signal.SIGINT)  # Ctrl-C
                assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
            finally:
                if proc.poll() is None:
                    proc.kill()
        text = log.read_text()
        assert "training until step 1000000 from step 0" in text
        assert "interrupted at step" in text and "rerun the same command to resume" in text
        reached = max(int(p.name.split("_")[1]) for p in checkpoints.glob("step_*"))
        self.played["ctrl-c"] += 1
        # The same command again (its --max_steps a little past the step reached: a test cannot train for long).
        self.caplog.clear()
        assert "checkpoint:" in run(set_flag(argv, "--max_steps", str(reached + 2)))
        assert f"(step {reached})" in self.caplog.text and f"from step {reached}" in self.caplog.text
        assert (checkpoints / f"step_{reached + 2:06d}").is_dir()

    # -- the review app -------------------------------------------------------------------------

    def serve(self, argv: list[str]) -> None:
        import httpx

        log = (self.root / "serve.log").open("w")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "clinalign", *argv],
            cwd=self.root,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.server.poll() is None, (self.root / "serve.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/api/me", headers=self.bearer("ada")).status_code == 200:
                    self.played["serve"] += 1
                    return
            time.sleep(0.2)
        raise AssertionError("the review server did not answer: " + (self.root / "serve.log").read_text())

    def bearer(self, reviewer: str) -> dict[str, str]:
        link = self.links[reviewer]
        assert link.startswith(f"http://127.0.0.1:{self.port}/r/"), link
        return {"Authorization": f"Bearer {link.rsplit('/r/', 1)[1]}"}

    def judge_over_http(self, reviewer: str) -> int:
        """The reviewer works through their whole queue, as the page does: next image, verdict, next."""
        import httpx

        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers=self.bearer(reviewer), timeout=60) as c:
            item = c.get("/api/next").json()["item"]
            n = 0
            while item:
                verdict = "plausible" if n % 3 == 0 else "implausible"
                r = c.post(
                    "/api/verdicts", json={"request_id": str(uuid.uuid4()), "item": item["uid"], "verdict": verdict}
                )
                assert r.status_code == 200, r.text
                item, n = r.json()["next"], n + 1
        assert n > 0, f"{reviewer} had nothing to judge"
        self.played["http"] += 1
        return n

    def both_reviewers_judge(self) -> None:
        self.judge_over_http("ada")
        assert self.simulated_reviewer, (
            "the doc's simulated reviewer (expert simulate --reviewer) comes before the loop"
        )
        run(self.simulated_reviewer)

    # -- a sheet of verdicts ---------------------------------------------------------------------

    def fill_sheet(self, sheet: Path, samples: Path) -> None:
        """The experts' spreadsheet: ada and bo agree on some images, disagree (a tie) on others."""
        if sheet.exists():
            return
        rows = ["ID,class,verdict,reviewer,reasons"]
        for k, image in enumerate(sorted(samples.glob("*.png"))):
            cls = image.name.partition("_")[0]
            rows.append(f"{image.name},{cls},{'plausible' if k % 3 == 0 else 'implausible'},ada,")
            rows.append(f"{image.name},{cls},{'yes' if k % 2 == 0 else 'no'},bo,nucleus shape")
        sheet.write_text("\n".join(rows) + "\n")
        self.played["sheet"] += 1

    # -- the loop --------------------------------------------------------------------------------

    def loop(self, argv: list[str]) -> None:
        out_dir = Path(value(argv, "--out"))
        if "--db" in argv:
            argv = set_flag(argv, "--review_timeout", "0.2")
            for _ in range(2 * int(value(argv, "--rounds")) + 1):
                self.caplog.clear()
                out = run(argv)
                if "final checkpoint" in out:
                    break
                assert out.startswith("paused: batch 'round_"), out
                assert "reviewers ada, bo judge it through their private links" in self.caplog.text
                self.played["db-paused"] += 1
                self.both_reviewers_judge()
            assert "final checkpoint" in out
        elif "--feedback" in argv:
            ready = Path(value(argv, "--feedback")).exists()
            out = run(argv)
            if ready:
                assert "final checkpoint" in out and (out_dir / "round_1" / "finetune").is_dir()
                self.played["feedback-round"] += 1
            else:
                assert out.startswith(f"paused: round 1: judge the samples in {out_dir / 'round_1' / 'samples'}"), out
                self.played["feedback-paused"] += 1
        else:
            assert "final checkpoint" in run(argv)

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()


# ---------------------------------------------------------------------------------------------


def test_the_walkthrough_has_every_step_at_tiny_sizes(tmp_path):
    commands = walkthrough()
    kinds = {kind(argv) for argv in commands}
    assert REQUIRED <= kinds, f"missing from the walkthrough: {sorted(REQUIRED - kinds)}"
    for argv in commands:
        small = tiny(argv, tmp_path, 1)
        for flag in ("--image_size", "--size", "--num_channels", "--batch_size", "--num_samples"):
            if flag in small:
                assert int(value(small, flag)) <= 16, f"{' '.join(argv)}: {flag} is not made tiny"
        assert not any(w.startswith("~") or "review.lab" in w or w == "0.0.0.0" for w in small), small


# Messages quoted in the doc's troubleshooting, produced here by the commands that give them.
def _class_folders(home: Path) -> list[str]:
    return ["train", "--data_dir", str(home / "cells"), "--run_dir", str(home / "run"), "--image_size", "16",
            "--class_cond", "True", "--max_steps", "1"]  # fmt: skip


def _ambiguous(home: Path) -> list[str]:
    for cls, files in {"eosinophil": ["EO_001.png"], "neutrophil": ["BNE_001.png", "SEG_002.png"]}.items():
        for name in files:
            (home / "mixed" / cls).mkdir(parents=True, exist_ok=True)
            (home / "mixed" / cls / name).write_bytes(next((home / "cells" / cls).rglob("*.png")).read_bytes())
    return ["data", "import", str(home / "mixed"), str(home / "mixed_out")]


def _too_few(home: Path) -> list[str]:
    return ["data", "pools", "--train", str(home / "cells_named"), "--real_per_class", "128", "--out", str(home / "p")]


@pytest.mark.parametrize(
    "make, quoted",
    [
        (_class_folders, "file name has no class prefix; name it CLASS_anything.png (the class is the text before"),
        (_ambiguous, "pass --layout folders (class = sub-folder of SRC) or --layout names (class = file-name prefix)"),
        (_too_few, "leaves no image of some classes for the expert and the oracle"),
    ],
    ids=["no-class-prefix", "folder-vs-prefix", "real-per-class"],
)
def test_troubleshooting_quotes_the_real_messages(tmp_path, capsys, make, quoted):
    make_sources(tmp_path)
    doc = " ".join(DOC.read_text().split())
    assert quoted in doc, "the doc no longer quotes this message"
    assert main(make(tmp_path)) == 2
    assert quoted in " ".join(capsys.readouterr().err.split())


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_walkthrough_runs_as_written(tmp_path, monkeypatch, caplog):
    from clinalign.pipeline import rounds

    caplog.set_level(logging.INFO)
    # The loop checks the review database every 10 s; a test waits 0.05 s.
    monkeypatch.setattr(rounds.review_feedback, "__defaults__", (0.05,))
    monkeypatch.chdir(tmp_path)
    make_sources(tmp_path / "home")
    walk = Walkthrough(tmp_path, caplog)
    try:
        for argv in walkthrough():
            walk.step(argv)
    finally:
        walk.close()

    assert REQUIRED <= set(walk.kinds)
    assert walk.played["ctrl-c"] == 1 and walk.played["serve"] == 1
    assert walk.played["sheet"] == 2 and walk.played["feedback-paused"] == 2 and walk.played["feedback-round"] == 1
    assert walk.played["db-paused"] == 3  # one pause per round, both reviewers judging in between
    assert walk.played["http"] == 1 + 3
    # what the doc says comes out
    assert {p.name for p in Path("pools").iterdir()} >= {"G", "E", "O", "pools.json"}
    assert any(Path("judged").glob("*/notalign/*.png")) and Path("judged/votes.csv").is_file()
    assert Path("judged_sheet/judgements.csv").is_file() and Path("judged_sheet/excluded.csv").is_file()
    for k in (1, 2, 3):
        assert Path(f"loop/round_{k}/reward/reward.safetensors").is_file()
        assert Path(f"loop_review/round_{k}/feedback/train").is_dir()
    report = Path("eval/report.html").read_text()
    for heading in ("Summary", "Samples vs baseline", "Per class", "Clinical checklist", "Memorisation", "Definitions"):
        assert f"<h2>{heading}" in report, heading
    assert "class-consistent AND on-manifold AND checklist" in report
    assert "below 0.9" in report  # the toy oracle is weak, and the page says so


@pytest.mark.usefixtures("one_thread")
def test_the_loop_refuses_verdicts_judged_on_other_samples(tmp_path, pretrained, toy_dir):
    other, judged = tmp_path / "samples", tmp_path / "judged"
    run(["sample", "--checkpoint", str(pretrained), "--num_samples", "8", "--sampler", "ddim", "--steps", "4",
         "--out", str(other)])  # fmt: skip
    Walkthrough(tmp_path, None).fill_sheet(tmp_path / "verdicts.csv", other)
    run(["verdicts", "import", str(tmp_path / "verdicts.csv"), "--samples", str(other), "--out", str(judged)])
    loop = ["loop", "--checkpoint", str(pretrained), "--real", str(toy_dir), "--out", str(tmp_path / "loop"),
            "--feedback", str(judged)]  # fmt: skip
    for flag, new in TINY_FLAGS["loop"].items():
        loop = set_flag(loop, flag, new)
    assert main(loop) == 2  # it used to finetune on "N expert verdicts" of images nobody judged
