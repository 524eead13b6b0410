"""report.md and report.html from one outline: a header (environment, suites, what the results lack), then
sections, each with a caption, its figures and its tables. The HTML is one self-contained file: styles inline,
figures embedded as base64 PNG, no link to anything outside it, so it opens offline and can be mailed or attached.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ttt_bench.report.tables import html_table, markdown_table, markdown_text

FIGURES_DIR = "figures"
ABSENT_HEADING = "Not in these results:"
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.caption { color: #444; }
"""


@dataclass
class Table:
    title: str
    frame: pd.DataFrame  # already shown: formatted strings under labelled headings (tables.shown)


@dataclass
class Section:
    title: str
    caption: str
    figures: list[str] = field(default_factory=list)  # stems under figures/ (a .png and an .svg each)
    tables: list[Table] = field(default_factory=list)


@dataclass
class Document:
    title: str
    facts: list[tuple[str, str]]  # the environment header
    suites: list[tuple[str, str]]  # (name, the suite file's text)
    sections: list[Section]  # each with a figure or a table: a report has no empty sections
    absent: list[str] = field(default_factory=list)  # what the results lack, each with the run that would fill it


def write_markdown(document: Document, path: Path) -> None:
    """Every string escaped (tables.markdown_text): names, environment and messages come from suites and results
    folders, which someone else may have written."""
    lines = [f"# {markdown_text(document.title)}", "", "| environment | |", "|---|---|"]
    lines += [f"| {markdown_text(key)} | {markdown_text(value)} |" for key, value in document.facts]
    for name, text in document.suites:
        fence = "`" * max(3, _longest_backtick_run(text) + 1)  # no line of the file can close it
        lines += ["", f"Suite {_code_span(name)}:", "", f"{fence}toml", text.rstrip(), fence]
    if document.absent:
        lines += ["", ABSENT_HEADING, "", *(f"- {_prose(text)}" for text in document.absent)]
    for section in document.sections:
        lines += ["", f"## {markdown_text(section.title)}", "", _prose(section.caption), ""]
        lines += [f"![{markdown_text(section.title)}]({FIGURES_DIR}/{stem}.png)\n" for stem in section.figures]
        for table in section.tables:
            lines += [f"**{markdown_text(table.title)}**", "", markdown_table(table.frame), ""]
    path.write_text("\n".join(lines).rstrip() + "\n")


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall("`+", text)), default=0)


def _code_span(text: str) -> str:
    """`text` as an inline code span (literal in every renderer), delimited by more backticks than it holds."""
    text = " ".join(text.splitlines())
    fence = "`" * (_longest_backtick_run(text) + 1)
    return f"{fence} {text} {fence}" if len(fence) > 1 else f"{fence}{text}{fence}"


def _prose(text: str) -> str:
    """A caption: its `code` spans kept as code, the rest markdown_text (a caption quotes names and folders)."""
    parts = re.split("`([^`]*)`", text)  # even indices: prose, odd: the spans' contents
    return "".join(_code_span(part) if index % 2 else markdown_text(part) for index, part in enumerate(parts))


def write_html(document: Document, path: Path) -> None:
    figures = path.parent / FIGURES_DIR
    parts = [f"<h1>{html.escape(document.title)}</h1>", "<table>"]
    parts += [f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>" for key, value in document.facts]
    parts.append("</table>")
    for name, text in document.suites:
        parts.append(f"<details><summary>Suite <code>{html.escape(name)}</code></summary>"
                     f"<pre>{html.escape(text)}</pre></details>")
    if document.absent:
        parts += [f"<p>{html.escape(ABSENT_HEADING)}</p>", "<ul>",
                  *(f"<li>{html.escape(text)}</li>" for text in document.absent), "</ul>"]
    for section in document.sections:
        parts += [f"<h2>{html.escape(section.title)}</h2>", f"<p class=\"caption\">{html.escape(section.caption)}</p>"]
        for stem in section.figures:
            data = base64.b64encode((figures / f"{stem}.png").read_bytes()).decode("ascii")
            parts.append(f"<p><img alt=\"{html.escape(section.title)}\" src=\"data:image/png;base64,{data}\"></p>")
        for table in section.tables:
            parts += [f"<h3>{html.escape(table.title)}</h3>", html_table(table.frame)]
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(document.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")
    path.write_text(page)
