"""Every command line in README.md and docs/*.md parses against the real argument parsers.

A reader copies these lines; a flag that was renamed or never existed must fail here, not in their
shell. Checked: lines of shell code blocks (a leading ``$ `` prompt stripped, ``\\`` continuations
joined, ``NAME="..."`` variables of the same block substituted) and inline code spans, whose
command is ``clinalign``, ``python scripts/*.py``, ``python -m clinalign`` or ``torchrun ... -m
clinalign``. ``scripts/image_sample.py`` goes through its own translation (``to_clinalign_argv``),
``image_train.py`` and ``image_finetuned.py`` are ``train`` and ``finetune``. Placeholders (``DIR``,
``runs/pre``) are fine as values. A span or line with ``…`` elides flags, and an inline span that
gives no flags names a command in prose (`clinalign expert simulate`): those must only name real
commands and real flags, not every required one.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import shlex
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from clinalign.cli import build_parser
from clinalign.errors import ClinalignError

from .conftest import REPO

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh", "shell-session"}
SEPARATORS = {";", "&&", "||", "|", "&"}
REDIRECTS = {">", ">>", "<", ">&", "2>", "&>"}
ELLIPSES = ("…", "...")
CLINALIGN_MODULES = ("clinalign", "clinalign.cli")
SCRIPT_COMMANDS = {"scripts/image_train.py": "train", "scripts/image_finetuned.py": "finetune"}
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass
class Command:
    where: str  # file:line
    text: str
    words: list[str]
    elided: bool  # flags left out on purpose: required arguments are not demanded


# ---------------------------------------------------------------------------------------------
# Finding the commands


def strip_comment(line: str) -> str:
    """Drop a shell comment: a ``#`` at the start of a word, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote or a lone backslash: prose, or a line no shell would run
        return text.split()


def segments(words: list[str]) -> list[list[str]]:
    """Simple commands of a line: split at ``;``, ``&&``, ``|`` ..., redirections dropped."""
    out, current, skip = [], [], False
    for w in words:
        if skip:
            skip = False
        elif w in SEPARATORS:
            out.append(current)
            current = []
        elif w in REDIRECTS:
            skip = True
        else:
            current.append(w)
    return [s for s in [*out, current] if s]


def _expand(text: str, variables: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


def block_commands(path: Path, lines: list[str]) -> list[Command]:
    """Commands in fenced shell blocks, with their first line's number."""
    found, i = [], 0
    while i < len(lines):
        fence = lines[i].strip()
        if not fence.startswith("```"):
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), len(lines))
        if fence[3:].strip().lower() in SHELL_LANGUAGES:
            found += _commands_of_block(path, lines, i + 1, end)
        i = end + 1
    return found


def _commands_of_block(path: Path, lines: list[str], start: int, end: int) -> list[Command]:
    prompted = any(lines[k].lstrip().startswith("$ ") for k in range(start, end))
    variables: dict[str, str] = {}
    found, k = [], start
    while k < end:
        first, text = k, lines[k].strip()
        while text.endswith("\\") and k + 1 < end:
            k += 1
            text = text[:-1] + " " + lines[k].strip()
        k += 1
        if prompted and not text.startswith("$ "):
            continue  # a console block's output
        text = strip_comment(text.removeprefix("$ ")).strip()
        words = shell_words(_expand(text, variables))
        assignment = _ASSIGNMENT.match(" ".join(words)) if len(words) == 1 or words[:1] == ["export"] else None
        if assignment:  # NAME="--flag value ...": substituted into the block's later lines
            variables[assignment.group(1)] = assignment.group(2)
            continue
        found.append(Command(f"{path.name}:{first + 1}", text, words, False))
    return found


def inline_commands(path: Path, lines: list[str]) -> list[Command]:
    """Inline code spans outside fenced blocks (a span may wrap onto the next line)."""
    prose, fenced = [], False
    for line in lines:
        if line.strip().startswith("```"):
            fenced = not fenced
            prose.append("")
        else:
            prose.append("" if fenced else line)
    text = "\n".join(prose)
    found = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(m.group(1).split())
        if span.split()[:1] not in (["clinalign"], ["python"], ["python3"], ["torchrun"]):
            continue
        words = shell_words(span)
        if words:
            line = text.count("\n", 0, m.start()) + 1
            named_only = not any(w.startswith("-") for w in words[1:])
            found.append(Command(f"{path.name}:{line}", span, words, named_only))
    return found


# ---------------------------------------------------------------------------------------------
# Checking one command


class ParseFailure(Exception):
    pass


