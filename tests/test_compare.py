"""`ttt-bench compare`: matching cells across two result sets, ratios and verdicts per metric, status changes,
the compared setting, threshold parsing, the markdown document and the CI exit status."""

import hashlib
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from checks import write_suite

from ttt_bench.errors import ConfigError
from ttt_bench.report.compare import (
    Change,
    compare_results,
    format_comparison,
    markdown_table,
    parse_thresholds,
    run_compare,
)
from ttt_bench.results import ResultStore, load_results
from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.runner import run_suite

ENVIRONMENT = {"git_commit": "a" * 40, "torch_version": "2.13.0+cpu", "cpu_model": "test cpu",
               "gpu_name": "not available"}


def profile_cell(variant="ttt-linear", seq_len=256, dtype="float32", status="ok", time_ms=1.0, peak_bytes=2**20,
                 message="", **extra):
    """The two tidy rows (forward, forward+backward) of one profiling cell; fwd+bwd costs three forwards."""
    config = {"suite": "unit", "variant": variant, "layer": variant.split("@")[0], "seq_len": seq_len, "batch": 1,
              "d_model": 64, "n_heads": 4, "dtype": dtype, "device": "cpu", "seed": 0, "knobs": "{}"}
    config = {**config, **ENVIRONMENT, **extra}
    config["config_hash"] = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()[:16]
    ok = status == "ok"
    return [{**config, "measurement": measurement, "status": status, "message": message,
             "time_ms": time_ms * factor if ok else None, "peak_bytes": peak_bytes * factor if ok else None,
             "flops": 1e9 * factor if ok else None}
            for measurement, factor in (("forward", 1.0), ("forward_backward", 3.0))]


def train_cell(variant="ttt-linear", task="mnist", accuracy=0.5, losses=(2.0, 1.5), status="ok"):
    """A training cell: its 'train' row and one 'loss_by_position' row per loss."""
    config = {"suite": "unit-train", "variant": variant, "layer": variant, "seq_len": 64, "batch": 8, "d_model": 32,
              "n_heads": 2, "dtype": "float32", "device": "cpu", "seed": 0, "knobs": "{}", "task": task,
              "task_name": task, "task_options": "{}", "n_layers": 2, "match_params": None,
              "train_settings": '{"steps": 10}', **ENVIRONMENT}
    config["config_hash"] = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()[:16]
    train = {**config, "measurement": "train", "status": status, "message": "", "accuracy": accuracy,
             "eval_loss_nats": losses[-1], "train_time_s": 3.0, "position": None}
    positions = [{**config, "measurement": "loss_by_position", "status": status, "message": "", "position": float(i),
                  "eval_loss_nats": loss} for i, loss in enumerate(losses)]
    return [train, *positions]


def write_set(root: Path, cells: list[list[dict]]) -> Path:
    store = ResultStore(root)
    for rows in cells:
        store.write_cell(rows[0]["config_hash"], rows)
    return root


def grid(**changes):
    """Six profiling cells: three variants at two lengths; `changes[(variant, seq_len)]` overrides one cell."""
    return [profile_cell(variant, seq_len, **{"time_ms": seq_len / 100, **changes.get(f"{variant}_{seq_len}", {})})
            for variant in ("attention", "linear-attention", "ttt-linear") for seq_len in (256, 1024)]


def compare_dirs(tmp_path, cells_a, cells_b, thresholds=("0.1",), metrics=None):
    a, b = write_set(tmp_path / "a", cells_a), write_set(tmp_path / "b", cells_b)
    comparison = compare_results(load_results(a), load_results(b), parse_thresholds(list(thresholds)), metrics)
    return comparison, format_comparison(comparison, str(a), str(b))


def table_lines(markdown: str, section: str) -> list[str]:
    """The lines of the first markdown table after the heading `## section`."""
    lines = markdown.splitlines()
    start = lines.index(f"## {section}")
    table = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            table.append(line)
    return table


