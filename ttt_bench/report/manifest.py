"""The files a report build wrote, listed beside the report in .ttt-bench-report.json: the next build into that
folder deletes those and only those. A user's own files there (notes, figures of their own) are never touched, and
no name read from a results folder or a manifest reaches a path outside the report folder (config.path_inside)."""

from __future__ import annotations

import json
from pathlib import Path

from ttt_bench.config import path_inside
from ttt_bench.errors import ConfigError

MANIFEST = ".ttt-bench-report.json"


class ReportFiles:
    """One report folder's files: `clear_previous` removes what the last build wrote, `claim` records each file this
    build writes (before it is written, so a build that stops midway still lists what it left)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: list[str] = []

    def clear_previous(self) -> None:
        manifest = self.folder / MANIFEST
        for name in _listed(manifest):
            try:
                path = path_inside(self.folder, name)
            except ConfigError as error:
                raise ConfigError(f"{manifest} lists a file outside the report folder ({error})") from None
            if path.is_file():
                path.unlink()
        self._save()

    def claim(self, name: str) -> Path:
        """The path to write `name` (relative to the folder, '/'-separated) at, refused when it leads out."""
        path = path_inside(self.folder, name)
        if name not in self.written:
            self.written.append(name)
            self._save()
        return path

    def _save(self) -> None:
        text = json.dumps({"written_by": "ttt-bench report", "files": self.written}, indent=1) + "\n"
        path_inside(self.folder, MANIFEST).write_text(text)


def _listed(manifest: Path) -> list[str]:
    """The names a manifest lists; none when there is no manifest (a folder no build wrote into)."""
    if not manifest.exists():
        return []
    try:
        files = json.loads(manifest.read_text()).get("files")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise ConfigError(f"{manifest}: not a ttt-bench report manifest ({error}); delete it, or write the report to "
                          f"another folder") from None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise ConfigError(f"{manifest}: not a ttt-bench report manifest ('files' must list file names); delete it, "
                          f"or write the report to another folder")
    return files