class _HelpShown(Exception):
    pass


@contextmanager
def argparse_raises():
    """argparse raises instead of printing and exiting, so one bad line does not end the test run."""

    def error(self, message):
        raise ParseFailure(f"{self.prog}: {message}")

    def exit_(self, status=0, message=None):
        if status:
            raise ParseFailure(message or f"exit status {status}")
        raise _HelpShown

    saved = argparse.ArgumentParser.error, argparse.ArgumentParser.exit
    argparse.ArgumentParser.error, argparse.ArgumentParser.exit = error, exit_
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            yield
    except _HelpShown:
        pass
    finally:
        argparse.ArgumentParser.error, argparse.ArgumentParser.exit = saved


def relax(parser: argparse.ArgumentParser, seen: set | None = None) -> argparse.ArgumentParser:
    """Nothing required any more, in every sub-command: checks names and flags, not completeness."""
    seen = set() if seen is None else seen
    if id(parser) in seen:
        return parser
    seen.add(id(parser))
    for group in parser._mutually_exclusive_groups:
        group.required = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                relax(sub, seen)
        elif action.option_strings:
            action.required = False
        elif action.nargs in (None, 1, "+"):
            action.nargs = "?" if action.nargs != "+" else "*"
    return parser


_PARSERS: dict[bool, argparse.ArgumentParser] = {}


def clinalign_parser(relaxed: bool) -> argparse.ArgumentParser:
    if relaxed not in _PARSERS:
        _PARSERS[relaxed] = relax(build_parser()) if relaxed else build_parser()
    return _PARSERS[relaxed]


