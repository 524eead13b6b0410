"""Stopping a run leaves nothing behind: SIGTERM stops it as Ctrl-C does (exit 143, finished cells kept), a
SIGKILLed run's worker dies with it, and a timeout kills what the cell started too. Processes are found through
/proc (Linux): the run's process tree is read while it runs, and every process in it must be gone afterwards.
Also the worker's death and start-failure messages."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from checks import write_suite

from ttt_bench.results import ResultStore, load_results
from ttt_bench.sweep.runner import describe_exit

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")

FAULTY_LAYERS = Path(__file__).parent / "faulty_layers.py"
START_DEADLINE_S = 180  # a fresh worker imports torch; the machine may be busy
GONE_WITHIN_S = 5


def hanging_suite(tmp_path: Path, layers: list[str], timeout_s: float) -> Path:
    return write_suite(tmp_path, f"""
        name = "signals"
        imports = ["{FAULTY_LAYERS}"]
        layers = {layers!r}
        [grid]
        seq_len = [16]
        d_model = 16
        n_heads = 2
        [measure]
        repeats = 1
        slow_repeats = 1
        min_time_s = 0.001
        threads = 1
        count_flops_max_seq_len = 0
        timeout_s = {timeout_s}
    """.replace("'", '"'))


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state letter, command line) of every process /proc shows."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone while we read
        state, parent = stat[stat.rindex(")") + 2:].split()[:2]
        table[int(entry.name)] = (int(parent), state, command)
    return table


def descendants(pid: int) -> dict[int, str]:
    """The processes below `pid` (children, theirs, ...) with their command lines."""
    table = process_table()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (child_parent, _, command) in table.items():
            if child_parent == parent and child not in found:
                found[child] = command
                frontier.append(child)
    return found


def alive(pids) -> set[int]:
    """Those of `pids` still running (a zombie has ended: it only waits to be reaped)."""
    table = process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def start_run_until_the_cell_hangs(path: Path, out: Path) -> tuple[subprocess.Popen, dict[int, str]]:
    """Start `ttt-bench run`, wait until the hanging cell has started its `sleep 1000`; the run and its tree."""
    command = [sys.executable, "-m", "ttt_bench", "run", str(path), "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline and process.poll() is None:
        tree = descendants(process.pid)
        if any(command.startswith("sleep 1000") for command in tree.values()):
            return process, tree
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the hanging cell never started: {process.communicate()}")


def assert_all_gone(tree: dict[int, str]) -> None:
    deadline = time.monotonic() + GONE_WITHIN_S
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: tree[pid] for pid in alive(tree)}
    assert not left, f"processes of the run still alive after {GONE_WITHIN_S} s: {left}"


@pytest.fixture
def cleanup():
    """Kill, after the test, whatever a failing test left behind."""
    trees: list[dict[int, str]] = []
    yield trees
    for tree in trees:
        for pid in alive(tree):
            subprocess.run(["kill", "-9", str(pid)], check=False)


def test_sigterm_stops_the_run_as_ctrl_c_does_and_leaves_no_process(tmp_path, cleanup):
    path = hanging_suite(tmp_path, ["linear-attention-causal", "faulty-spawns-and-hangs"], timeout_s=600)
    out = tmp_path / "out"
    process, tree = start_run_until_the_cell_hangs(path, out)
    cleanup.append(tree)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "interrupted; finished cells are kept, rerun the same command to go on" in err
    assert "Traceback" not in err
    frame = load_results(out)
    assert set(frame.layer) == {"linear-attention-causal"} and (frame.status == "ok").all()
    assert_all_gone(tree)
    assert len(ResultStore(out).statuses()) == 1  # the stopped cell is due again, not recorded


def test_a_sigkilled_run_leaves_no_worker_behind(tmp_path, cleanup):
    path = hanging_suite(tmp_path, ["faulty-spawns-and-hangs"], timeout_s=600)
    process, tree = start_run_until_the_cell_hangs(path, tmp_path / "out")
    cleanup.append(tree)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert_all_gone(tree)


def test_a_timeout_kills_what_the_cell_started(tmp_path, cleanup):
    path = hanging_suite(tmp_path, ["faulty-spawns-and-hangs"], timeout_s=3)
    out = tmp_path / "out"
    process, tree = start_run_until_the_cell_hangs(path, out)
    cleanup.append(tree)
    children = {pid for pid, command in tree.items() if command.startswith("sleep 1000")}
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert set(load_results(out).status) == {"timeout"}
    assert children and not alive(children), "the cell's child outlived its timeout kill"
    assert_all_gone(tree)


def test_a_worker_death_message_says_what_is_known_and_no_more():
    killed = describe_exit(-signal.SIGKILL)
    assert "signal 9 (SIGKILL)" in killed and "nothing here says which" in killed
    assert "out-of-memory" in killed and "people and schedulers" in killed
    assert describe_exit(-signal.SIGSEGV) == "the worker process died from signal 11 (SIGSEGV)"
    assert describe_exit(3) == "the worker process exited with code 3 before returning a result"


def test_a_script_without_the_main_guard_is_told_in_one_line(tmp_path):
    suite = hanging_suite(tmp_path, ["linear-attention-causal"], timeout_s=60)
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from ttt_bench.sweep.parse import load_suite
        from ttt_bench.sweep.runner import run_suite

        run_suite(load_suite({str(suite)!r}), {str(tmp_path / "out")!r}, show_progress=False)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ttt_bench.sweep.runner.WorkerStartError: the worker process exited with code 1")
    assert 'if __name__ == "__main__":' in last and "spawn" in last
    assert "EOFError" not in result.stderr and "RunLockedError" not in result.stderr
    assert "ttt-bench: error: a worker process, importing the script again, reached run_suite" in result.stderr
