"""`ttt-bench check` as a user runs it: a layer file in a folder of their own, run from another folder with no
PYTHONPATH; the template layer passes every check, a broken one is named check by check with exit 1, and a user's
mistake (no file, an import that fails, a file that registers nothing, a misspelled layer) exits 2 in one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from checks import user_layer_sandbox

from ttt_bench.cli import main
from ttt_bench.layer_check import CHECKS

DOCS = Path(__file__).resolve().parents[1] / "docs"
TEMPLATE = DOCS / "examples" / "my_layer.py"
CAUSAL_MASK = "weights = (decay**lag).tril()"
HALF_WRITTEN = '''

@register("half-written")
class HalfWritten(MyLayer):
    """Leaves the last token's output unwritten: what torch.empty held shows there."""

    def mix(self, x):
        out = torch.empty_like(x)
        out[:, :-1] = super().mix(x)[:, :-1]
        return out
'''


@pytest.fixture
def sandbox(monkeypatch, tmp_path):
    yield from user_layer_sandbox(monkeypatch, tmp_path)


def user_folders(tmp_path: Path, layer_text: str, name: str = "my_layer.py") -> tuple[Path, Path]:
    """(the user's layer file in a folder of its own, another folder to run from)."""
    (tmp_path / "layers").mkdir(exist_ok=True)
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    layer_file = tmp_path / "layers" / name
    layer_file.write_text(layer_text)
    return layer_file, tmp_path / "elsewhere"


def ttt_bench_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ttt_bench", "check", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def outcomes(stdout: str) -> dict[tuple[str, str], str]:
    """(layer, check) -> the rest of its line, from `ttt-bench check`'s output."""
    found = {}
    for line in stdout.splitlines()[:-1]:
        layer, check, rest = line.split(maxsplit=2)
        found[layer, check] = rest
    return found


def test_the_template_layer_passes_every_check(tmp_path):
    layer_file, elsewhere = user_folders(tmp_path, TEMPLATE.read_text())
    done = ttt_bench_check(os.path.relpath(layer_file, elsewhere), cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    found = outcomes(done.stdout)
    assert set(found) == {(layer, check) for layer in ("my-layer", "my-layer-slow-decay") for check in CHECKS}
    assert all(rest.startswith("passed") for rest in found.values()), done.stdout
    assert "against form='recurrent'" in found["my-layer", "reference"]
    assert done.stdout.splitlines()[-1] == "2 layers, 22 checks: 22 passed"


def test_a_broken_layer_is_named_check_by_check(tmp_path):
    assert CAUSAL_MASK in TEMPLATE.read_text()
    text = TEMPLATE.read_text().replace(CAUSAL_MASK, "weights = decay**lag") + HALF_WRITTEN
    layer_file, elsewhere = user_folders(tmp_path, text)
    done = ttt_bench_check(str(layer_file), "--layer", "my-layer", "--layer", "half-written", cwd=elsewhere)
    assert done.returncode == 1, done.stdout + done.stderr
    found = outcomes(done.stdout)
    failed = {key for key, rest in found.items() if rest.startswith("FAILED")}
    # Without the mask the fast form sees the future and no longer equals its reference; the unwritten last token
    # reads as NaN (the checks fill uninitialised memory), so its shapes fail.
    assert {("my-layer", "causality"), ("my-layer", "reference"), ("half-written", "shapes")} <= failed
    assert "when only inputs after 17 changed" in found["my-layer", "causality"]
    assert "non-finite output" in found["half-written", "shapes"]
    assert all(found["my-layer", check].startswith("passed") for check in ("flop-counter", "gradients", "cost"))
    assert {layer for layer, _ in found} == {"my-layer", "half-written"}
    last = done.stdout.splitlines()[-1]
    assert last.startswith("2 layers, 22 checks: ") and "my-layer causality" in last and "half-written shapes" in last


def test_the_smallest_layer_of_the_docs_passes(sandbox, tmp_path, monkeypatch, capsys):
    page = (DOCS / "your-layer.md").read_text()
    example = page.split("## The smallest working layer", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    layer_file, elsewhere = user_folders(tmp_path, example, name="window_mean.py")
    monkeypatch.chdir(elsewhere)
    assert main(["check", str(layer_file)]) == 0
    # No reference form and no decode(): those two are skipped.
    assert capsys.readouterr().out.splitlines()[-1] == "1 layer, 11 checks: 9 passed, 2 skipped"


@pytest.mark.parametrize("layer_text, args, named", [
    (None, ["missing.py"], "cannot import 'missing.py': there is no file "),
    (None, ["no_such_module"], "Python finds no module 'no_such_module' (sys.path) and there is no file "),
    ("import torch\nx = 1\nraise RuntimeError('boom')\n", ["{file}"], "(RuntimeError: boom, at faulty.py:3)"),
    ("import torch\n", ["{file}"], "registers no layer; decorate its SequenceMixer subclass with @register"),
    (TEMPLATE.read_text(), ["{file}", "--layer", "my-layr"], "unknown layer 'my-layr' (did you mean 'my-layer'"),
])
def test_a_user_mistake_exits_2_in_one_line(sandbox, tmp_path, monkeypatch, capsys, layer_text, args, named):
    layer_file, elsewhere = user_folders(tmp_path, layer_text or "", name="faulty.py")
    monkeypatch.chdir(elsewhere)
    assert main(["check", *(arg.format(file=layer_file) for arg in args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ttt-bench: error: ") and named in err and len(err.strip().splitlines()) == 1


def test_ls_import_shows_the_users_layers(sandbox, tmp_path, monkeypatch, capsys):
    layer_file, elsewhere = user_folders(tmp_path, TEMPLATE.read_text())
    monkeypatch.chdir(elsewhere)
    assert main(["ls", "my-layer"]) == 2  # invisible without --import
    capsys.readouterr()
    assert main(["ls", "--import", f"../layers/{layer_file.name}", "my-layer", "--knobs"]) == 0
    out = capsys.readouterr().out
    assert "my-layer" in out and "MyLayer()  (from my_layer)" in out
    assert "decay = 0.9  # decay^(t-s) weighs the pair (t, s)" in out


def test_ls_of_a_misspelled_layer_says_did_you_mean(capsys):
    assert main(["ls", "delta-rul"]) == 2
    err = capsys.readouterr().err
    assert "unknown layer 'delta-rul' (did you mean 'delta-rule' or 'gated-delta-rule'?)" in err
    assert len(err.strip().splitlines()) == 1
