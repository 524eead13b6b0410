"""Settings declared once: a dataclass field made with knob() carries its default, its one-line doc and what it
allows, and the checks, the error messages and the generated docs all read that declaration.

    @dataclass(frozen=True)
    class MeasureSettings:
        repeats: int = knob(5, "timed repeats of a call, at least", Integer(1))

`check_fields(settings, "measure.")` (from __post_init__) checks every declared field and raises one ConfigError
naming the key, the value and what is allowed; the check_* helpers do the same for a layer's or a task's field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttt_bench.errors import ConfigError


def not_allowed(key: str, value: Any, why: str) -> str:
    """The one wording of a refused setting: "key 'k': value v is not allowed; <what is allowed>"."""
    return f"key {key!r}: value {value!r} is not allowed; {why}"


def did_you_mean(name: str, known: Iterable[str], most: int = 3) -> str:
    """" (did you mean 'a' or 'b'?)" with the known names closest to a misspelt one; '' when none is close."""
    close = [repr(match) for match in difflib.get_close_matches(name, list(known), n=most)]
    if not close:
        return ""
    return f" (did you mean {' or '.join([', '.join(close[:-1]), close[-1]] if len(close) > 1 else close)}?)"


class Allowed:
    """What values a setting takes: `requirement()` says what a refused value lacks, `convert` gives the stored
    form of one that passes."""

    def describe(self) -> str:
        raise NotImplementedError

    def admits(self, value: Any) -> bool:
        raise NotImplementedError

    def requirement(self) -> str:
        return f"it must be {self.describe()}"

    def convert(self, value: Any) -> Any:
        return value

    def check(self, key: str, value: Any) -> Any:
        """`value` in its stored form, or ConfigError "key 'k': value v is not allowed; ...". A list checks
        each item under 'k[i]'."""
        if not self.admits(value):
            raise ConfigError(not_allowed(key, value, self.requirement()))
        return self.convert(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The largest integer a setting takes unless it declares less: 2**53, the last of the run of integers a float64
# holds exactly, so a value stays itself in an int64 column, in JSON and in arithmetic with floats.
LARGEST_INTEGER = 2**53


def shown_bound(bound: float) -> str:
    """A bound as the docs and messages show it: a large power of two as 2**k (2**24, not 16777216)."""
    if isinstance(bound, float) and bound.is_integer():
        bound = int(bound)
    if isinstance(bound, int) and bound >= 2**20 and bound & (bound - 1) == 0:
        return f"2**{bound.bit_length() - 1}"
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


@dataclass(frozen=True)
class Integer(Allowed):
    """An integer in [minimum, maximum]; a float (16.5, or 16.0) or a bool is refused."""

    minimum: int
    maximum: int = LARGEST_INTEGER

    def describe(self) -> str:
        return f"an integer >= {self.minimum} and <= {shown_bound(self.maximum)}"

    def admits(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.minimum <= value <= self.maximum


@dataclass(frozen=True)
class Number(Allowed):
    """A finite number in (low, high], or [low, high] with `closed`; stored as a float. Never inf or NaN: an
    infinite timeout or budget is a crash or a hang later, not a setting."""

    low: float = 0.0
    high: float = math.inf
    closed: bool = False

    def describe(self) -> str:
        low = "" if self.low == -math.inf else f" {'>=' if self.closed else '>'} {shown_bound(self.low)}"
        high = " and finite" if self.high == math.inf else f" and <= {shown_bound(self.high)}"
        return f"a number{low}{high}"

    def admits(self, value: Any) -> bool:
        if not _is_number(value):
            return False
        try:
            value = float(value)  # an int too large for a float (10**400) is refused, not an OverflowError
        except OverflowError:
            return False
        if not math.isfinite(value):
            return False
        above = value >= self.low if self.closed else value > self.low
        return above and value <= self.high

    def convert(self, value: Any) -> float:
        return float(value)


@dataclass(frozen=True)
class OneOf(Allowed):
    choices: tuple

    def describe(self) -> str:
        return f"one of {list(self.choices)}"

    def requirement(self) -> str:
        return f"choose one of {list(self.choices)}"

    def admits(self, value: Any) -> bool:
        return value in self.choices


@dataclass(frozen=True)
class Text(Allowed):
    def describe(self) -> str:
        return "a string"

    def admits(self, value: Any) -> bool:
        return isinstance(value, str)


@dataclass(frozen=True)
class ListOf(Allowed):
    """A list whose items each satisfy `item`; stored as a tuple."""

    item: Allowed
    distinct_at_least: int = 0  # how many different values it must hold

    def describe(self) -> str:
        distinct = f" with at least {self.distinct_at_least} different values" if self.distinct_at_least else ""
        return f"a list{distinct}, each {self.item.describe()}"

    def admits(self, value: Any) -> bool:
        return isinstance(value, (list, tuple))

    def requirement(self) -> str:
        return "it must be a list"

    def check(self, key: str, value: Any) -> tuple:
        super().check(key, value)
        items = tuple(self.item.check(f"{key}[{i}]", v) for i, v in enumerate(value))
        if len(set(items)) < self.distinct_at_least:
            raise ConfigError(not_allowed(key, value, f"give at least {self.distinct_at_least} different values"))
        return items


@dataclass(frozen=True)
class AnyOf(Allowed):
    """A value that one of `alternatives` allows (the first that does converts it)."""

    alternatives: tuple[Allowed, ...]

    def describe(self) -> str:
        return " or ".join(alternative.describe() for alternative in self.alternatives)

    def admits(self, value: Any) -> bool:
        return any(alternative.admits(value) for alternative in self.alternatives)

    def convert(self, value: Any) -> Any:
        return next(a for a in self.alternatives if a.admits(value)).convert(value)


@dataclass(frozen=True)
class Optional(Allowed):
    """Unset by default (None, which a TOML file cannot write); a value that is given must satisfy `inner`."""

    inner: Allowed

    def describe(self) -> str:
        return self.inner.describe()

    def admits(self, value: Any) -> bool:
        return value is None or self.inner.admits(value)

    def requirement(self) -> str:
        return self.inner.requirement()

    def check(self, key: str, value: Any) -> Any:
        return None if value is None else self.inner.check(key, value)


def knob(default: Any, doc: str, allowed: Allowed | None = None) -> Any:
    """A config field with its one-line documentation (shown by `ttt-bench ls` and in the docs) and, for a
    setting of a suite's tables, what it allows (checked by check_fields)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "allowed": allowed})


