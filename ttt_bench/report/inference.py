"""The inference sections of `ttt-bench report`, for a setting group's prefill and decode rows (profile/inference.py,
docs/measurement.md): decode time per generated token and prefill time against the context N, the state a layer
carries between tokens, the memory of serving a context of N, and the N from which a layer decodes (and prefills)
faster than softmax attention. Exponents and crossovers come from report/scaling.py, as in the training sections.
"""

from __future__ import annotations

import math

import pandas as pd

from ttt_bench.report import compiled, figures, scaling
from ttt_bench.report.document import Section, Table
from ttt_bench.report.settings import name_the_settings
from ttt_bench.report.tables import MISSING, shown
from ttt_bench.results import NOISY_SPREAD

# What each timed inference pass is, for titles, axes and captions.
TIME_TITLES = {"decode": "Decode time per token vs context", "prefill": "Prefill time vs context"}
TIME_AXES = {"decode": "time per generated token (ms)", "prefill": "time per prefill call (ms)"}
VERBS = {"decode": "decodes", "prefill": "prefills"}
TIME_WHAT = {
    "decode": ("Median wall-clock time (ms) of one generated token (a decode step: B sequences, one token each, "
               "under torch.inference_mode) after a prompt of N tokens, against the context N (tokens), log-log, "
               "with its p20-p80 band over the timed samples (`decode_samples` in [measure], 32 by default; each "
               "sample a run of consecutive steps lasting 1 ms or more, `tokens_per_sample`, divided by its steps). "
               "The prompt is prefilled first, in chunks of `prefill_chunk` tokens, and its state kept "
               "as a server keeps it; each step extends that state by one token, so a step's context is N plus the "
               "few dozen tokens generated before it. Softmax attention reads its whole KV cache at every token, so "
               "its time tends to N^1 once N outgrows the per-token overhead; a layer whose state has a fixed size "
               "tends to N^0."),
    "prefill": ("Median wall-clock time (ms) of one prefill call: the prompt of N tokens (B sequences) through the "
                "layer under torch.inference_mode, returning the state a decode continues from (a layer that is not "
                "causal: its forward, with no state), against the context N (tokens), log-log, with its p20-p80 "
                "band."),
}
CONTEXT_AXIS = "context N (prompt tokens)"
# A decode step of a fixed-state layer takes the same time at every N, measured cell by cell: on a shared CPU its
# median drifts between cells by more than each cell's p20-p80 band (TTT-Linear's 0.23 to 0.39 ms over three runs of
# suites/inference.toml, reports/cpu-inference/NOTES.md). A fall of decode time with N refuses a fit or a crossover
# only beyond that band by more than the factor a single timing is trusted to (NOISY_SPREAD).
FALL_TOLERANCE = {"decode": NOISY_SPREAD}
NO_INFERENCE_TIMES = ("No {measurement} timings in these results: run a suite with measurements = [\"prefill\", "
                      "\"decode\"] and \"time\" in its metrics.")


def sections(writer, rows: pd.DataFrame, points: pd.DataFrame, setting: str, suffix: str,
             requested_reference: str | None = None) -> list[Section]:
    """The inference sections of one setting group: `rows` its prefill and decode rows, `points` their
    frames.scaling_points; `writer` saves figures (build._SectionWriter)."""
    reference = reference_variant(points, requested_reference)
    crossovers = (scaling.crossovers(points, reference, FALL_TOLERANCE) if reference
                  else pd.DataFrame(columns=scaling.CROSSOVER_COLUMNS))
    found = [_time_section(writer, points, measurement, reference, crossovers, setting, suffix)
             for measurement in ("decode", "prefill")]
    found += [_state_section(writer, points, compiled.backend_twins(rows), setting, suffix),
              _serving_memory_section(writer, points, reference, crossovers, setting, suffix),
              _faster_section(points, reference, crossovers, setting)]
    name_the_settings(found, rows)
    return found


def reference_variant(points: pd.DataFrame, requested: str | None = None) -> str | None:
    """The softmax-attention variant the inference passes are compared with: as requested, else (scaling's
    preference) one that decoded, so that the decode comparison has a reference; else any attention variant."""
    if requested is not None:
        return scaling.reference_variant(points["variant"].unique(), requested)
    decoded = points[(points["measurement"] == "decode") & (points["status"] == "ok")]["variant"].unique()
    return scaling.reference_variant(decoded) or scaling.reference_variant(points["variant"].unique())


