"""Cells dispatched through submitit: to a Slurm cluster, or as local subprocesses (the same path, for tests
and for trying a cluster configuration on one machine).

Each job takes a chunk of cells and runs them with the local worker (so a crash still costs one cell),
writing into the same results folder, which must be on a file system the nodes share. The submitting
process follows the folder for progress; a job that ends without writing some of its cells (cancelled,
killed at its time limit, failed to start) has those cells recorded as 'timeout' or 'error'.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from ttt_bench.results import ResultStore
from ttt_bench.sweep.cell import now_utc
from ttt_bench.sweep.plan import PlannedCell
from ttt_bench.sweep.progress import Progress
from ttt_bench.sweep.runner import failure_rows, run_on_worker

CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class SubmititExecutor:
    cluster: str = "slurm"  # 'slurm', or 'local' for submitit's LocalExecutor (subprocesses on this machine)
    partition: str | None = None  # Slurm partition
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_limit_min: int = 60  # per job
    cells_per_job: int = 8
    poll_s: float = 2.0  # how often the results folder is read for progress

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ValueError(f"cluster={self.cluster!r} is not allowed; choose one of {list(CLUSTERS)}")

    def run(self, cells: list[PlannedCell], store: ResultStore, progress: Progress) -> None:
        if not cells:
            return
        import submitit

        executor = submitit.AutoExecutor(folder=store.root / "submitit" / "%j", cluster=self.cluster)
        parameters = {"name": f"ttt-bench-{cells[0].suite}", "timeout_min": self.time_limit_min,
                      "tasks_per_node": 1, "gpus_per_node": self.gpus_per_task}
        if self.cpus_per_task is not None:
            parameters["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb is not None:
            parameters["mem_gb"] = self.mem_gb
        if self.cluster == "slurm" and self.partition:
            parameters["slurm_partition"] = self.partition
        executor.update_parameters(**parameters)
        chunks = [cells[i:i + self.cells_per_job] for i in range(0, len(cells), self.cells_per_job)]
        before = store.modification_times()
        jobs = executor.map_array(run_cells_job, chunks, [str(store.root)] * len(chunks))
        waiting = {cell.config_hash: cell for cell in cells}
        while waiting:
            all_done = all(job.done() for job in jobs)  # read before the folder: no cell slips between
            self._report_new(waiting, store, before, progress)
            if all_done:
                break
            time.sleep(self.poll_s)
        for job, chunk in zip(jobs, chunks):
            unfinished = [cell for cell in chunk if cell.config_hash in waiting]
            if not unfinished:
                continue
            state = job.state
            status = "timeout" if "TIMEOUT" in state.upper() else "error"
            error = job.exception()
            detail = str(error).strip().splitlines()[-1] if error is not None else "no result"
            message = f"{self.cluster} job {job.job_id} ended ({state}) before this cell finished: {detail}"[:300]
            for cell in unfinished:
                store.write_cell(cell.config_hash, failure_rows(cell, status, message, now_utc()))
                progress.finish(cell.describe(), status, 0.0)

    @staticmethod
    def _report_new(waiting: dict[str, PlannedCell], store: ResultStore, before: dict[str, int],
                    progress: Progress) -> None:
        now = store.modification_times()
        for config_hash in [h for h in waiting if h in now and now[h] != before.get(h)]:
            cell = waiting.pop(config_hash)
            rows = store.read_cell(config_hash)
            seconds = float(rows.wall_s.iloc[0]) if "wall_s" in rows else 0.0
            progress.finish(cell.describe(), str(rows.status.iloc[0]), seconds)


def run_cells_job(cells: list[PlannedCell], results_dir: str) -> dict[str, int]:
    """A job's body: its cells on a local worker, into the shared results folder; their status counts."""
    return dict(Counter(run_on_worker(cells, ResultStore(results_dir), Progress(len(cells)))))