def cells_of(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def test_identical_sets_have_no_regression_and_every_ratio_is_one(tmp_path, capsys):
    a, b = write_set(tmp_path / "a", grid()), write_set(tmp_path / "b", grid())
    comparison = compare_results(load_results(a), load_results(b))
    assert (comparison.regressions, comparison.improvements, comparison.failed) == (0, 0, False)
    assert comparison.cells_compared == 6
    assert set(comparison.tables) == {"time_ms", "peak_bytes", "flops"}
    for table in comparison.tables.values():
        assert len(table) == 12 and (table.ratio == 1.0).all() and (table.verdict == "").all()
    assert run_compare(a, b, {}, None, None) == 0
    assert "**0 regressions, 0 improvements beyond the thresholds; 6 cells compared, 0 only in A, 0 only in B.**" \
        in capsys.readouterr().out


def test_a_time_regression_beyond_the_threshold_fails_and_a_looser_threshold_passes(tmp_path, capsys):
    a = write_set(tmp_path / "a", grid())
    b = write_set(tmp_path / "b", grid(**{"ttt-linear_1024": {"time_ms": 10.24 * 1.5}}))
    assert run_compare(a, b, parse_thresholds(["0.1"]), None, None) == 1
    markdown = capsys.readouterr().out
    rows = table_lines(markdown, "time (ms)")
    header, first, second, third = (cells_of(line) for line in rows[:2] + rows[2:4])
    assert header[:3] == ["variant", "N (tokens)", "measurement"]
    assert header[-4:] == ["A time (ms)", "B time (ms)", "B/A (×)", "verdict"]
    # Both measurements of the cell regressed; they lead the table, bold.
    assert second[:2] == ["ttt-linear", "1024"] and second[-2:] == ["**1.500**", "**regression**"]
    assert third[:2] == ["ttt-linear", "1024"] and third[-1] == "**regression**"
    assert "**2 regressions, 0 improvements" in markdown
    assert run_compare(a, b, parse_thresholds(["time_ms=0.6"]), None, None) == 0
    assert run_compare(a, b, parse_thresholds(["0.1", "time_ms=0.6"]), ["time_ms"], None) == 0


def test_a_change_exactly_on_the_threshold_is_not_beyond_it(tmp_path):
    comparison, _ = compare_dirs(tmp_path, [profile_cell(time_ms=1.0)], [profile_cell(time_ms=1.1)])
    assert comparison.tables["time_ms"].ratio.tolist() == pytest.approx([1.1, 1.1])
    assert comparison.regressions == 0


def test_an_accuracy_drop_is_a_regression_and_a_rise_an_improvement(tmp_path):
    cells_a = [train_cell("ttt-linear", accuracy=0.8), train_cell("attention", accuracy=0.5)]
    cells_b = [train_cell("ttt-linear", accuracy=0.6), train_cell("attention", accuracy=0.7)]
    comparison, markdown = compare_dirs(tmp_path, cells_a, cells_b)
    accuracy = comparison.tables["accuracy"].set_index("variant")
    assert accuracy.verdict.to_dict() == {"ttt-linear": "regression", "attention": "improvement"}
    assert accuracy.ratio["ttt-linear"] == pytest.approx(0.75)
    assert comparison.tables["eval_loss_nats"].verdict.eq("").all()
    assert comparison.failed
    assert "Higher is better" in markdown


def test_loss_by_position_rows_match_on_position_and_the_train_row_on_a_null_position(tmp_path):
    comparison, _ = compare_dirs(tmp_path, [train_cell(losses=(2.0, 1.5))], [train_cell(losses=(2.0, 3.0))])
    loss = comparison.tables["eval_loss_nats"]
    assert sorted(zip(loss.measurement, loss.position, loss.ratio)) == [
        ("loss_by_position", "0", 1.0), ("loss_by_position", "1", 2.0), ("train", "—", 2.0)]


def test_ok_to_oom_is_a_regression_whatever_the_thresholds(tmp_path):
    cells_b = grid(**{"attention_1024": {"status": "oom", "message": "CUDA out of memory"}})
    comparison, markdown = compare_dirs(tmp_path, grid(), cells_b, thresholds=("1e9",))
    changes = comparison.status_changes
    assert changes[["variant", "seq_len", "a_status", "b_status", "verdict"]].values.tolist() == [
        ["attention", "1024", "ok", "oom", "regression"]]
    assert comparison.regressions == 1 and comparison.failed
    header, _, row = (cells_of(line) for line in table_lines(markdown, "Status changes"))
    assert header == ["variant", "A status", "B status", "B message", "verdict"]
    assert row == ["attention", "ok", "oom", "CUDA out of memory", "**regression**"]
    # N varies across the comparison but not in this one-row table: stated above it, not dropped.
    assert "## Status changes\n\nEvery row: N (tokens) 1024\n\n| variant |" in markdown
    assert run_compare(tmp_path / "a", tmp_path / "b", {"*": 1e9}, None, None) == 1


def test_a_failure_that_now_runs_is_an_improvement_and_a_skip_is_no_change(tmp_path):
    cells_a = [profile_cell("attention", status="timeout"), profile_cell("naive", status="skipped")]
    cells_b = [profile_cell("attention"), profile_cell("naive", status="skipped")]
    comparison, _ = compare_dirs(tmp_path, cells_a, cells_b)
    assert comparison.status_changes[["variant", "verdict"]].values.tolist() == [["attention", "improvement"]]
    assert (comparison.regressions, comparison.improvements, comparison.failed) == (0, 1, False)
    assert all(table.empty for table in comparison.tables.values())


def test_the_compared_setting_leaves_the_key_and_is_named_in_the_header(tmp_path):
    cells_b = [profile_cell(variant, seq_len, dtype="bfloat16", time_ms=seq_len / 200)
               for variant in ("attention", "linear-attention", "ttt-linear") for seq_len in (256, 1024)]
    comparison, markdown = compare_dirs(tmp_path, grid(), cells_b)
    assert comparison.settings == [Change("dtype", "float32", "bfloat16")]
    assert "dtype" not in comparison.key_columns
    assert comparison.cells_compared == 6
    assert comparison.improvements == 12 and comparison.tables["time_ms"].ratio.tolist() == [0.5] * 12
    assert "Compared setting: dtype: float32 → bfloat16" in markdown


def test_environment_differences_are_named_in_the_header(tmp_path):
    cells_b = [profile_cell(git_commit="b" * 40 + "+dirty", torch_version="2.14.0")]
    comparison, markdown = compare_dirs(tmp_path, [profile_cell()], cells_b)
    assert {change.column for change in comparison.environment} == {"git_commit", "torch_version"}
    assert f"git_commit: {'a' * 40} → {'b' * 40}+dirty" in markdown
    set_rows = markdown.split("\n\n")[1].splitlines()
    assert cells_of(set_rows[3])[3] == "bbbbbbbbbbbb+dirty"


def test_cells_in_one_set_only_are_counted_and_listed(tmp_path):
    cells_a = grid()
    cells_b = grid()[:4] + [profile_cell("delta-rule", 256)]
    comparison, markdown = compare_dirs(tmp_path, cells_a, cells_b)
    assert (comparison.cells_compared, len(comparison.only_in_a), len(comparison.only_in_b)) == (4, 2, 1)
    assert comparison.only_in_b.variant.tolist() == ["delta-rule"]
    assert not comparison.failed
    assert "4 cells compared, 2 only in A, 1 only in B" in markdown
    assert "## Only in A (2 cells)" in markdown and "## Only in B (1 cell)" in markdown


def test_no_cell_in_common_is_a_user_error(tmp_path):
    a = write_set(tmp_path / "a", [profile_cell("attention", 256), profile_cell("attention", 512)])
    b = write_set(tmp_path / "b", [profile_cell("ttt-linear", 1024), profile_cell("ttt-linear", 2048)])
    with pytest.raises(ConfigError, match="no cell is in both sets") as error:
        run_compare(a, b, {}, None, None)
    assert str(a) in str(error.value) and str(b) in str(error.value)


def test_not_a_results_folder_and_unknown_metrics_are_user_errors(tmp_path):
    a = write_set(tmp_path / "a", grid())
    with pytest.raises(ConfigError, match="not a ttt-bench results folder"):
        run_compare(a, tmp_path / "missing", {}, None, None)
    with pytest.raises(ConfigError, match="unknown metric 'speed'; known metrics: time_ms"):
        run_compare(a, a, {}, ["speed"], None)
    with pytest.raises(ConfigError, match="metric 'accuracy' has no value in set A or B"):
        run_compare(a, a, {}, ["accuracy"], None)


def measured(threads, **extra):
    """The columns a current run writes about how a cell was measured, for profile_cell."""
    return {"measure_settings": json.dumps({"min_time_s": 0.5, "repeats": 5, "threads": threads}, sort_keys=True),
            "threads": threads, **extra}


def test_rows_of_one_set_under_different_threads_are_never_averaged(tmp_path):
    repeats = [profile_cell(time_ms=t, **measured(n)) for n, t in ((1, 1.0), (2, 2.0), (3, 9.0))]
    comparison, markdown = compare_dirs(tmp_path, repeats, [profile_cell(time_ms=2.0, **measured(2))])
    assert comparison.tables["time_ms"].ratio.tolist() == [1.0, 1.0]  # A's threads = 2 cell, not a median of three
    assert (comparison.cells_compared, len(comparison.only_in_a)) == (1, 2)
    assert comparison.measure_varying == [Change("threads", "1, 2, 3", "2")]
    assert "threads: A has 1, 2, 3, B has 2. Cells are paired only where these agree" in markdown


def test_a_timing_across_different_measure_settings_gets_no_verdict_and_the_setting_comes_first(tmp_path):
    cells_a = [profile_cell(variant, n, time_ms=3 * n / 100, **measured(2)) for variant in ("attention", "ttt-linear")
               for n in (256, 1024)]
    cells_b = [profile_cell(variant, n, time_ms=n / 100, **measured(1)) for variant in ("attention", "ttt-linear")
               for n in (256, 1024)]
    cells_b[0] = profile_cell("attention", 256, time_ms=2.56, **measured(1))  # B's FLOPs of this cell below
    for row in cells_b[0]:
        row["flops"] *= 2
    comparison, markdown = compare_dirs(tmp_path, cells_a, cells_b)
    assert comparison.measure_changes == [Change("threads", "2", "1")] and comparison.cells_compared == 4
    time = comparison.tables["time_ms"]
    assert set(time.verdict) == {"better (threads: 2 → 1)"} and len(time) == 8
    assert comparison.across_settings == 8
    # FLOPs do not depend on threads: their change keeps its verdict and is counted.
    assert comparison.regressions == 2 and comparison.improvements == 0
    first_verdict = markdown.index("## ")
    assert markdown.index("**Measure settings that differ between A and B:** threads: 2 → 1.") < first_verdict
    assert "not counted as a regression or improvement" in markdown[:first_verdict]
    assert ("**2 regressions, 0 improvements beyond the thresholds (8 timings beyond them measured under other "
            "settings, threads: 2 → 1: not counted); 4 cells compared") in markdown
    assert "| **better (threads: 2 → 1)** |" in markdown


def test_the_same_settings_are_said_to_be_the_same(tmp_path):
    comparison, markdown = compare_dirs(tmp_path, [profile_cell(**measured(1))], [profile_cell(**measured(1))])
    assert comparison.measure_changes == comparison.measure_varying == [] and comparison.unrecorded == []
    assert "**Measure settings that differ between A and B:** none (measure settings and threads are the same)." \
        in markdown


def test_a_folder_from_before_measure_settings_is_compared_and_said_to_lack_them(tmp_path):
    old = [profile_cell(time_ms=1.0, threads=2)]
    comparison, markdown = compare_dirs(tmp_path, old, [profile_cell(time_ms=1.0, **measured(2))])
    assert comparison.unrecorded == ["A"] and comparison.measure_changes == [] and comparison.cells_compared == 1
    assert "set A has no measure settings (a folder from before ttt-bench stored them)" in markdown
    assert comparison.tables["time_ms"].verdict.eq("").all()


def test_zero_in_both_is_no_change_and_zero_to_positive_is_a_regression(tmp_path):
    cells_a = [profile_cell("attention", peak_bytes=0), profile_cell("ttt-linear", peak_bytes=0)]
    cells_b = [profile_cell("attention", peak_bytes=0), profile_cell("ttt-linear", peak_bytes=1024)]
    comparison, markdown = compare_dirs(tmp_path, cells_a, cells_b)
    memory = comparison.tables["peak_bytes"]
    assert memory.groupby("variant").ratio.first().to_dict() == {"attention": 1.0, "ttt-linear": math.inf}
    assert memory.verdict.tolist() == ["regression", "regression", "", ""]
    assert "**∞**" in markdown


def test_parse_thresholds_reads_a_default_and_per_metric_values():
    assert parse_thresholds([]) == {}
    assert parse_thresholds(["0.2", "time_ms=0.5", "accuracy = 0"]) == {"*": 0.2, "time_ms": 0.5, "accuracy": 0.0}


@pytest.mark.parametrize(("text", "message"), [
    ("fast", "threshold 'fast': the threshold must be a number >= 0"),
    ("-0.1", "threshold '-0.1': the threshold must be a number >= 0"),
    ("time_ms=nan", "threshold 'time_ms=nan': the threshold must be a number >= 0"),
    ("time_ms=", "threshold 'time_ms=': the threshold must be a number >= 0"),
    ("time=0.1", "threshold 'time=0.1': unknown metric 'time'; known metrics: time_ms, "),
])
def test_parse_thresholds_names_the_bad_text_and_what_is_allowed(text, message):
    with pytest.raises(ConfigError) as error:
        parse_thresholds(["0.1", text])
    assert message in str(error.value)


def test_every_numeric_column_heading_carries_its_unit(tmp_path):
    cells_b = grid(**{"ttt-linear_1024": {"time_ms": 20.0}, "attention_256": {"status": "error"}})
    _, markdown = compare_dirs(tmp_path, grid() + [[*train_cell()]], cells_b + [[*train_cell(accuracy=0.2)]])
    tables = [block.splitlines() for block in markdown.split("\n\n") if block.startswith("|")]
    assert len(tables) >= 6
    checked = 0
    for lines in tables:
        header, rows = cells_of(lines[0]), [cells_of(line) for line in lines[2:]]
        for index, heading in enumerate(header):
            values = [row[index].strip("*") for row in rows if row[index] not in ("", "—")]
            if values and all(_is_number(value) for value in values):
                assert heading.endswith(")"), f"numeric column {heading!r} has no unit"
                checked += 1
    assert checked >= 10


def _is_number(text: str) -> bool:
    try:
        float(text.replace("∞", "inf"))
    except ValueError:
        return False
    return True


def test_run_compare_prints_the_document_and_writes_it_to_out(tmp_path, capsys):
    a, b = write_set(tmp_path / "a", grid()), write_set(tmp_path / "b", grid())
    out = tmp_path / "reports" / "compare.md"
    assert run_compare(a, b, {}, None, out) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    assert printed.startswith(f"# Comparison: {a} → {b}\n")


def test_runner_output_compared_with_itself_passes_and_a_slower_copy_fails(tmp_path, capsys):
    suite = load_suite(write_suite(tmp_path, """
        name = "tiny"
        layers = ["linear-attention-causal", "ttt-linear"]
        [grid]
        seq_len = [16, 32]
        d_model = 16
        n_heads = 2
        [measure]
        repeats = 1
        slow_repeats = 1
        min_time_s = 0.001
        threads = 1
        count_flops_max_seq_len = 32
    """))
    run_suite(suite, tmp_path / "a", show_progress=False)
    assert run_compare(tmp_path / "a", tmp_path / "a", {}, None, tmp_path / "same.md") == 0
    assert "4 cells compared, 0 only in A, 0 only in B" in capsys.readouterr().out
    slower = shutil.copytree(tmp_path / "a", tmp_path / "b")
    cell = next((slower / "cells").glob("*.parquet"))
    rows = pd.read_parquet(cell)
    rows["time_ms"] *= 2
    rows.to_parquet(cell, index=False)
    assert run_compare(tmp_path / "a", slower, {"time_ms": 0.5}, None, None) == 1
    assert "**regression**" in capsys.readouterr().out


def test_markdown_table_escapes_pipes_and_shows_nulls_empty():
    frame = pd.DataFrame({"a | b": ["x|y", None], "n (count)": [1, math.nan]})
    assert markdown_table(frame).splitlines() == [
        "| a \\| b | n (count) |", "|---|---|", "| x\\|y | 1.0 |", "|  |  |"]


def test_older_folders_are_told_apart_by_the_threads_their_environment_recorded(tmp_path):
    comparison, markdown = compare_dirs(tmp_path, [profile_cell(time_ms=3.0, threads=2)],
                                        [profile_cell(time_ms=1.0, threads=1)])
    assert comparison.unrecorded == ["A", "B"] and comparison.measure_changes == [Change("threads", "2", "1")]
    assert comparison.improvements == 0 and comparison.across_settings == 2
    assert "**Measure settings that differ between A and B:** threads: 2 → 1." in markdown
