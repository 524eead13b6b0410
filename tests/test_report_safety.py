"""A report of a hostile results folder is built and inert (issue 17, item 5): labels, task names, messages, knobs,
environment strings and the suite's text carry HTML, a markdown fence, table pipes and mathtext; report.md and
report.html show them as text (no raw tag, the suite's fence not closed early, every table row its header's width),
every PNG decodes and every SVG is well-formed XML without a script element."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from report_fixture import ENV, SETTING

from ttt_bench.cli import main
from ttt_bench.results import ResultStore
from ttt_bench.sweep.parse import load_suite

SCRIPT = "<script>alert(1)</script>"
IMAGE = "<img src=x onerror=alert(1)>"
MATHTEXT = "cost $\\undefinedmacro{x}$"
LABEL = f"{SCRIPT} {MATHTEXT} |x| ``` "
TASK = f"{IMAGE} $\\frac{{$"
TOML_LABEL = LABEL.replace("\\", "\\\\")  # a TOML basic string: the backslash escaped
SUITE_TEXT = f'''name = "hostile"
description = """
```
{IMAGE} {SCRIPT}
````"""
layers = [{{ name = "linear-attention-causal", label = "{TOML_LABEL}" }}]

[grid]
seq_len = [64]
'''
SEQ_LENS = (256, 512, 1024)


def _row(variant: str, layer: str, seq_len: int, measurement: str, status: str = "ok") -> dict:
    row = {**ENV, **SETTING, "cpu_model": f"{SCRIPT} {MATHTEXT}", "knobs": f'{{"note": "{IMAGE} $x$"}}',
           "suite": f"{SCRIPT}$\\undefinedmacro$", "config_hash": f"{layer}-{seq_len}-{status}", "variant": variant,
           "layer": layer, "seq_len": seq_len, "seed": 0, "measurement": measurement, "status": status,
           "message": f"{IMAGE} | ``` $\\undefinedmacro{{x}}$" if status != "ok" else "",
           "started_at": "2026-11-25T00:00:00+00:00", "finished_at": "2026-11-25T00:01:00+00:00"}
    if status == "ok":
        time = 1e-3 * seq_len * (3.0 if measurement == "forward_backward" else 1.0)
        row |= {"time_ms": time, "time_p20_ms": 0.98 * time, "time_p80_ms": 1.02 * time, "time_spread": 1.04,
                "noisy": False, "peak_bytes": 1e5 + 2000.0 * seq_len, "flops": 2e6 * seq_len,
                "memory_budget_bytes": 2**30}
    return row


def _train_row(variant: str, layer: str, seed: int, accuracy: float) -> dict:
    return {**ENV, **SETTING, "suite": "hostile-train", "config_hash": f"{layer}-train-{seed}", "variant": variant,
            "layer": layer, "seq_len": 16, "seed": seed, "batch": 32, "task": TASK, "task_name": TASK,
            "measurement": "train", "status": "ok", "message": "", "accuracy": accuracy, "flops_per_token": 2e5,
            "params": 1e5, "eval_loss_nats": 1.0, "train_time_s": 2.0}


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    suite_file = root / "hostile.toml"
    suite_file.write_text(SUITE_TEXT)
    suite = load_suite(suite_file)  # the parser takes such a label and description: a real suite can carry them
    assert [entry.label for entry in suite.layer_entries] == [LABEL]
    assert IMAGE in suite.description
    store = ResultStore(root / "results")
    layers = {LABEL: "linear-attention-causal", "attention-sdpa-causal": "attention-sdpa-causal"}
    for variant, layer in layers.items():
        for seq_len in SEQ_LENS:
            store.write_cell(f"{layer}-{seq_len}", [_row(variant, layer, seq_len, m)
                                                    for m in ("forward", "forward_backward")])
        store.write_cell(f"{layer}-train", [_train_row(variant, layer, 0, 0.7), _train_row(variant, layer, 1, 0.8)])
    store.write_cell("failed", [_row(LABEL, "linear-attention-causal", 4096, "forward", "error")])
    store.write_run_files({**ENV, "cpu_model": SCRIPT}, SUITE_TEXT)
    out = root / "report"
    assert main(["report", str(root / "results"), "--out", str(out)]) == 0
    return out


