"""Cluster dispatch through submitit, exercised for real with its local executor (each job a subprocess
running its chunk of cells on a worker) into the same results folder as a local run."""

import textwrap

from ttt_bench.cli import main
from ttt_bench.results import ResultStore, load_results
from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.runner import run_suite
from ttt_bench.sweep.slurm import SubmititExecutor

SUITE = """
    name = "dispatch"
    layers = ["linear-attention-causal", "fast-weights"]
    [grid]
    seq_len = [16, 32, 48]
    d_model = 16
    n_heads = 2
    [measure]
    repeats = 1
    slow_repeats = 1
    min_time_s = 0.001
    threads = 1
    count_flops_max_seq_len = 16
"""


def test_submitit_local_jobs_write_every_cell_once(tmp_path):
    path = tmp_path / "dispatch.toml"
    path.write_text(textwrap.dedent(SUITE))
    out = tmp_path / "out"
    executor = SubmititExecutor(cluster="local", cells_per_job=4, time_limit_min=10, poll_s=0.2)
    summary = run_suite(load_suite(path), out, executor=executor, show_progress=False)
    assert summary.ran == 6 and summary.statuses == {"ok": 6}
    frame = load_results(out)
    assert frame.config_hash.nunique() == 6 and len(frame) == 12 and (frame.status == "ok").all()
    assert (frame.flops == 2 * frame.macs).all() and frame.time_ms.gt(0).all()
    assert len(job_folders(out)) == 2  # six cells in chunks of four: two jobs, each its own process

    # The same folder resumes under the default executor: nothing left to run.
    before = ResultStore(out).modification_times()
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    assert ResultStore(out).modification_times() == before


def test_cli_dispatches_through_submitit_local(tmp_path, capsys):
    path = tmp_path / "dispatch.toml"
    path.write_text(textwrap.dedent(SUITE).replace("[16, 32, 48]", "[16]"))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--executor", "submitit-local",
                 "--cells-per-job", "1", "--time-limit", "5"]) == 0
    assert "ran 2 (2 ok)" in capsys.readouterr().out
    assert len(job_folders(out)) == 2


def job_folders(out):
    """submitit's folder per job, named by its job id (the subprocess id for the local executor)."""
    return [p for p in (out / "submitit").iterdir() if p.is_dir() and p.name.isdigit()]