def declared_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass a user sets: those made with knob() (others are resolved by code)."""
    return [f for f in dataclasses.fields(cls) if "doc" in f.metadata]


def check_fields(settings: Any, prefix: str) -> None:
    """Check every declared field of a frozen settings dataclass against what it allows, storing its converted
    form (a float for a number, a tuple for a list); ConfigError names the key as `prefix` + field."""
    for field in declared_fields(type(settings)):
        allowed = field.metadata["allowed"]
        if allowed is not None:
            value = allowed.check(prefix + field.name, getattr(settings, field.name))
            object.__setattr__(settings, field.name, value)


def check_choice(owner: str, field: str, value: Any, allowed: Iterable[Any]) -> None:
    """`owner` names what is being set up in the message: a layer, 'model', "task 'mqar'"."""
    _check_named(owner, field, value, OneOf(tuple(allowed)))


def check_at_least(owner: str, field: str, value: Any, minimum: float) -> None:
    _check_named(owner, field, value, Number(minimum, closed=True))


def check_integer(owner: str, field: str, value: Any, minimum: int, maximum: int = LARGEST_INTEGER) -> None:
    _check_named(owner, field, value, Integer(minimum, maximum))


def check_positive(owner: str, field: str, value: Any) -> None:
    _check_named(owner, field, value, Number(0.0))


def check_open_unit(owner: str, field: str, value: Any) -> None:
    if not (_is_number(value) and 0.0 < value < 1.0):
        raise ConfigError(f"{owner}: {field}={value!r} is not allowed; it must lie strictly between 0 and 1")


def _check_named(owner: str, field: str, value: Any, allowed: Allowed) -> None:
    if not allowed.admits(value):
        raise ConfigError(f"{owner}: {field}={value!r} is not allowed; {allowed.requirement()}")


# Names that become paths. A suite's name is one folder's name (results/NAME); a name read from a results folder
# someone sent is made one before it is used; and a path built from such a name is checked to stay in its folder.
SLUG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SLUG_RULE = (f"a name of letters, digits, '.', '_' and '-' that starts with a letter or digit, at most 100 characters "
             f"(pattern {SLUG_PATTERN.pattern}): no '/', no '..'")


@dataclass(frozen=True)
class Slug(Allowed):
    def describe(self) -> str:
        return SLUG_RULE

    def admits(self, value: Any) -> bool:
        return isinstance(value, str) and SLUG_PATTERN.fullmatch(value) is not None


def slug_of(text: str, fallback: str) -> str:
    """`text` as a slug: each run of other characters becomes '-', leading and trailing '.', '_', '-' go;
    `fallback` (a slug) when nothing is left."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("._-")[:100].rstrip("._-")
    return slug or fallback


def path_inside(base: Path, *parts: str) -> Path:
    """base/parts, refused (ConfigError) when it resolves outside base, symlinks followed: a folder someone sent,
    or a name from a file, never makes ttt-bench write or delete outside the folder chosen for it."""
    path = Path(base).joinpath(*parts)
    resolved, root = path.resolve(), Path(base).resolve()
    if not resolved.is_relative_to(root):
        raise ConfigError(f"{path}: it resolves to {resolved}, outside {base}; ttt-bench writes only inside the "
                          f"folder it was given (a symbolic link or a '..' leads out): remove it or choose another "
                          f"folder")
    return path
