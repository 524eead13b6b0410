"""What each column means on a page: its heading with the unit and the scale from the stored unit to the
shown one. Measured columns are declared in ttt_bench/results.py (METRICS); the columns the report derives
and the configuration columns are labelled here. Reports, tables and comparisons all read their headings
here, so a number never appears without its unit.
"""

from __future__ import annotations

from ttt_bench.profile.memory_fit import CARD_BUDGETS_GIB
from ttt_bench.results import METRICS, MiB

# Columns that name a cell rather than measure it; shown as they are.
IDENTITY_LABELS = {
    "variant": "variant", "layer": "layer", "measurement": "measurement", "status": "status", "message": "message",
    "task": "task", "dtype": "dtype", "device": "device", "seed": "seed", "knobs": "knobs",
    "series": "variant", "noisy": "noisy", "noise": "why it is noise", "results_folder": "results folder",
}
# Numeric configuration columns, with their units.
CONFIG_LABELS = {
    "seq_len": "N (tokens)", "batch": "batch (sequences)", "d_model": "width D (features)",
    "n_heads": "heads (count)", "position": "position (token index)", "n_layers": "layers (count)",
    "step": "optimiser step (count)",
    "match_params": "parameters matched to (layer or count)", "task_options": "task options",
    "train_settings": "training settings", "model_settings": "backbone settings",
}
# Columns the report derives from the results.
DERIVED_LABELS = {
    "time_exponent": "time exponent (a in N^a)", "memory_exponent": "memory exponent (a in N^a)",
    "faster_from_seq_len": "faster from N (tokens)", "lighter_from_seq_len": "lighter from N (tokens)",
    "compared_at_seq_len": "largest N both ran (tokens)",
    "time_ratio": "time ratio there (variant / attention, x)",
    "memory_ratio": "memory ratio there (variant / attention, x)",
    "budget_bytes": "memory budget (MiB)", "max_seq_len": "largest N that fit (tokens)",
    "first_failing_seq_len": "first N out of memory (tokens)",
    "predicted_max_seq_len": "predicted largest N at the budget (tokens)", "searched": "bisected",
    **{f"predicted_max_seq_len_at_{gib:g}_gib": f"predicted largest N at {gib:g} GiB (tokens)"
       for gib in CARD_BUDGETS_GIB},
    "memory_order": "memory order (k: peak ~ N^k)", "fit_points": "fitted to (N: peak MiB)",
    "prediction_note": "why no prediction",
    "accuracy_mean": "accuracy mean (fraction correct)", "accuracy_sd": "accuracy sd (fraction correct)",
    "seeds": "seeds (count)", "pareto": "on the Pareto front",
    "accuracy_low": "95% interval low (fraction correct)", "accuracy_high": "95% interval high (fraction correct)",
    "chance_accuracy": "chance (fraction correct)", "floor_accuracy": "floor (fraction correct)",
    "target_share": "seeds that reached the target (fraction)", "steps_to_target_mean": "mean steps to target (count)",
    "above_floor": "above the floor and the control",
    "achieved_tflops_per_s": "achieved (TFLOP/s)", "position_end": "bin end (token index)",
    "matmul_tflops_per_s": "dense matmul here (TFLOP/s)",
    "ceiling_share": "share of the dense-matmul ceiling (fraction)",
    "other_time_share": "other operators' share of the time (fraction)",
    "outside_time_share": "share outside any operator (fraction)",
    "time_per_op_us": "time per operator, unprofiled (µs)",
    "profiler_inflation": "profiled / unprofiled time (x)",
    "mini_batch": "mini-batch size b (tokens)",
    "state_exponent": "state exponent (a in N^a)",
    "state_bytes_stated": "stated decode state (MiB)", "state_differs": "measured differs from stated",
    "state_from": "measured after",
    "decode_faster_from_seq_len": "decodes faster from N (tokens)",
    "decode_compared_at_seq_len": "largest N both decoded (tokens)",
    "decode_time_ratio": "decode time ratio there (variant / attention, x)",
    "prefill_faster_from_seq_len": "prefills faster from N (tokens)",
    "prefill_compared_at_seq_len": "largest N both prefilled (tokens)",
    "prefill_time_ratio": "prefill time ratio there (variant / attention, x)",
    "eager_time_ms": "eager time (ms)", "compiled_time_ms": "compiled time (ms)",
    "compile_error": "compile error (relative: max |compiled - eager| / max |eager|)",
}
DERIVED_SCALES = {"budget_bytes": 1 / MiB, "state_bytes_stated": 1 / MiB}


def label(column: str) -> str:
    """The column's heading: with its unit for anything measured or counted."""
    if column in METRICS:
        return METRICS[column].label
    return CONFIG_LABELS.get(column) or DERIVED_LABELS.get(column) or IDENTITY_LABELS.get(column) or column


def shown_value(column: str, value: float) -> str:
    """A stored value in its shown unit, 3 significant figures: '3.1 ms', '12 MiB'."""
    unit = label(column).rpartition("(")[2].rstrip(")")
    return f"{value * scale(column):.3g} {unit}"


def scale(column: str) -> float:
    """Stored unit -> shown unit (bytes are shown in MiB)."""
    return METRICS[column].scale if column in METRICS else DERIVED_SCALES.get(column, 1.0)
