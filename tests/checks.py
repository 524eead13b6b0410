"""Shared checks: a fast form against its reference on outputs, final state and every gradient (the library's, in
ttt_bench/layer_check.py, which `ttt-bench check` runs on a user's layers too); and suite files written for a test."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import torch

from ttt_bench.layer_check import RTOL, UNINITIALISED_FACTORIES, nan_filled
from ttt_bench.layer_check import check_close as assert_rel_close
from ttt_bench.layer_check import check_forms_agree as assert_forms_agree
from ttt_bench.layers import registry

__all__ = ["RTOL", "assert_forms_agree", "assert_rel_close", "nan_filled_empty", "user_layer_sandbox", "write_suite"]


def nan_filled_empty(monkeypatch) -> None:
    """Make torch.empty / empty_like return NaN-filled memory, so an unwritten output is caught."""
    for name in UNINITIALISED_FACTORIES:
        monkeypatch.setattr(torch, name, nan_filled(getattr(torch, name)))


def write_suite(folder: Path, text: str, name: str = "suite.toml") -> Path:
    """`text` (indented as in the test's source) as a suite file in `folder`."""
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def user_layer_sandbox(monkeypatch, folder: Path) -> Iterator[None]:
    """For a fixture: the layers registered and the modules imported from `folder` during the test are forgotten
    after it, so that a user's layer written by one test is not in the registry of the next."""
    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))
    yield
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").resolve().is_relative_to(folder.resolve()):
            del sys.modules[name]
