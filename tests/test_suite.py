"""Suite files: the grid expands as written, rules drop or skip what they say, and every mistake is one
SuiteError naming the file, the key, the value and what is allowed; a bad file makes the CLI write nothing."""

import os
import re
import string
import tomllib
from pathlib import Path

import pytest
from checks import user_layer_sandbox, write_suite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttt_bench.cli import main
from ttt_bench.results import load_results
from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.schema import SuiteError
from ttt_bench.sweep.shipped import shipped_suites

SUITES = Path(__file__).resolve().parents[1] / "suites"
TEMPLATE_LAYER = Path(__file__).resolve().parents[1] / "docs" / "examples" / "my_layer.py"

VALID = """
name = "t"
layers = ["linear-attention-causal", { name = "ttt-linear", label = "ttt-b8", knobs = { mini_batch = 8 } }]
[grid]
seq_len = [64, 128, 256]
d_model = 16
n_heads = [1, 2]
"""


def test_grid_is_the_product_of_variants_and_axes(tmp_path):
    suite = load_suite(write_suite(tmp_path, VALID))
    cells = suite.cells()
    assert len(cells) == 2 * 3 * 2
    assert [c.variant for c in cells[:6]] == ["linear-attention-causal"] * 6
    ttt = [c for c in cells if c.variant == "ttt-b8"]
    assert {c.cell.overrides["mini_batch"] for c in ttt} == {8} and {c.cell.layer for c in ttt} == {"ttt-linear"}
    assert {(c.cell.seq_len, c.cell.n_heads) for c in ttt} == {(n, h) for n in (64, 128, 256) for h in (1, 2)}
    assert all(c.cell.dtype == "float32" and c.cell.device == "cpu" and c.cell.batch == 1 for c in cells)
    assert len({c.config_hash for c in cells}) == len(cells)


def test_config_hash_follows_what_is_measured_and_not_the_timeout(tmp_path):
    base = load_suite(write_suite(tmp_path, VALID)).cells()[0].config_hash
    assert load_suite(write_suite(tmp_path, VALID)).cells()[0].config_hash == base
    timeout = load_suite(write_suite(tmp_path, VALID + "[measure]\ntimeout_s = 5\n")).cells()[0].config_hash
    repeats = load_suite(write_suite(tmp_path, VALID + "[measure]\nrepeats = 7\n")).cells()[0].config_hash
    assert timeout == base and repeats != base


def test_globs_sweeps_and_labels(tmp_path):
    suite = load_suite(write_suite(tmp_path, """
        layers = ["attention-sdpa*", { name = "ttt-linear", sweep = { mini_batch = [4, 8] } }]
        [grid]
        seq_len = 32
        d_model = 16
        n_heads = 2
    """))
    variants = [c.variant for c in suite.cells()]
    assert variants == ["attention-sdpa", "attention-sdpa-causal", "ttt-linear-mini_batch=4", "ttt-linear-mini_batch=8"]


def test_exclude_and_only_rules(tmp_path):
    suite = load_suite(write_suite(tmp_path, VALID + """
        [[exclude]]
        layer = "linear-*"
        seq_len = { gt = 64 }
        n_heads = 2
        reason = "too big"

        [[exclude]]
        layer = "ttt-b8"
        n_heads = 1

        [[only]]
        layer = "ttt-*"
        seq_len = { le = 128 }
    """))
    kept = {(c.variant, c.cell.seq_len, c.cell.n_heads): c.skip_reason for c in suite.cells()}
    linear = {key: reason for key, reason in kept.items() if key[0] == "linear-attention-causal"}
    assert linear == {
        ("linear-attention-causal", 64, 1): None, ("linear-attention-causal", 64, 2): None,
        ("linear-attention-causal", 128, 1): None, ("linear-attention-causal", 128, 2): "too big",
        ("linear-attention-causal", 256, 1): None, ("linear-attention-causal", 256, 2): "too big",
    }
    assert sorted(key for key in kept if key[0] == "ttt-b8") == [("ttt-b8", 64, 2), ("ttt-b8", 128, 2)]