def _measured_series(points: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The points of the series that have at least one 'ok' value of `metric` (the rest are listed among the
    cells that did not finish, or were not measured that way: a compiled cell has no tracked memory)."""
    measured = points[(points["status"] == "ok") & points[metric].notna()]["series"].unique()
    return points[points["series"].isin(measured)]


def _exponents(points: pd.DataFrame, metric: str) -> pd.DataFrame:
    """scaling.exponents, each rounded to 6 decimals: a state that does not grow fits as N^0, not N^-1.6e-15."""
    fits = scaling.exponents(points, metric, FALL_TOLERANCE)
    return fits.assign(exponent=fits["exponent"].round(6) + 0.0)


def _exponent_table(fits: pd.DataFrame, column: str) -> pd.DataFrame:
    """Series and the fitted exponent, or in its place why none was fitted."""
    exponent = fits["exponent"].astype(object).where(fits["not_fitted"] == "", fits["not_fitted"])
    return pd.DataFrame({"series": fits["series"], column: exponent})


def _marks(crossovers: pd.DataFrame, measurement: str, column: str) -> pd.DataFrame:
    marks = crossovers[crossovers["measurement"] == measurement][["series", "measurement", column]]
    marks = marks.rename(columns={column: "seq_len"})
    return marks[marks["seq_len"].notna()]


def _fit_text() -> str:
    return (f"The legend gives each series' exponent a in value ~ N^a, fitted by least squares over the N within a "
            f"factor {scaling.FIT_SPAN} of its largest measured N, or why none was fitted")


def _time_section(writer, points, measurement, reference, crossovers, setting, suffix) -> Section:
    title = f"{TIME_TITLES[measurement]} ({setting})"
    mine = _measured_series(points[points["measurement"] == measurement], "time_ms")
    if mine.empty:
        return Section(title, NO_INFERENCE_TIMES.format(measurement=measurement))
    fits = _exponents(mine, "time_ms")
    marks = _marks(crossovers, measurement, "faster_from_seq_len")
    star = f"{VERBS[measurement]} faster than {reference}" if reference else "faster than softmax attention"
    figure = figures.scaling(mine, "time_ms", fits, marks, writer.palette, setting, y_label=TIME_AXES[measurement],
                             star_label=star, x_label=CONTEXT_AXIS)
    stem = writer.save(figure, f"{measurement}-time-vs-context{suffix}")
    hollow = (f" A hollow marker is a noisy timing (spread p80/p20 > {NOISY_SPREAD:g}, see Noisy timings): no "
              f"exponent or crossover is read from it." if mine["noisy"].any() else "")
    against = (f"A star marks the N from which the series {VERBS[measurement]} faster than {reference} measured "
               f"alike, for good: its p80 below attention's p20 there and at every larger N both ran (see Decoding "
               f"faster than attention)." if reference else "No softmax-attention variant here to star a crossover "
                                                              "against.")
    cross = " A cross marks the first N that ran out of memory." if (mine["status"] == "oom").any() else ""
    tolerance = FALL_TOLERANCE.get(measurement, 1.0)
    falling = ("falling as N grows beyond its p20-p80 band" if tolerance == 1.0 else
               f"falling as N grows beyond its p20-p80 band by more than {tolerance:g}x: a fixed-size state's step "
               f"time drifts between cells by more than one cell's band")
    caption = (f"{TIME_WHAT[measurement]} {_fit_text()} (fewer than two N, a noisy timing among them, or the time "
               f"{falling}).{hollow}{cross} {against}")
    if measurement == "decode":
        caption += " Layers that are not causal have no decode: they are listed under Cells that did not finish."
    values = mine[["series", "seq_len", "status", "time_ms", "time_p20_ms", "time_p80_ms", "time_spread", "noisy",
                   "tokens_per_s"]]
    throughput = ("throughput is B generated tokens over the time per step" if measurement == "decode"
                  else "throughput is B x N prompt tokens over the time per call")
    return Section(title, caption, [stem], [
        Table("Fitted time exponents", shown(_exponent_table(fits, "time_exponent"))),
        Table(f"Measured {measurement} times ({throughput})", shown(values))])


def _state_section(writer, points, twins, setting, suffix) -> Section:
    title = f"Decode state vs context ({setting})"
    measured = points[(points["status"] == "ok") & points["state_bytes"].notna()]
    if measured.empty:
        return Section(title, "No decode state in these results: it is measured on prefill and decode rows of "
                              "causal layers (a suite with measurements = [\"prefill\", \"decode\"]).")
    # The decode rows' state (the prompt prefilled in chunks, as served) where there are any, else the prefill's.
    taken = "decode" if (measured["measurement"] == "decode").any() else "prefill"
    state = _measured_series(points[points["measurement"] == taken], "state_bytes")
    fits = _exponents(state, "state_bytes")
    drawn = _without_compiled_copies(state, twins)
    no_marks = pd.DataFrame(columns=["series", "measurement", "seq_len"])
    figure = figures.scaling(drawn, "state_bytes", fits[fits["series"].isin(drawn["series"])], no_marks,
                             writer.palette, setting, y_label="state after the prompt (MiB)", x_label=CONTEXT_AXIS,
                             panel_titles={taken: "state carried to the next token, after a prompt of N tokens"})
    stem = writer.save(figure, f"state-vs-context{suffix}")
    how = ("the prompt prefilled in chunks of `prefill_chunk` tokens, as the decode rows serve it" if taken == "decode"
           else "the prompt prefilled in one call (the prefill rows; no decode rows here)")
    copies = (" A compiled series whose state is its eager twin's at every N both ran is drawn once, as the eager "
              "one; the tables list both." if len(drawn["series"].unique()) < len(state["series"].unique()) else "")
    caption = (f"The bytes (MiB = 2^20 bytes) of the state a layer carries from one token to the next, measured "
               f"from its tensors after a prompt of N tokens ({how}), against the context N (tokens), log-log. "
               f"Softmax attention's state is its KV cache, keys and values of every token (2 x B x N x D values), "
               f"so it grows as N^1; a linear-attention, recurrent or TTT layer's is its fast weights (for TTT, "
               f"with the tokens of an unfinished mini-batch), which do not grow with N (N^0). {_fit_text()}. The "
               f"table gives, per series and N, the measured bytes beside the layer's stated figure "
               f"(decode_state_numel x the element size of the dtype) and says where they differ. Layers that are "
               f"not causal carry no state and are not drawn.{copies}")
    ok = state[state["status"] == "ok"]
    # Where the layer states no figure there is nothing to differ from: a dash, not a flag.
    table = ok[["series", "seq_len", "state_bytes", "state_bytes_stated"]].assign(
        state_differs=[bool(measured != stated) if math.isfinite(stated) else None
                       for measured, stated in zip(ok["state_bytes"].astype(float),
                                                   ok["state_bytes_stated"].astype(float))])
    return Section(title, caption, [stem], [
        Table("Fitted state exponents", shown(_exponent_table(fits, "state_exponent"))),
        Table("Measured and stated state", shown(table))])


def _without_compiled_copies(state: pd.DataFrame, twins: pd.DataFrame) -> pd.DataFrame:
    """`state` less each compiled series whose state equals its eager twin's (compiled.backend_twins) at every N
    both ran: drawn over each other, the two would hide one another."""
    ok = state[state["status"] == "ok"].merge(twins, on="series")
    eager = ok[ok["backend"] == "eager"].set_index(["base", "seq_len"])["state_bytes"]
    copies = []
    for name, mine in ok[ok["backend"] != "eager"].groupby("series"):
        pairs = [(eager[key], value) for key, value in zip(zip(mine["base"], mine["seq_len"]), mine["state_bytes"])
                 if key in eager.index]
        if pairs and all(theirs == value for theirs, value in pairs):
            copies.append(name)
    return state[~state["series"].isin(copies)]


def _serving_memory_section(writer, points, reference, crossovers, setting, suffix) -> Section:
    title = f"Serving memory vs context ({setting})"
    serving = _measured_series(points[points["measurement"] == "decode"], "peak_bytes")
    if serving.empty:
        return Section(title, "No serving memory in these results: it is the tracked peak of the decode rows, "
                              "measured on eager cells with \"memory\" in the suite's metrics.")
    fits = _exponents(serving, "peak_bytes")
    marks = _marks(crossovers, "decode", "lighter_from_seq_len")
    figure = figures.scaling(serving, "peak_bytes", fits, marks, writer.palette, setting,
                             y_label="serving memory: peak tracked (MiB)", x_label=CONTEXT_AXIS,
                             panel_titles={"decode": "prompt of N tokens prefilled in chunks, then decoded"},
                             star_label=f"lighter than {reference}" if reference else "lighter than attention")
    stem = writer.save(figure, f"serving-memory-vs-context{suffix}")
    lighter = (f" A star marks the N from which the series needs less than {reference} measured alike, at every "
               f"larger N both ran." if reference else "")
    cross = " A cross marks the first N that ran out of memory." if (serving["status"] == "oom").any() else ""
    caption = (f"Peak tracked memory (MiB = 2^20 bytes: live tensor bytes, weights and inputs included) of serving a "
               f"context of N tokens: the largest total over the prompt prefilled in chunks of `prefill_chunk` "
               f"tokens (each chunk's input made and dropped in turn, the state kept) and the first "
               f"`decode_samples` tokens generated after it, against the context N (tokens), log-log. It is what must "
               f"fit to serve a context of N (`ttt-bench oom` with [oom] measurement = \"decode\" bisects it). "
               f"Measured on eager cells only: compiled kernels allocate outside the tracker, so compiled series "
               f"are not drawn. {_fit_text()} (fewer than two N, or the peak falling as N grows).{cross}{lighter}")
    table = _exponent_table(fits, "memory_exponent")
    if reference:
        mine = crossovers[crossovers["measurement"] == "decode"]
        table = table.merge(mine[["series", "lighter_from_seq_len", "compared_at_seq_len", "memory_ratio"]],
                            on="series", how="left")
    ok = serving[serving["status"].isin(["ok", "oom"])]
    values = ok[["series", "seq_len", "status", "peak_bytes", "state_bytes"]]
    return Section(title, caption, [stem], [
        Table("Fitted memory exponents" + (f" and the crossover with {reference}" if reference else ""),
              shown(table)),
        Table("Serving memory and state per N", shown(values))])


def _faster_section(points, reference, crossovers, setting) -> Section:
    title = f"Decoding faster than attention ({setting})"
    if reference is None:
        return Section(title, "No softmax-attention variant in these results to compare decoding with (pass "
                              "--reference).")
    if points["time_ms"].isna().all():
        return Section(title, "No prefill or decode timings in these results to compare with attention's (a "
                              "memory-only run, such as `ttt-bench oom`'s probes).")
    table = faster_than_reference(points, reference, crossovers)
    if table.empty:
        return Section(title, f"No series here besides {reference} to compare with it.")
    caption = (f"Per series, the first context N (tokens) from which it decodes faster than {reference} measured "
               f"with the same settings: its p80 time per generated token below attention's p20 at that N and at "
               f"every larger N both ran (attention out of memory counts as beaten), so a tie within the timing "
               f"noise does not count; the same for the prefill of the prompt. '{MISSING}' where it never does "
               f"within the sweep; in its place, why none is read (noisy timings, a time that falls as N grows "
               f"beyond its p20-p80 band, no such rows). The ratios (series / attention, x; below 1 is faster) are "
               f"at the largest N both ran. The same N are starred in the time figures.")
    return Section(title, caption, tables=[Table(f"Against {reference}", shown(table))])


def faster_than_reference(points: pd.DataFrame, reference: str, crossovers: pd.DataFrame) -> pd.DataFrame:
    """One row per series other than the reference's: per pass (decode, prefill), the first N from which it is
    faster for good (scaling.crossovers), or why there is none, the largest N both ran and the time ratio there."""
    rows = []
    for name, mine in points[points["variant"] != reference].groupby("series", sort=False):
        row: dict[str, object] = {"series": name}
        for measurement in ("decode", "prefill"):
            passes = mine[mine["measurement"] == measurement]
            found = crossovers[(crossovers["series"] == name) & (crossovers["measurement"] == measurement)]
            faster, at, ratio = MISSING, math.nan, math.nan
            if passes.empty:
                faster = f"no {measurement} rows"
            elif not (passes["status"] == "ok").any():
                faster = f"no {measurement}: {', '.join(dict.fromkeys(passes['status']))}"
            elif found.empty:
                faster = f"no {reference} {measurement} measured alike"
            else:
                cross = found.iloc[0]
                at, ratio = cross["compared_at_seq_len"], cross["time_ratio"]
                if cross["faster_refused"]:
                    faster = cross["faster_refused"]
                elif math.isfinite(cross["faster_from_seq_len"]):
                    faster = cross["faster_from_seq_len"]
            row |= {f"{measurement}_faster_from_seq_len": faster, f"{measurement}_compared_at_seq_len": at,
                    f"{measurement}_time_ratio": ratio}
        rows.append(row)
    columns = ["series", *(f"{m}_{c}" for m in ("decode", "prefill")
                           for c in ("faster_from_seq_len", "compared_at_seq_len", "time_ratio"))]
    return pd.DataFrame(rows, columns=columns)
