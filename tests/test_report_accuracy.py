"""The report's accuracy over seeds (issue 19): 95% t intervals against hand-computed values, one seed never
separating anything, the pairwise separation table, above the floor and the no-mixer control, the learning curves,
the chance line and floor band on every accuracy figure, and reports of folders with and without eval rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from report_fixture import ENV, SETTING, write_fixture_results

from ttt_bench.report import figures, frames, pareto, seed_stats
from ttt_bench.report.build import build_report
from ttt_bench.report.palette import palette_of
from ttt_bench.results import ResultStore, load_results

T_975_2 = 4.302653  # t(0.975) with 2 degrees of freedom, from a table
CHANCE, FLOOR, TARGET = 1 / 16, 0.2, 0.5
EVAL_STEPS = (10, 20, 30)
# Final accuracy per seed. Intervals (t, 95%, n = 3): no-mixer [0.170, 0.270], delta-rule [0.235, 0.285],
# linear [0.300, 0.400], ttt [0.352, 0.848]; attention has one seed, so no interval.
ACCURACIES = {"no-mixer": [0.20, 0.22, 0.24], "delta-rule": [0.25, 0.26, 0.27],
              "linear-attention-causal": [0.33, 0.35, 0.37], "ttt-linear": [0.5, 0.6, 0.7], "attention-sdpa": [0.9]}
STATE_BYTES = {"no-mixer": 0, "delta-rule": 8192, "linear-attention-causal": 8192, "ttt-linear": 16640,
               "attention-sdpa": None}  # attention-sdpa is not causal: it cannot decode


def _cell_rows(layer: str, seed: int, accuracy: float) -> list[dict]:
    """A training cell as the sweep writes it: its train row and an eval row per EVAL_STEPS (accuracy rising
    linearly to the final one)."""
    cell = {**ENV, **SETTING, "suite": "accuracy", "config_hash": f"{layer}-{seed}", "variant": layer,
            "layer": layer, "seq_len": 64, "seed": seed, "batch": 32, "task": "mqar", "task_name": "mqar",
            "status": "ok", "message": "", "chance_accuracy": CHANCE, "floor_accuracy": FLOOR,
            "target_accuracy": TARGET}
    train = {**cell, "measurement": "train", "accuracy": accuracy, "flops_per_token": 1e5 * (1 + len(layer)),
             "params": 1e5, "train_time_s": 3.0, "steps": 30, "step_time_ms": 100.0,
             "state_bytes_stated": STATE_BYTES[layer], "floor_name": "guessing among the values not yet queried",
             "steps_to_target": 30 if layer == "ttt-linear" and seed > 0 else None}
    evals = [{**cell, "measurement": "eval", "step": step, "tokens_seen": step * 32 * 64,
              "accuracy": accuracy * step / EVAL_STEPS[-1], "train_flops": step * 1e9, "train_time_s": step * 0.1}
             for step in EVAL_STEPS]
    return [train, *evals]


def _frame(layers=tuple(ACCURACIES)) -> pd.DataFrame:
    rows = [row for layer in layers for seed, accuracy in enumerate(ACCURACIES[layer])
            for row in _cell_rows(layer, seed, accuracy)]
    return pd.DataFrame(rows)


def _statistics(frame: pd.DataFrame) -> pd.DataFrame:
    return seed_stats.seed_statistics(frames.train_rows(frame), frames.eval_rows(frame)).set_index("series")


def test_the_interval_is_students_t_over_the_seeds():
    assert seed_stats.t_half_width(0.1, 3) == pytest.approx(T_975_2 * 0.1 / math.sqrt(3), rel=1e-6)
    ttt = _statistics(_frame()).loc["ttt-linear"]
    half = T_975_2 * 0.1 / math.sqrt(3)
    assert ttt["seeds"] == 3 and ttt["accuracy_mean"] == pytest.approx(0.6)
    assert ttt["accuracy_sd"] == pytest.approx(0.1)
    assert (ttt["accuracy_low"], ttt["accuracy_high"]) == pytest.approx((0.6 - half, 0.6 + half), rel=1e-6)


def test_intervals_are_clipped_to_the_accuracies_possible():
    frame = _frame(("no-mixer",))
    train = frame[frame.measurement == "train"].copy()
    train["accuracy"] = [0.5, 1.0, 1.0]  # mean 0.833, t half-width 0.717: the raw interval reaches 1.55
    low, high = seed_stats.seed_statistics(train).loc[0, ["accuracy_low", "accuracy_high"]]
    assert high == 1.0 and low == pytest.approx(0.8333333 - T_975_2 * np.std([0.5, 1, 1], ddof=1) / math.sqrt(3))
    train["accuracy"] = [0.0, 0.0, 0.5]
    assert seed_stats.seed_statistics(train).loc[0, "accuracy_low"] == 0.0


def test_a_run_stopped_at_its_target_holds_its_accuracy_in_the_curve():
    frame = _frame(("ttt-linear",))
    stopped = (frame.config_hash == "ttt-linear-2") & (frame.measurement == "eval")
    frame = frame[~(stopped & (frame.step == 30))].copy()  # seed 2 reached 0.7 >= 0.5 at step 20 and stopped
    frame.loc[stopped & (frame.step == 20), "accuracy"] = 0.7
    curve = seed_stats.learning_curves(frames.train_rows(frame), frames.eval_rows(frame)).set_index("step")
    assert curve.loc[30, "seeds"] == 3 and curve.loc[30, "accuracy_mean"] == pytest.approx((0.5 + 0.6 + 0.7) / 3)
    assert curve.loc[20, "accuracy_mean"] == pytest.approx((0.5 * 2 / 3 + 0.6 * 2 / 3 + 0.7) / 3)


def test_one_seed_has_no_interval_and_is_never_separated_or_above_the_floor():
    statistics = _statistics(_frame())
    attention = statistics.loc["attention-sdpa"]
    assert attention["seeds"] == 1 and attention["accuracy_mean"] == pytest.approx(0.9)
    assert math.isnan(attention["accuracy_low"]) and math.isnan(attention["accuracy_high"])
    assert attention["above_floor"] is False
    table = seed_stats.separation(statistics.reset_index())
    others = [name for name in ACCURACIES if name != "attention-sdpa"]
    assert set(table.loc["attention-sdpa", others]) == {"—"} and set(table.loc[others, "attention-sdpa"]) == {"—"}


def test_the_separation_table_marks_only_intervals_that_do_not_overlap():
    table = seed_stats.separation(_statistics(_frame()).reset_index())
    assert table.loc["linear-attention-causal", "no-mixer"] == "above"  # 0.300 above 0.270
    assert table.loc["no-mixer", "linear-attention-causal"] == "below"
    assert table.loc["ttt-linear", "no-mixer"] == "above"
    assert table.loc["ttt-linear", "linear-attention-causal"] == "overlap"  # a higher mean is not a separation
    assert table.loc["delta-rule", "no-mixer"] == "overlap"
    assert table.loc["ttt-linear", "ttt-linear"] == "·"


def test_above_the_floor_needs_the_low_end_above_the_floor_and_the_controls_high_end():
    above = _statistics(_frame())["above_floor"]
    assert above["ttt-linear"] is True and above["linear-attention-causal"] is True
    assert above["no-mixer"] is False  # its low end 0.170 is under the floor 0.2
    assert above["delta-rule"] is False  # above the floor (0.235), not above the control (0.270)
    without_control = _statistics(_frame([name for name in ACCURACIES if name != "no-mixer"]))["above_floor"]
    assert without_control["delta-rule"] is True


def test_a_control_with_one_seed_lets_nothing_above_it():
    frame = _frame()
    frame = frame[~((frame["layer"] == "no-mixer") & (frame["seed"] > 0))]
    above = _statistics(frame)["above_floor"]
    assert not any(above[name] for name in ("ttt-linear", "linear-attention-causal", "delta-rule"))


def test_target_share_counts_a_step_to_target_or_an_evaluation_at_the_target():
    statistics = _statistics(_frame())
    # Seed 0 of ttt-linear has no steps_to_target, but its last evaluation reached 0.5.
    assert statistics.loc["ttt-linear", "target_share"] == 1.0
    assert statistics.loc["ttt-linear", "steps_to_target_mean"] == 30
    assert statistics.loc["linear-attention-causal", "target_share"] == 0.0
    assert statistics.loc["ttt-linear", "step_time_ms"] == 100.0
    no_target = _frame().assign(target_accuracy=0.0)
    assert math.isnan(_statistics(no_target).loc["linear-attention-causal", "target_share"])


def test_statistics_of_rows_without_the_new_columns_say_nothing_about_floor_or_target():
    new = ["chance_accuracy", "floor_accuracy", "target_accuracy", "step_time_ms", "state_bytes_stated",
           "floor_name"]
    frame = _frame().drop(columns=new)
    statistics = _statistics(frame[frame["measurement"] == "train"])
    ttt = statistics.loc["ttt-linear"]
    assert ttt["above_floor"] is None and math.isnan(ttt["target_share"]) and math.isnan(ttt["floor_accuracy"])
    assert ttt["step_time_ms"] == pytest.approx(3.0 * 1e3 / 30)  # from the training time over the steps
    assert ttt["accuracy_mean"] == pytest.approx(0.6)


def test_runs_set_up_differently_are_separate_series():
    frame = _frame(["ttt-linear"])
    other = frame.assign(config_hash=frame["config_hash"] + "-lr", train_settings='{"lr": 0.01}',
                         accuracy=frame["accuracy"] / 2)
    statistics = _statistics(pd.concat([frame.assign(train_settings='{"lr": 0.003}'), other]))
    assert sorted(statistics.index) == ["ttt-linear (lr=0.003)", "ttt-linear (lr=0.01)"]
    assert statistics.loc["ttt-linear (lr=0.01)", "accuracy_mean"] == pytest.approx(0.3)


def test_learning_curves_average_the_seeds_at_each_step():
    frame = _frame()
    curves = seed_stats.learning_curves(frames.train_rows(frame), frames.eval_rows(frame))
    ttt = curves[curves["series"] == "ttt-linear"].set_index("step")
    assert list(ttt.index) == list(EVAL_STEPS) and set(ttt["seeds"]) == {3}
    assert ttt.loc[30, "accuracy_mean"] == pytest.approx(0.6) and ttt.loc[10, "accuracy_mean"] == pytest.approx(0.2)
    assert ttt.loc[30, "accuracy_high"] - ttt.loc[30, "accuracy_mean"] == pytest.approx(T_975_2 * 0.1 / 3**0.5,
                                                                                        rel=1e-6)
    assert ttt.loc[20, "train_flops"] == 2e10 and ttt.loc[20, "floor_accuracy"] == FLOOR
    # The evaluations of a run that did not finish are not drawn.
    diverged = frame.assign(status=np.where((frame["config_hash"] == "ttt-linear-0") & (frame["measurement"]
                                                                                         == "train"), "diverged", "ok"))
    curves = seed_stats.learning_curves(frames.train_rows(diverged), frames.eval_rows(diverged))
    assert set(curves.loc[curves["series"] == "ttt-linear", "seeds"]) == {2}


def _chance_and_floor(ax) -> tuple[list[float], list[tuple[float, float]]]:
    """The y of the dashed 'chance' lines and the (bottom, top) of the no-evidence bands drawn on `ax`."""
    lines = [line.get_ydata()[0] for line in ax.lines if line.get_label() == "chance"]
    bands = [patch.get_bbox() for patch in ax.patches if patch.get_label() == figures.NO_EVIDENCE]
    return lines, [(band.y0, band.y1) for band in bands]


def test_every_accuracy_figure_draws_chance_and_the_floor_band():
    frame = _frame()
    statistics = seed_stats.seed_statistics(frames.train_rows(frame), frames.eval_rows(frame))
    curves = seed_stats.learning_curves(frames.train_rows(frame), frames.eval_rows(frame))
    palette = palette_of(frame)
    drawn = [figures.accuracy_vs_flops(pareto.accuracy_points(statistics), palette),
             figures.learning_curves(curves, palette, "step"), figures.learning_curves(curves, palette, "train_flops"),
             figures.accuracy_vs_state(statistics, palette)]
    for figure in drawn:
        (ax,) = figure.axes
        lines, bands = _chance_and_floor(ax)
        assert lines == [pytest.approx(CHANCE)]
        assert bands == [(pytest.approx(CHANCE), pytest.approx(FLOOR))]
        legend = [text.get_text() for text in figure.legends[0].get_texts()]
        assert "chance" in legend and figures.NO_EVIDENCE in legend


def test_accuracy_bars_are_the_t_interval_and_the_state_figure_leaves_out_layers_without_state():
    frame = _frame()
    statistics = seed_stats.seed_statistics(frames.train_rows(frame), frames.eval_rows(frame))
    palette = palette_of(frame)
    (ax,) = figures.accuracy_vs_flops(pareto.accuracy_points(statistics), palette).axes
    bars = {container.get_label(): container for container in ax.containers}
    segment = bars["ttt-linear"].lines[2][0].get_segments()[0]
    half = T_975_2 * 0.1 / math.sqrt(3)
    assert (segment[0][1], segment[1][1]) == pytest.approx((0.6 - half, 0.6 + half), rel=1e-6)
    (ax,) = figures.accuracy_vs_state(statistics, palette).axes
    drawn = {container.get_label() for container in ax.containers}
    assert drawn == {"delta-rule", "linear-attention-causal", "ttt-linear"}  # not attention-sdpa: no state
    control = [line for line in ax.lines if line.get_label() == "no-mixer (no state)"]
    assert len(control) == 1 and control[0].get_ydata()[0] == pytest.approx(0.22)
    assert ax.get_xscale() == "log"


def _write(root, frame: pd.DataFrame):
    store = ResultStore(root)
    for config_hash, rows in frame.groupby("config_hash"):
        store.write_cell(str(config_hash), rows.to_dict("records"))
    store.write_run_files(ENV, 'name = "accuracy"\n')
    return root


def test_the_report_of_training_with_evaluations_has_every_accuracy_section(tmp_path):
    frame = _frame()
    build_report([_write(tmp_path / "results", frame)], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    for heading in ("Accuracy vs FLOPs", "Learning curves", "Accuracy vs state size", "Accuracy over seeds",
                    "Which series the intervals separate"):
        assert f"\n## {heading}\n" in text
    for stem in ("accuracy-vs-flops", "learning-curves-by-step", "learning-curves-by-flops", "accuracy-vs-state"):
        assert (tmp_path / "out" / "figures" / f"{stem}.png").stat().st_size > 0
    assert "Left out, having no decode state (they cannot decode): attention-sdpa." in text
    assert "mqar, N = 64: chance 0.0625, floor 0.2 (guessing among the values not yet queried)" in text
    assert "95% Student t interval" in text and "time per training step (ms)" in text
    statistics = text[text.index("## Accuracy over seeds"):text.index("## Which series")]
    assert "| ttt-linear | 3 | 0.6 | 0.3516 | 0.8484 | 1 | 30 | yes | 100 |" in statistics
    assert "| no-mixer | 3 | 0.22 | 0.1703 | 0.2697 | 0 | — | no | 100 |" in statistics


def test_the_report_of_older_results_builds_and_says_what_they_lack(tmp_path):
    results = write_fixture_results(tmp_path / "results")  # no eval rows, no chance, floor or stated state
    assert frames.eval_rows(load_results(results)).empty
    build_report([results], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    absent = text[text.index("Not in these results:"):text.index("\n## ")]
    assert "No evaluations during training" in absent and "No stated recurrent state" in absent
    assert "\n## Accuracy over seeds\n" in text and "\n## Accuracy vs FLOPs\n" in text
    assert not (tmp_path / "out" / "figures" / "learning-curves-by-step.png").exists()
