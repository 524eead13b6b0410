"""The CLI's answers to a user's slips: --version, an --out that is a file, a misspelled suite and a results
folder that is not one each get a clear line and exit 2 (0 for --version), never a traceback."""

from __future__ import annotations

import pytest

from ttt_bench import __version__
from ttt_bench.cli import main


def one_line(text: str) -> str:
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_version_prints_the_package_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"ttt-bench {__version__}\n"


@pytest.mark.parametrize("command", [["run", "quick", "--dry-run"], ["oom", "oom"], ["report", "results/quick"]])
def test_an_out_that_is_a_file_is_refused_before_anything_runs(command, tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert main([*command, "--out", str(taken)]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"ttt-bench: error: --out {taken} is a file; give a folder")
    assert taken.read_text() == "mine"


def test_an_out_folder_that_does_not_exist_yet_is_accepted(tmp_path):
    new = tmp_path / "new" / "results"
    assert main(["run", "quick", "--dry-run", "--out", str(new)]) == 0


def test_a_misspelled_suite_gets_a_did_you_mean_and_the_shipped_names(capsys):
    assert main(["run", "quik", "--dry-run"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "quik: no such suite file" in line and "did you mean 'quick'?" in line and "scaling" in line


def test_a_suite_name_like_none_shipped_gets_the_list_without_a_guess(capsys):
    assert main(["run", "nosuchsuite", "--dry-run"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "nosuchsuite: no such suite file" in line and "did you mean" not in line and "quick" in line


def test_report_on_a_missing_folder_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys):
    missing, out = tmp_path / "does-not-exist", tmp_path / "report"
    assert main(["report", str(missing), "--out", str(out)]) == 2
    assert str(missing) in one_line(capsys.readouterr().err)
    assert not out.exists()
