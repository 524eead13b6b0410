"""Tables for the documents: values scaled to their shown unit and formatted, headings with units, rendered
as markdown or HTML. The same strings go into both documents.
"""

from __future__ import annotations

import html
import math
import re

import pandas as pd

from ttt_bench.report.units import label, scale

MISSING = "—"


def format_number(value: object) -> str:
    """Below 10^7: whole numbers (and anything >= 1000) with thousands separators, others with 4 significant
    figures; from 10^7 (FLOPs) in exponent form; NaN as a dash."""
    if value is None or isinstance(value, str):
        return MISSING if value is None or value == "" else value
    if isinstance(value, bool):
        return "yes" if value else "no"
    number = float(value)
    if math.isnan(number):
        return MISSING
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if abs(number) >= 1e7:
        return f"{number:.4g}"
    if number.is_integer() or abs(number) >= 1000:  # counts, N, MiB: whole units read best
        return f"{number:,.0f}"
    return f"{number:.4g}"


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each column in its shown unit, formatted, under its labelled heading."""
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        values = frame[column]
        factor = scale(column)
        if factor != 1.0:
            values = values.astype(float) * factor
        out[label(column)] = [v if isinstance(v, str) else format_number(v) for v in values.astype(object)]
    return out.reset_index(drop=True)


# Markdown punctuation that could start a code span, a link, an image or math (GitHub renders $...$), or end a
# table cell. Emphasis is left alone: harmless, and compare's cells are bold on purpose.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`\[\]|$])")


def markdown_text(value: object) -> str:
    """`value` as inert markdown text on one line: HTML's special characters as entities (no tag reaches a
    renderer that passes HTML through), markdown's punctuation backslash-escaped (no link, image, code span, math
    or cell break), line breaks as spaces (no line can open a heading, list or fence)."""
    text = html.escape(str(value), quote=False)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(text.splitlines()))


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table of `frame` as it is (headings = column names, cells = str of each value as markdown_text;
    nulls empty)."""
    def cell(value: object) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else markdown_text(value)

    lines = ["| " + " | ".join(cell(column) for column in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"
