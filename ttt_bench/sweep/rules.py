"""A suite's [[exclude]] and [[only]] rules: their check and whether a cell is kept, dropped or skipped.

    [[exclude]]                  # drop the cells that match every condition ...
    layer = "attention-naive*"
    seq_len = { gt = 4096 }
    reason = "the N x N scores do not fit"   # ... and record them as 'skipped' with this reason

    [[only]]                     # the cells whose layer matches keep only the values that match
    layer = "*-primal"
    seq_len = { le = 1024 }
"""

from __future__ import annotations

import fnmatch
from typing import Any

from ttt_bench.sweep.schema import GRID_AXES, NUMERIC_AXES, RULE_OPERATORS


def check_rule(check, key: str, rule: Any) -> dict:
    """A rule table as written, checked (`check`: the suite file's checker, ttt_bench.sweep.parse)."""
    check.keys(key + ".", rule, ("layer", "task", *GRID_AXES, "reason"))
    if not any(k != "reason" for k in rule):
        raise check.fail(key, rule, "give at least one condition: 'layer', 'task' or a grid axis")
    if "reason" in rule:
        check.string(f"{key}.reason", rule["reason"])
    for axis, condition in rule.items():
        if axis == "reason":
            continue
        name = f"{key}.{axis}"
        if isinstance(condition, dict):
            if axis not in NUMERIC_AXES:
                raise check.fail(name, condition, f"bounds apply to the numeric axes {list(NUMERIC_AXES)} only")
            check.keys(name + ".", condition, RULE_OPERATORS)
            if not condition:
                raise check.fail(name, condition, f"give one of {list(RULE_OPERATORS)}")
            for op, bound in condition.items():
                check.number(f"{name}.{op}", bound, low=float("-inf"))
        elif not all(_is_scalar(v) for v in (condition if isinstance(condition, list) else [condition])) or (
            condition == []
        ):
            raise check.fail(name, condition, "use a value, a non-empty list of values or a table of gt/ge/lt/le")
    return rule


def rule_verdict(rules, names: tuple[str, ...], task_names: tuple[str, ...] | None,
                 point: dict) -> tuple[bool, str | None]:
    """(kept, skip reason) of the cell at grid `point` of the layer entry known by `names` (label, registry name)
    and the task known by `task_names` (None: a profiling cell): a rule without a reason drops the cell, one with
    a reason keeps it as skipped."""
    for kind, rule in rules:
        # 'layer' and 'task' select the cells a rule is about; the grid axes are its conditions.
        selected = _names_match(rule.get("layer", "*"), names) and (
            "task" not in rule or _names_match(rule["task"], task_names or ())
        )
        axes_match = all(_matches(point[k], v) for k, v in rule.items() if k not in ("layer", "task", "reason"))
        dropped = selected and (axes_match if kind == "exclude" else not axes_match)
        if dropped:
            return "reason" in rule, rule.get("reason")
    return True, None


def _names_match(patterns: Any, names: tuple[str, ...]) -> bool:
    patterns = patterns if isinstance(patterns, list) else [patterns]
    return any(fnmatch.fnmatchcase(n, str(p)) for p in patterns for n in names)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _matches(value: Any, condition: Any) -> bool:
    if isinstance(condition, dict):
        checks = {"gt": value.__gt__, "ge": value.__ge__, "lt": value.__lt__, "le": value.__le__}
        return all(checks[op](bound) for op, bound in condition.items())
    if isinstance(condition, list):
        return any(_matches(value, c) for c in condition)
    if isinstance(condition, str) and isinstance(value, str):
        return fnmatch.fnmatchcase(value, condition)
    return value == condition
