"""Importing a user's module that registers layers of their own, by module name or by the path of a `.py` file,
so that a suite's `imports`, `ttt-bench check` and `ttt-bench ls --import` need no PYTHONPATH.

    import_layer_module("mylayer.py", folder)   the file, relative to `folder` (the suite's folder, or the cwd)
    import_layer_module("mylayer", folder)      the module of that name if Python finds one, else folder/mylayer.py

A file is imported under its stem as module name (mylayer.py -> `mylayer`), once per process: `import mylayer`
elsewhere finds the same module, and its layers register once. The returned `spec` is what another process (a
worker) imports to get the same module: the module name, or the file's absolute path.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ttt_bench.errors import ConfigError
from ttt_bench.layers.registry import names, variant


@dataclass(frozen=True)
class LayerModule:
    spec: str  # a module name, or a .py file's absolute path: what a worker process imports
    module: ModuleType
    layers: tuple[str, ...]  # the variants it registers (whose class it defines, or that its import added)


def import_layer_module(spec: str, folder: Path | None = None) -> LayerModule:
    """Import `spec` (a module name or a .py path, relative to `folder`, default the working directory);
    ConfigError "cannot import ..." saying what was tried."""
    folder = Path.cwd() if folder is None else Path(folder)
    before = set(names())
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = (folder / Path(spec).expanduser()).resolve()
        if not path.is_file():
            raise ConfigError(f"cannot import {spec!r}: there is no file {path}")
        loaded = LayerModule(str(path), _import_file(spec, path), ())
    else:
        loaded = _import_name(spec, folder)
    module_name = loaded.module.__name__
    defined_in = lambda name: f"{variant(name).layer_cls.__module__}.".startswith(f"{module_name}.")
    own = {name for name in names() if defined_in(name)}
    return LayerModule(loaded.spec, loaded.module, tuple(sorted(own | (set(names()) - before))))


def _import_name(spec: str, folder: Path) -> LayerModule:
    try:
        return LayerModule(spec, importlib.import_module(spec), ())
    except ModuleNotFoundError as error:
        beside = (folder / f"{spec}.py").resolve()
        missing_itself = error.name is not None and (spec == error.name or spec.startswith(f"{error.name}."))
        if not missing_itself:  # the module was found; something it imports was not
            raise _import_error(spec, error, None) from None
        if not beside.is_file():
            raise ConfigError(f"cannot import {spec!r}: Python finds no module {spec!r} (sys.path) and there is no "
                              f"file {beside}") from None
        return LayerModule(str(beside), _import_file(spec, beside), ())
    except Exception as error:  # any failure to import is reported as the user's module's
        raise _import_error(spec, error, None) from None


def _import_file(spec: str, path: Path) -> ModuleType:
    name = path.stem
    imported = sys.modules.get(name)
    if imported is not None:
        origin = getattr(imported, "__file__", None)
        if origin is not None and Path(origin).resolve() == path:
            return imported
        raise ConfigError(f"cannot import {spec!r} as module {name!r}: a module of that name is already imported "
                          f"(from {origin or 'Python itself'}); rename the file")
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"cannot import {spec!r}: {path} is not a Python file Python can load")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # any failure to import is reported as the user's module's
        del sys.modules[name]
        raise _import_error(spec, error, path) from None
    return module


def _import_error(spec: str, error: Exception, path: Path | None) -> ConfigError:
    """One line: the error, and where in the user's file it was raised when that is known."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if path is not None and Path(frame.filename) == path]
    where = f", at {path.name}:{frames[-1].lineno}" if frames else ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return ConfigError(f"cannot import {spec!r} ({type(error).__name__}: {message}{where})")