@pytest.mark.parametrize(
    "text, names",
    [
        ('layers = ["ttt-linear"]\nbogus = 1\n[grid]\nseq_len = [8]', ["'bogus'", "allowed keys"]),
        ('layers = ["attenshun"]\n[grid]\nseq_len = [8]', ["layers[0]", "'attenshun'", "ttt-linear"]),
        ('layers = [{ name = "ttt-linear", knobs = { mini_bat = 8 } }]\n[grid]\nseq_len = [8]',
         ["layers[0].knobs.mini_bat", "mini_batch"]),
        ('layers = [{ name = "ttt-linear", knobs = { mini_batch = 0 } }]\n[grid]\nseq_len = [8]',
         ["'ttt-linear'", "mini_batch=0"]),
        ('layers = ["ttt-linear"]\n[grid]\nseq_len = [8, -3]', ["grid.seq_len[1]", "-3", "integer >= 1"]),
        ('layers = ["ttt-linear"]\n[grid]\nseq_len = []', ["grid.seq_len", "at least one"]),
        ('layers = ["ttt-linear"]\n[grid]\nseq_len = [8]\ndtype = "fp8"', ["grid.dtype[0]", "'fp8'", "bfloat16"]),
        ('layers = ["ttt-linear"]\n[grid]\nseq_len = [8]\ndevice = "tpu"', ["grid.device[0]", "'tpu'", "cuda"]),
        ('layers = ["ttt-linear"]\n[grid]\nseq_len = [8]\nd_model = 10\nn_heads = 4', ["d_model=10", "divisible"]),
        ('layers = ["ttt-linear"]\nmetrics = ["accuracy"]\n[grid]\nseq_len = [8]',
         ["key 'tasks' is missing", "trains a model on tasks"]),
        ('layers = ["ttt-linear"]\nmetrics = ["speed"]\n[grid]\nseq_len = [8]', ["metrics[0]", "'speed'", "memory"]),
        ('layers = ["ttt-linear"]\n[grid]\nseq_len = [8]\n[measure]\nrepeats = 0', ["measure.repeats", "0"]),
        ('layers = ["ttt-linear"]\n[grid]\nseq_len = [8]\n[[exclude]]\nlayer = "*"', ["the grid is empty"]),
        ('layers = ["ttt-linear"]\n[grid]\nseq_len = [8]\n[[exclude]]\ndtype = { gt = 1 }',
         ["exclude[0].dtype", "numeric"]),
        ('layers = ["ttt-linear"]\n[grid]\nseq_len = [8]\n[oom]\nresolution = 0', ["oom.resolution", "0"]),
        ('layers = ["ttt-linear", "ttt-linear"]\n[grid]\nseq_len = [8]', ["more than once"]),
        ('layers = ["ttt-linear"]\n[grid\nseq_len = [8]', ["not valid TOML"]),
        ('[grid]\nseq_len = [8]', ["'layers' is missing"]),
    ],
)
def test_mistakes_name_the_file_the_key_and_what_is_allowed(tmp_path, text, names):
    path = write_suite(tmp_path, text)
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    message = str(error.value)
    assert message.startswith(str(path)) and len(message.splitlines()) == 1
    for part in names:
        assert part in message


def test_cli_prints_the_error_exits_2_and_writes_nothing(tmp_path, capsys):
    path = write_suite(tmp_path, 'layers = ["attenshun"]\n[grid]\nseq_len = [8]')
    out = tmp_path / "results"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ttt-bench: error: ") and "attenshun" in err and "Traceback" not in err
    assert not out.exists()


def test_shipped_suites_are_valid_and_quick_covers_every_family():
    shipped = {path.stem: load_suite(path) for path in shipped_suites() if path.parent == SUITES}
    assert {"quick", "scaling", "oom"} <= set(shipped)
    quick = shipped["quick"]
    layers = {c.cell.layer for c in quick.cells()}
    for family in ("attention-sdpa", "attention-naive", "linear-attention", "fast-weights", "delta-rule",
                   "ttt-linear", "ttt-mlp", "ttt-kernel", "mttt-"):
        assert any(layer.startswith(family) for layer in layers), family
    assert {c.cell.seq_len for c in quick.cells()} == {256, 1024, 4096, 16384}
    assert max(c.cell.seq_len for c in shipped["scaling"].cells()) >= 65536
    assert shipped["oom"].grid["seq_len"] is None



def test_the_mini_batch_suite_sweeps_b_for_both_ttt_layers_at_one_length():
    suite = load_suite(SUITES / "mini-batch.toml")
    cells = suite.cells()
    assert suite.metrics == ("flops", "memory", "time")
    assert {c.cell.layer for c in cells} == {"ttt-linear", "ttt-mlp"}
    for layer in ("ttt-linear", "ttt-mlp"):
        knobs = [c.cell.overrides for c in cells if c.cell.layer == layer]
        assert sorted(k["mini_batch"] for k in knobs) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
        assert {k["form"] for k in knobs} == {"dual"}
    assert {(c.cell.seq_len, c.cell.batch, c.cell.d_model, c.cell.n_heads, c.cell.dtype) for c in cells} == {
        (4096, 1, 256, 4, "float32")}
    assert all(c.skip_reason is None for c in cells) and len({c.config_hash for c in cells}) == len(cells) == 18
    # b = 1 is a loop of N steps: no tracer may run it (fvcore traces every step)
    assert suite.settings.count_flops_max_seq_len < 4096


