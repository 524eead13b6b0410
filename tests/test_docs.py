"""The documentation stays true to the repository: its relative links resolve, and the README's set-up
commands are the ones CI runs (so a user who copies them runs what CI checked)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

MAIN_COMMAND = (
    "python -m pip install torch==2.13.0 -e . && python -m ttt_bench run suites/quick.toml --out results/quick"
    " && python -m ttt_bench report results/quick --out reports/cpu-quick"
)
TEST_COMMAND = "python -m pip install torch==2.13.0 -e '.[test]' && python -m pytest -q"
README_MAX_LINES = 150

# [text](target) and ![alt](target), with an optional "title"; reference definitions `[id]: target`.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
CODE_SPAN = re.compile(r"(`+).*?\1")
EXTERNAL = re.compile(r"^(https?://|mailto:)", re.IGNORECASE)


def fenced_blocks(text: str) -> list[str]:
    """The contents of the ``` fenced code blocks, in order."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code, with inline code spans removed: links are only read there."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, CODE_SPAN.sub("", line)))
    return lines


def relative_links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link that points into the repository."""
    links = []
    for number, line in prose_lines(text):
        targets = INLINE_LINK.findall(line)
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            targets.append(definition.group(1))
        links += [(number, target) for target in targets if not EXTERNAL.match(target) and not target.startswith("#")]
    return links


def broken_links(text: str, folder: Path) -> list[tuple[int, str]]:
    """The relative links of `text` (a file in `folder`) whose file or folder does not exist; a target
    starting with / is taken from the repository root, as GitHub does."""
    broken = []
    for number, target in relative_links(text):
        file_part = unquote(target.split("#", 1)[0])
        base = ROOT if file_part.startswith("/") else folder
        if not (base / file_part.lstrip("/")).exists():
            broken.append((number, target))
    return broken


DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "reports").glob("*/NOTES.md"))]


def test_the_documents_to_check_are_there():
    names = {path.relative_to(ROOT).as_posix() for path in DOCUMENTS}
    assert {"README.md", "docs/README.md", "docs/suites.md", "docs/results.md"} <= names


def test_readme_links_the_docs_and_every_committed_report():
    targets = {target.split("#", 1)[0] for _, target in relative_links(README.read_text())}
    assert "docs/README.md" in targets
    reports = sorted(path.parent.name for path in (ROOT / "reports").glob("*/NOTES.md"))
    assert reports, "no reports/<name>/NOTES.md found"
    missing = [name for name in reports if f"reports/{name}/NOTES.md" not in targets]
    assert not missing, f"README.md does not link the notes of {missing}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path):
    text = path.read_text()
    broken = broken_links(text, path.parent)
    assert not broken, f"{path.relative_to(ROOT)} links to files that do not exist:\n" + "\n".join(
        f"  line {number}: {target}" for number, target in broken
    )


def test_the_link_checker_finds_broken_links(tmp_path: Path):
    (tmp_path / "there.md").write_text("")
    (tmp_path / "sub").mkdir()
    text = (
        "[ok](there.md) [folder](sub/) [anchor](#here) [web](https://example.org/x.md) [mail](mailto:a@b.c)\n"
        "[fragment](there.md#section) ![figure](no/such/figure.png \"a title\") [up](../gone.md)\n"
        "`[in code](not/checked.md)`\n"
        "```\n[in a block](not/checked/either.md)\n```\n"
        "[ref]: missing.md\n"
    )
    assert [target for _, target in relative_links(text)] == [
        "there.md", "sub/", "there.md#section", "no/such/figure.png", "../gone.md", "missing.md",
    ]
    assert broken_links(text, tmp_path) == [(2, "no/such/figure.png"), (2, "../gone.md"), (7, "missing.md")]


def test_readme_opens_with_the_two_commands_ci_runs():
    text = README.read_text()
    blocks = fenced_blocks(text)
    assert len(blocks) >= 2, "the README needs the main-job and the test commands as its first two code blocks"
    assert blocks[0] == MAIN_COMMAND
    assert blocks[1] == TEST_COMMAND

    assignments = [line for line in CI_RUN.read_text().splitlines() if line.startswith("TEST_COMMAND=")]
    assert len(assignments) == 1, f".ci/run should set TEST_COMMAND once, found {assignments}"
    words = shlex.split(assignments[0].removeprefix("TEST_COMMAND="))
    assert len(words) == 1, f".ci/run's TEST_COMMAND is not one quoted string: {assignments[0]}"
    assert words[0] == blocks[1], ".ci/run does not run the README's test command verbatim"


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move reference material to docs/"
