"""`ttt-bench` command line: run a suite, find the out-of-memory frontier, report on results, compare two result
sets, gate an asv run against the committed baseline, list layers, tasks and suites, check a layer of your own.

User errors (a bad suite file, an unknown layer, a locked results folder) print one line without a
traceback and exit 2, having written nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from ttt_bench import __version__
from ttt_bench.errors import ConfigError, DiskFullError, UnknownLayerError


def _list(args: argparse.Namespace) -> None:
    from ttt_bench import layers
    from ttt_bench.sweep.parse import load_suite
    from ttt_bench.sweep.shipped import shipped_suites
    from ttt_bench.training import tasks

    _import_layer_modules(args.imports)
    selected = args.layers or layers.names()
    for name in selected:
        variant = layers.variant(name)
        settings = ", ".join(f"{key}={value!r}" for key, value in variant.settings.items())
        origin = "" if layers.is_shipped(name) else f"  (from {variant.layer_cls.__module__})"
        print(f"{name:34} {variant.layer_cls.__name__}({settings}){origin}")
        if args.knobs:
            for knob in layers.knobs(name):
                print(f"    {knob.name} = {knob.default!r}  # {knob.doc}")
    if args.layers:
        return
    print("\ntasks (for suites with metrics = ['accuracy']):")
    for name in tasks.task_names():
        kind = tasks.task_kind(name)
        print(f"  {name:20} {kind.description} (lr {kind.default_lr:g} unless [train] sets one)")
        if args.knobs:
            for option, (default, doc) in tasks.option_docs(name).items():
                print(f"    {option} = {default!r}  # {doc}")
    print("\nsuites:")
    for path in shipped_suites():
        try:
            suite = load_suite(path)
            kind = "training cells" if suite.trains else "cells"
            size = f"{len(suite.cells())} {kind}" if suite.grid["seq_len"] is not None else "OOM frontier"
            print(f"  {path.stem:20} {size:>14}  {suite.description}")
        except ConfigError as error:
            print(f"  {path.stem:20} {'invalid':>14}  {error}")


def _import_layer_modules(specs: list[str]) -> list[str]:
    """Import each module or .py file (relative to the working directory); the layers they register."""
    from ttt_bench.layers.user_modules import import_layer_module

    registered: list[str] = []
    for spec in specs:
        module = import_layer_module(spec)
        if not module.layers:
            raise ConfigError(f"{spec!r} registers no layer; decorate its SequenceMixer subclass with "
                              f"@register('a-name') (docs/your-layer.md)")
        registered += [name for name in module.layers if name not in registered]
    return registered


def _check(args: argparse.Namespace) -> int:
    from ttt_bench import layers
    from ttt_bench.layer_check import FAILED, run_checks, summary

    selected = _import_layer_modules(args.modules)
    if args.layer:
        selected = [layers.variant(name).name for name in args.layer]
    width = max(map(len, selected))
    results = []
    for name in selected:
        for result in run_checks(name):
            print(result.line(width), flush=True)
            results.append(result)
    print(summary(results))
    return 1 if any(result.outcome == FAILED for result in results) else 0


def _run(args: argparse.Namespace) -> int:
    from ttt_bench.config import path_inside
    from ttt_bench.results import ResultStore
    from ttt_bench.sweep.parse import load_suite
    from ttt_bench.sweep.runner import run_suite
    from ttt_bench.sweep.shipped import resolve_suite_path

    suite = load_suite(resolve_suite_path(args.suite))
    out = args.out or path_inside(Path("results"), suite.name)
    if args.dry_run:
        _print_plan(suite, ResultStore(out), args)
        return 0
    summary = run_suite(
        suite, out, retry_failed=args.retry_failed, retry_noisy=args.retry_noisy, add=args.add,
        executor=_executor(args), show_progress=not args.quiet,
    )
    counts = ", ".join(f"{count} {status}" for status, count in sorted(summary.statuses.items())) or "nothing to run"
    kept = f"; this run's suite and environment in {out}/runs/{summary.run_id}/" if summary.run_id else ""
    print(f"{suite.name}: {summary.total} cells, {summary.already_done} already done, ran {summary.ran} "
          f"({counts}); results in {out}/ (ttt_bench.results.load_results){kept}")
    if not summary.unfinished:
        return 0
    which = ", ".join(f"{count} {status}" for status, count in summary.unfinished.items())
    advice = ["each cell's message says what happened (`ttt-bench report` lists them)"]
    if "timeout" in summary.unfinished:
        advice.append("a timeout wants a larger [measure] timeout_s, fewer threads or an idle machine")
    print(f"ttt-bench: {sum(summary.unfinished.values())} of {summary.total} cells gave no result ({which}): "
          f"{'; '.join(advice)}; then rerun with --retry-failed")
    return 1


def _print_plan(suite, store, args: argparse.Namespace) -> None:
    from ttt_bench.sweep.runner import check_settings_match, needs_run

    cells = suite.cells()
    if not args.add:
        check_settings_match(cells, store)
    stored = store.stored_cells()
    to_run = noisy_kept = 0
    for cell in cells:
        done = stored.get(cell.config_hash)
        runs = needs_run(cell, done, args.retry_failed, args.retry_noisy)
        to_run += runs
        noisy_kept += done is not None and done.noisy and not runs
        was = f" ({done.status}{', noisy' if done.noisy else ''})" if done is not None else ""
        state = ("run" if runs else "done") + was
        skip = f"  skipped: {cell.skip_reason}" if cell.skip_reason else ""
        print(f"{cell.config_hash}  {state:16} {cell.describe()}{skip}")
    kept = f"; {noisy_kept} done but noisy (--retry-noisy reruns them)" if noisy_kept else ""
    print(f"{len(cells)} cells, {to_run} to run{kept}", file=sys.stderr)


def _executor(args: argparse.Namespace):
    if args.executor == "local":
        return None
    from ttt_bench.sweep.slurm import SubmititExecutor

    return SubmititExecutor(
        cluster="slurm" if args.executor == "slurm" else "local", partition=args.partition,
        gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
        time_limit_min=args.time_limit, cells_per_job=args.cells_per_job,
    )


def _oom(args: argparse.Namespace) -> None:
    import dataclasses

    from ttt_bench.config import path_inside
    from ttt_bench.sweep.oom import frontier_table, settings_lines
    from ttt_bench.sweep.parse import load_suite
    from ttt_bench.sweep.schema import DEVICE_PATTERN
    from ttt_bench.sweep.shipped import resolve_suite_path

    suite = load_suite(resolve_suite_path(args.suite))
    if args.budget_gib is not None:
        suite = dataclasses.replace(suite, oom=dataclasses.replace(suite.oom, budget_gib=args.budget_gib))
    if args.device is not None:
        if not DEVICE_PATTERN.fullmatch(args.device):
            raise ConfigError(f"--device {args.device!r} is not allowed; use 'cpu', 'cuda' or 'cuda:<index>'")
        suite = dataclasses.replace(suite, grid={**suite.grid, "device": [args.device]})
    out = args.out or path_inside(Path("results"), suite.name)
    print("\n".join(settings_lines(suite)), flush=True)
    table = frontier_table(suite, out, show_progress=not args.quiet)
    columns = ["variant", "status", "max_seq_len", "first_failing_seq_len", "peak_bytes_at_max", "budget_bytes",
               "memory_order", "predicted_max_seq_len",
               *[c for c in table.columns if c.startswith("predicted_max_seq_len_at_")]]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:,.0f}"))
    for variant, note in table.loc[table["prediction_note"] != "", ["variant", "prediction_note"]].itertuples(
            index=False):
        print(f"{variant}: no prediction: {note}")
    print(f"\nfrontier table: {out}/oom_frontier.csv; probes: {out}/cells/")


def _report(args: argparse.Namespace) -> None:
    from ttt_bench.report.build import ReportOptions, build_report, default_report_folder

    out = args.out or default_report_folder(args.results)
    built = build_report(args.results, out, ReportOptions(reference=args.reference, peak_tflops=args.peak_tflops,
                                                         strict=args.strict))
    print(f"report: {built.page} (self-contained), {out / 'report.md'}, figures in {out / 'figures'}/")
    if args.out is None:
        print(f"to keep it with the committed reports: --out reports/{built.name}")


def _compare(args: argparse.Namespace) -> int:
    import traceback

    from ttt_bench.report.compare import parse_thresholds, run_compare

    try:
        return run_compare(args.a, args.b, parse_thresholds(args.threshold), args.metric or None, args.out,
                           args.strict)
    except ConfigError:
        raise
    except Exception:  # CI reads exit 1 as a regression: a crash must not exit 1
        traceback.print_exc()
        print("ttt-bench: error: compare failed (above); this is not a regression verdict", file=sys.stderr)
        return 2


def _gate(args: argparse.Namespace) -> int:
    from ttt_bench.profile.env import git_commit
    from ttt_bench.regression.gate import refresh_baseline, run_gate
    from ttt_bench.results import NOT_AVAILABLE

    commit = args.commit or git_commit().removesuffix("+dirty")
    if commit == NOT_AVAILABLE:
        raise ConfigError("the ttt-bench checkout is not a git repository; give the asv run's commit with --commit")
    if args.refresh:
        return refresh_baseline(args.baseline, args.results, commit)
    return run_gate(args.baseline, args.results, commit, args.time_factor, args.out)


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: it must be > 0")
        return value
    return parse


def _check_out_folder(args: argparse.Namespace) -> None:
    """An --out folder may not exist yet, but it must not be a file (writing into it would fail midway)."""
    out = getattr(args, "out", None)
    if args.command in ("run", "oom", "report") and out is not None and out.is_file():
        raise ConfigError(f"--out {out} is a file; give a folder (one that does not exist yet is made)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttt-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list the registered layers, the tasks and the shipped suites")
    ls.add_argument("layers", nargs="*", help="layer names (default: all, and the tasks and suites)")
    ls.add_argument("--knobs", action="store_true", help="show each layer's knobs and each task's options")
    ls.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="first import this module or .py file, so that the layers it registers are listed too "
                         "(repeatable)")
    ls.set_defaults(handler=_list)

    check = commands.add_parser("check", help="run the layer contract on your layers (shapes, dtypes, determinism, "
                                              "gradients, causality, FLOP counts, reference form); exit 1 on a failure")
    check.add_argument("modules", nargs="+", metavar="MODULE",
                       help="a .py file or a module name that registers layers (docs/your-layer.md)")
    check.add_argument("--layer", action="append", default=[], metavar="NAME",
                       help="check only this registered layer (repeatable; default: every layer the modules register)")
    check.set_defaults(handler=_check)

    run = commands.add_parser("run", help="run a suite's cells into a results folder (resumable)")
    run.add_argument("suite", help="a suite file, or the name of a shipped suite (see `ttt-bench ls`)")
    run.add_argument("--out", type=Path, help="results folder (default results/<suite name>)")
    run.add_argument("--retry-failed", action="store_true", help="also rerun cells that ended in error, oom or timeout")
    run.add_argument("--retry-noisy", action="store_true",
                     help="also rerun cells with a timing flagged noisy (spread p80/p20 past the threshold of "
                          "docs/measurement.md)")
    run.add_argument("--add", action="store_true",
                     help="run into a folder whose cells were measured with other [measure] settings: both are kept "
                          "and reports draw them as separate series (without it such a run is refused)")
    run.add_argument("--dry-run", action="store_true", help="list the cells and what a run would do; run nothing")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                     help="where cells run: worker processes here (default), Slurm jobs through submitit, or "
                          "submitit's local executor (subprocesses here, the cluster path)")
    cluster = run.add_argument_group("cluster options (--executor slurm or submitit-local)")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per job (default 0)")
    cluster.add_argument("--cpus-per-task", type=_positive(int), help="CPU cores per job")
    cluster.add_argument("--mem-gb", type=_positive(float), help="memory per job in GB")
    cluster.add_argument("--time-limit", type=_positive(int), default=60, help="minutes per job (default 60)")
    cluster.add_argument("--cells-per-job", type=_positive(int), default=8, help="cells per job (default 8)")
    run.set_defaults(handler=_run)

    oom = commands.add_parser("oom", help="find each layer's largest N under a memory budget")
    oom.add_argument("suite", help="a suite file or shipped suite name; its [oom] table sets the search")
    oom.add_argument("--out", type=Path, help="results folder (default results/<suite name>)")
    oom.add_argument("--budget-gib", type=_positive(float), help="memory budget in GiB (overrides [oom].budget_gib)")
    oom.add_argument("--device", help="search on this device ('cpu', 'cuda', 'cuda:<i>') instead of grid.device")
    oom.add_argument("--quiet", action="store_true", help="no progress display")
    oom.set_defaults(handler=_oom)

    report = commands.add_parser("report", help="figures, report.md and a self-contained report.html from results")
    report.add_argument("results", nargs="+", type=Path, help="results folders (their rows are reported together)")
    report.add_argument("--out", type=Path, help="report folder (default: report/ inside the first results "
                                                   "folder, so a committed report under reports/ is never overwritten)")
    report.add_argument("--reference", help="the softmax-attention variant for the crossover (default: the first of "
                                            "attention-sdpa-causal, attention-sdpa, attention-naive-causal, ...)")
    report.add_argument("--peak-tflops", type=_positive(float),
                        help="a peak TFLOP/s to draw on the throughput figure (GPUs in the datasheet table get theirs)")
    report.add_argument("--strict", action="store_true",
                        help="fail (exit 2) on a cell file that cannot be read, instead of skipping it with a warning")
    report.set_defaults(handler=_report)

    compare = commands.add_parser("compare", help="two result sets side by side; exit 1 on a regression")
    compare.add_argument("a", type=Path, help="the baseline results folder")
    compare.add_argument("b", type=Path, help="the results folder compared with it")
    compare.add_argument("--threshold", action="append", default=[], metavar="[METRIC=]FRACTION",
                         help="relative change beyond which a metric counts (default 0.1); repeat to set one metric, "
                              "e.g. --threshold 0.05 --threshold time_ms=0.5")
    compare.add_argument("--metric", action="append", help="compare only this metric (repeatable)")
    compare.add_argument("--out", type=Path, help="also write the comparison (markdown) here")
    compare.add_argument("--strict", action="store_true",
                         help="fail (exit 2) on a cell file that cannot be read, instead of skipping it with a warning")
    compare.set_defaults(handler=_compare)

    from ttt_bench.regression.gate import DEFAULT_BASELINE, DEFAULT_RESULTS, TIME_FACTOR

    gate = commands.add_parser("gate", help="this commit's asv run against the committed baseline; exit 1 on a "
                                            "regression (or --refresh the baseline from it)")
    gate.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help=f"default {DEFAULT_BASELINE}")
    gate.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                      help=f"asv's results_dir (default {DEFAULT_RESULTS})")
    gate.add_argument("--commit", help="the commit the asv run was saved under (default: the checkout's HEAD)")
    gate.add_argument("--time-factor", type=float, default=TIME_FACTOR,
                      help=f"a timing regresses beyond this many times the baseline's (default {TIME_FACTOR:g})")
    gate.add_argument("--out", type=Path, help="also write the comparison (markdown) here")
    gate.add_argument("--refresh", action="store_true",
                      help="copy the commit's asv result over the baseline instead (deliberately; then commit it)")
    gate.set_defaults(handler=_gate)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, systemd and docker stop send), raised where the run is so that it stops as on Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does (workers killed, finished cells kept); signal handlers can only be
    set from the main thread, so a main() called from another thread keeps the default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            _check_out_folder(args)
            code = args.handler(args)
    except (ConfigError, UnknownLayerError) as err:
        print(f"ttt-bench: error: {err}", file=sys.stderr)
        return 2
    except DiskFullError as err:  # not the user's mistake: exit 1, as a run with unfinished cells
        print(f"ttt-bench: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        print("ttt-bench: interrupted; finished cells are kept, rerun the same command to go on", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