def test_op_time_is_asked_for_by_name_and_the_layer_bench_asks_for_it(tmp_path):
    assert "op_time" in load_suite(SUITES / "cpu-layer-bench.toml").metrics
    assert "op_time" not in load_suite(SUITES / "quick.toml").metrics  # the main job stays as fast as it was
    default = load_suite(write_suite(tmp_path, 'layers = ["linear-attention"]\n[grid]\nseq_len = [8]'))
    assert default.metrics == ("flops", "memory", "time")
    profiled = load_suite(write_suite(tmp_path, 'metrics = ["time", "op_time"]\nlayers = ["linear-attention"]\n'
                                                '[grid]\nseq_len = [8]'))
    assert profiled.metrics == ("time", "op_time")
    with pytest.raises(SuiteError, match="op_times.*op_time"):
        load_suite(write_suite(tmp_path, 'metrics = ["op_times"]\nlayers = ["linear-attention"]\n'
                                         '[grid]\nseq_len = [8]'))


def test_the_main_job_keeps_its_slow_cells_small():
    """The README's main job must finish on a slow or busy machine: the token-by-token reference and the N x N
    attention run only where they take seconds, and the FLOP counters (fvcore traces every step of a loop) only
    at the smallest N. What those cells cost on 2 cores is in reports/cpu-quick/NOTES.md."""
    quick = load_suite(SUITES / "quick.toml")
    ran = [c.cell for c in quick.cells() if c.skip_reason is None]
    assert max(c.seq_len for c in ran if c.layer.endswith("-primal")) <= 1024
    assert max(c.seq_len for c in ran if c.layer.startswith("attention-naive")) <= 4096
    assert quick.settings.count_flops_max_seq_len <= 256
    assert quick.settings.timeout_s >= 300

# `imports`: a user's module by name or by .py path, relative to the suite file, in the parser and in every worker.

USER_SUITE = """
imports = [{imports}]
layers = ["my-layer"]
metrics = ["flops"]
[grid]
seq_len = 16
d_model = 16
n_heads = 2
[measure]
repeats = 1
min_time_s = 0.01
threads = 1
"""


@pytest.fixture
def sandbox(monkeypatch, tmp_path):
    yield from user_layer_sandbox(monkeypatch, tmp_path)


def user_suite(tmp_path, monkeypatch, imports: str, layer_text: str | None = None) -> Path:
    """A suite in tmp_path/mine/ beside my_layer.py (the template unless `layer_text`); the working directory is
    another folder, and no PYTHONPATH points at either."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_layer.py").write_text(TEMPLATE_LAYER.read_text() if layer_text is None else layer_text)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return write_suite(tmp_path / "mine", USER_SUITE.format(imports=imports))


@pytest.mark.parametrize("imports", ['"my_layer.py"', '"my_layer"', '"./my_layer.py"'])
def test_imports_find_a_layer_file_beside_the_suite(sandbox, tmp_path, monkeypatch, imports):
    path = user_suite(tmp_path, monkeypatch, imports)
    suite = load_suite(os.path.relpath(path))
    assert suite.imports == (str(tmp_path.resolve() / "mine" / "my_layer.py"),)  # what a worker imports, from anywhere
    assert [cell.imports for cell in suite.cells()] == [suite.imports]


def test_imports_refuses_a_module_it_cannot_find_naming_what_it_tried(sandbox, tmp_path, monkeypatch):
    path = user_suite(tmp_path, monkeypatch, '"my_layer.py", "no_such_layer"')
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    tried = path.parent.resolve() / "no_such_layer.py"
    assert str(error.value) == (f"{path}: key 'imports[1]': cannot import 'no_such_layer': Python finds no module "
                                f"'no_such_layer' (sys.path) and there is no file {tried}")


# What a layer written without the docs looked like: its config holds no d_model, so every cell would have failed.
PLAIN_CONFIG_LAYER = """
from dataclasses import dataclass
from contract_breakers import Sound
from ttt_bench.layers import register

@dataclass
class PlainConfig:
    decay: float = 0.5

@register("my-layer")
class MyLayer(Sound):
    Config = PlainConfig
"""
NO_COST_LAYER = """
from ttt_bench.layers import register
from ttt_bench.layers.base import SequenceMixer

@register("my-layer")
class MyLayer(SequenceMixer):
    def mix(self, x):
        return x
"""
EXTRA_ARGUMENT_LAYER = """
from contract_breakers import Sound
from ttt_bench.layers import register

@register("my-layer")
class MyLayer(Sound):
    def __init__(self, config, scale):
        super().__init__(config)