def sample_script_argv(words: list[str], relaxed: bool) -> list[str] | None:
    """``image_sample.py``'s own parser and translation; the checkpoint is a placeholder, so not opened."""
    if str(REPO / "scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "scripts"))
    script = importlib.import_module("image_sample")
    script.find_checkpoint = lambda path: None
    script.check_flags = lambda *args, **kwargs: None
    try:
        return script.to_clinalign_argv(words)
    except ParseFailure as exc:
        if relaxed and "the following arguments are required" in str(exc):
            return None
        raise


def clinalign_argv(words: list[str]) -> tuple[list[str] | None, str]:
    """The ``clinalign`` arguments a simple command runs (None: not a clinalign command) and how it is run."""
    while words and _ASSIGNMENT.match(words[0]):
        words = words[1:]  # FOO=1 clinalign ...
    if words[:1] == ["clinalign"]:
        return words[1:], "clinalign"
    if words[:1] in (["python"], ["python3"]):
        if len(words) > 1 and words[1].startswith("scripts/"):
            return words[2:], words[1]
        if words[1:2] == ["-m"] and words[2:3] and words[2] in CLINALIGN_MODULES:
            return words[3:], "clinalign"
        if words[1:3] == ["-m", "torch.distributed.run"]:
            return _launched(words[3:])
    if words[:1] == ["torchrun"] and len(words) > 1:  # a bare `torchrun` in prose launches nothing
        return _launched(words[1:])
    return None, ""


def _launched(launcher_args: list[str]) -> tuple[list[str] | None, str]:
    from torch.distributed.run import get_args_parser

    launch = get_args_parser().parse_args(launcher_args)  # torchrun's own flags must exist too
    target = launch.training_script
    if (launch.module and target in CLINALIGN_MODULES) or (launch.no_python and target == "clinalign"):
        return launch.training_script_args, "clinalign"
    if target.startswith("scripts/"):
        return launch.training_script_args, target
    return None, ""


def check(cmd: Command) -> str | None:
    """None when ``cmd`` parses (or is not a clinalign command), else why not."""
    elided = cmd.elided or any(e in w for w in cmd.words for e in ELLIPSES)
    words = [w for w in cmd.words if not any(e in w for e in ELLIPSES)]
    try:
        with argparse_raises():
            for segment in segments(words):
                argv, runner = clinalign_argv(segment)
                if argv is None:
                    continue
                argv, elided = _unset_variables(argv, elided)
                if runner == "scripts/image_sample.py":
                    argv = sample_script_argv(argv, elided)
                elif runner != "clinalign":
                    if runner not in SCRIPT_COMMANDS:
                        known = ", ".join(["scripts/image_sample.py", *SCRIPT_COMMANDS])
                        return f"{runner}: no such seed-compatible script (known: {known})"
                    argv = [SCRIPT_COMMANDS[runner], *argv]
                if argv is not None:
                    clinalign_parser(elided).parse_args(argv)
    except (ParseFailure, ClinalignError) as exc:
        return str(exc).strip()
    return None


def _unset_variables(argv: list[str], elided: bool) -> tuple[list[str], bool]:
    """A bare ``$FLAGS`` that no block defines stands for flags left out; a ``$X`` value stays a placeholder."""
    kept = []
    for k, w in enumerate(argv):
        is_value = k > 0 and argv[k - 1].startswith("-") and "=" not in argv[k - 1]
        if _VARIABLE.fullmatch(w) and not is_value:
            elided = True
        else:
            kept.append(w)
    return kept, elided


def commands(path: Path) -> list[Command]:
    lines = path.read_text().splitlines()
    return block_commands(path, lines) + inline_commands(path, lines)


def failures(path: Path) -> list[str]:
    out = []
    for cmd in commands(path):
        why = check(cmd)
        if why:
            out.append(f"{path.relative_to(REPO)}:{cmd.where.split(':')[1]}: {cmd.text}\n    -> {why}")
    return out


# ---------------------------------------------------------------------------------------------
# The docs


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_line_in_the_docs_parses(doc):
    bad = failures(doc)
    assert not bad, f"{len(bad)} command line(s) do not parse:\n" + "\n".join(bad)


def test_the_docs_have_commands_to_check():
    total = sum(len(commands(p)) for p in DOC_FILES)
    assert total > 50, total
    assert any(c.words[:2] == ["python", "scripts/image_train.py"] for c in commands(REPO / "README.md"))


# ---------------------------------------------------------------------------------------------
# The checker catches what it must (a checker that passes everything would pass the docs too)


def _doc(tmp_path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def _why(tmp_path, text: str) -> list[str]:
    return [check(c) for c in commands(_doc(tmp_path, text))]


def test_an_unknown_flag_fails_with_file_and_line(tmp_path):
    doc = _doc(tmp_path, "# t\n\n```bash\nclinalign sample --checkpoint runs/pre --out s/\nclinalign sample \\\n"
               "  --checkpoint runs/pre --out s/ --nmu_samples 8\n```\n")  # fmt: skip
    (bad,) = [f for f in [check(c) and (c.where, check(c)) for c in commands(doc)] if f]
    assert bad[0] == "doc.md:5" and "unrecognized arguments: --nmu_samples 8" in bad[1]


def test_variables_of_the_block_prompts_comments_and_chains(tmp_path):
    ok = '```bash\nFLAGS="--image_size 16 --class_cond True"\n$ clinalign train --data_dir d --run_dir r $FLAGS  # x\n'
    assert _why(tmp_path, ok) == [None]
    bad = (
        '```bash\nFLAGS="--image_size 16 --class_kond True"\nclinalign train --data_dir real/ --run_dir r $FLAGS\n```\n'
    )
    assert "--class_kond" in _why(tmp_path, bad)[0]
    console = "```console\n$ clinalign data toy --out t\nclinalign: error: this is output, not a command\n```\n"
    assert _why(tmp_path, console) == [None]
    chained = "```bash\npip install -e . && clinalign demo --minuets 3\n```\n"
    assert "--minuets" in _why(tmp_path, chained)[0]


def test_inline_spans_scripts_and_torchrun(tmp_path):
    text = (
        "Run `clinalign expert simulate` or `clinalign train --data_dir d …`, not `clinalign trian`.\n"
        "`clinalign sample --checkpoint R --out s --num_samples lots` fails; so does\n"
        "`python scripts/image_sample.py --model_path runs/pre --use_ddim True --bogus 1` and\n"
        "`python scripts/image_train.py --data_dir real/ --lr 1e-4 $TRAIN_FLAGS` passes.\n"
        "```bash\ntorchrun --nproc_per_node 2 -m clinalign.cli sample --checkpoint r --out s\n"
        "torchrun --nprocs 2 -m clinalign.cli sample --checkpoint r --out s\n"
        "python scripts/image_train.py --data_dir real/ --run_dir r --image_size 64 --learn_sigma Maybe\n```\n"
    )
    why = _why(tmp_path, text)
    assert why[0] is None  # torchrun ... -m clinalign.cli sample
    assert why[1] and "nprocs" in why[1]
    assert why[2] and "learn_sigma" in why[2]
    assert why[3] is None and why[4] is None  # a command named in prose; elided flags
    assert why[5] and "invalid choice: 'trian'" in why[5]
    assert why[6] and "invalid int value: 'lots'" in why[6]
    assert why[7] and "--bogus" in why[7]
    assert why[8] is None