def test_markdown_has_no_raw_html_and_shows_the_strings_escaped(hostile_report):
    text = (hostile_report / "report.md").read_text()
    outside_fences = _without_suite_text(text)
    assert "<script" not in outside_fences.lower() and "<img" not in outside_fences.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in outside_fences  # shown, not dropped
    assert "&lt;img src=x onerror=alert(1)&gt;" in outside_fences
    assert "cost \\$\\\\undefinedmacro{x}\\$" in outside_fences  # no math in renderers that do $...$ (GitHub)


def test_markdown_suite_fence_holds_the_whole_suite_text(hostile_report):
    blocks = _fenced_blocks((hostile_report / "report.md").read_text())
    assert SUITE_TEXT.rstrip() in blocks, "the suite's fenced block was closed early or altered"
    assert len(blocks) == 1  # nothing else of the report fell inside a fence


def test_markdown_table_rows_have_their_header_width(hostile_report):
    table: list[int] = []
    for line in _without_suite_text((hostile_report / "report.md").read_text()).splitlines():
        if not line.startswith("|"):
            table = []
            continue
        cells = len(re.findall(r"(?<!\\)\|", line))  # pipes that separate cells: not escaped ones
        table.append(cells)
        assert cells == table[0], f"a table row split by a pipe inside a cell: {line}"
    assert "\\|x\\|" in (hostile_report / "report.md").read_text()


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_holds_no_script_no_handler_and_only_embedded_images(hostile_report):
    text = (hostile_report / "report.html").read_text()
    parser = _Tags()
    parser.feed(text)
    assert "script" not in {tag for tag, _ in parser.tags}
    assert not [attrs for _, attrs in parser.tags if any(name.startswith("on") for name in attrs)]
    images = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_figures_decode_and_draw_the_labels_as_text(hostile_report):
    figures = sorted((hostile_report / "figures").iterdir())
    assert {path.stem for path in figures} >= {"accuracy-vs-flops", "time-vs-seq-len", "memory-vs-seq-len"}
    for png in (path for path in figures if path.suffix == ".png"):
        with Image.open(png) as image:
            image.load()
    svgs = [path for path in figures if path.suffix == ".svg"]
    assert svgs
    for svg in svgs:
        text = svg.read_text()
        root = ElementTree.fromstring(text)  # well-formed: a label cannot open an element
        assert "<script" not in text.lower()
        assert not [element for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "script"]
    drawn = (hostile_report / "figures" / "time-vs-seq-len.svg").read_text()
    assert MATHTEXT in drawn  # the legend's label drawn as it reads (svg keeps each text in a comment), not as math


def _fenced_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks, read as CommonMark does: a fence closes only on a line of the same
    character, at least as long, and nothing else."""
    lines, blocks, opened = text.splitlines(), [], None
    for index, line in enumerate(lines):
        run = re.match(r"^ {0,3}(`{3,}|~{3,})(.*)$", line)
        if opened is None and run:
            opened = (index, run.group(1))
        elif opened is not None and run and run.group(1)[0] == opened[1][0] and len(run.group(1)) >= len(opened[1]) \
                and not run.group(2).strip():
            blocks.append("\n".join(lines[opened[0] + 1:index]))
            opened = None
    assert opened is None, "a fence left open: the rest of the report would read as code"
    return blocks


def _without_suite_text(text: str) -> str:
    """The report outside the suite's file, which it shows verbatim (inert inside its fenced block)."""
    assert SUITE_TEXT.rstrip() in text
    return text.replace(SUITE_TEXT.rstrip(), "")