"""


@pytest.mark.parametrize("layer_text, named", [
    (PLAIN_CONFIG_LAYER, "key 'imports[0]': cannot import 'my_layer.py' (ConfigError: layer 'my-layer': MyLayer.Config "
                         "is <class 'my_layer.PlainConfig'>, not a subclass of ttt_bench.layers.base.MixerConfig"),
    (NO_COST_LAYER, "(ConfigError: layer 'my-layer': MyLayer does not define cost; a layer defines mix(x)"),
    (EXTRA_ARGUMENT_LAYER, "key 'layers[0]' (layer 'my-layer' as 'my-layer', d_model=16, n_heads=2): it cannot be "
                           "built (TypeError: MyLayer.__init__() missing 1 required positional argument: 'scale')"),
], ids=["config-not-a-MixerConfig", "no-cost", "init-takes-more-than-its-config"])
def test_a_layer_that_could_not_run_is_refused_before_anything_runs(sandbox, tmp_path, monkeypatch, layer_text, named):
    path = user_suite(tmp_path, monkeypatch, '"my_layer.py"', layer_text)
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    assert str(error.value).startswith(f"{path}: ") and named in str(error.value)


@pytest.mark.parametrize("layers_value, named", [
    ('["ttt-linaer"]', "key 'layers[0]': no registered layer matches 'ttt-linaer' (did you mean 'ttt-linear'"),
    ('[{ name = "delta-rul" }]',
     "key 'layers[0].name': unknown layer 'delta-rul' (did you mean 'delta-rule' or 'gated-delta-rule'?)"),
])
def test_a_misspelled_layer_gets_a_did_you_mean(tmp_path, layers_value, named):
    path = write_suite(tmp_path, f"layers = {layers_value}\n[grid]\nseq_len = [8]")
    with pytest.raises(SuiteError, match=re.escape(named)):
        load_suite(path)


def test_a_run_imports_the_layer_file_in_every_worker(sandbox, tmp_path, monkeypatch):
    path = user_suite(tmp_path, monkeypatch, '"my_layer"')
    out = tmp_path / "results"
    assert main(["run", os.path.relpath(path), "--out", str(out), "--quiet"]) == 0
    rows = load_results(out)
    assert set(rows["layer"]) == {"my-layer"} and set(rows["status"]) == {"ok"}
    assert (rows["macs"] == rows["macs_flop_counter"]).all()  # its cost against the count made in a worker process


# Fuzzing: valid suites mutated at random, and random text. Either the file loads, or it raises SuiteError;
# never another exception, and on a bad file `ttt-bench run` writes nothing.

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"


def toml_document(data: dict) -> str:
    lines = [f'"{k}" = {toml_value(v)}' for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines.append(f'["{key}"]')
            lines += [f'"{k}" = {toml_value(v)}' for k, v in table.items()]
    return "\n".join(lines) + "\n"


scalars = st.one_of(
    st.integers(-5, 5000), st.floats(allow_nan=False, allow_infinity=False, width=32), st.booleans(),
    st.text(string.ascii_letters + "-*:_0123456789", max_size=12),
    st.sampled_from(["ttt-linear", "cpu", "cuda", "float32", "fp8", "flops", "accuracy", "*"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["gt", "le", "x", "name"]),
                                                                       inner, max_size=2)), max_leaves=6)
paths = st.sampled_from([
    ("name",), ("layers",), ("metrics",), ("imports",), ("bogus",), ("grid", "seq_len"), ("grid", "batch"),
    ("grid", "dtype"), ("grid", "device"), ("grid", "n_heads"), ("grid", "seed"), ("grid", "bogus"),
    ("measure", "repeats"), ("measure", "min_time_s"), ("measure", "threads"), ("oom", "resolution"),
    ("oom", "fit_seq_lens"), ("oom", "measurement"), ("exclude",), ("only",),
])
BASE = tomllib.loads(VALID)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(paths, st.one_of(st.none(), values)), min_size=1, max_size=3))
def test_fuzzed_suites_load_or_raise_suite_error_and_write_nothing(tmp_path, mutations):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for path, value in mutations:
        table = data
        for key in path[:-1]:
            table = table.setdefault(key, {}) if isinstance(table.get(key, {}), dict) else {}
        if value is None:
            table.pop(path[-1], None)
        else:
            table[path[-1]] = value
    check_loads_or_refuses(tmp_path, toml_document(data))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_random_text_is_refused_cleanly(tmp_path, text):
    check_loads_or_refuses(tmp_path, text)


def check_loads_or_refuses(tmp_path, text):
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        load_suite(path)
    except SuiteError as error:
        assert str(error).startswith(str(path))
        out = tmp_path / "never-written"
        assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
        assert not out.exists()
