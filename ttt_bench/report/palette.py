"""A colour per layer that stays the same in every report, and a line style and marker per variant or series of
that layer within one report.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import pandas as pd
import seaborn as sns

from ttt_bench import layers
from ttt_bench.layers.control import CONTROL_LAYER


@dataclass(frozen=True)
class Style:
    colour: tuple[float, float, float]
    linestyle: str
    marker: str


LINE_STYLES = ("-", "--", ":", "-.")
CONTROL_COLOUR = (0.3, 0.3, 0.3)
MARKERS = ("o", "s", "^", "D", "v", "P")


class Palette:
    """A colour per layer, the same in every report: a registered layer keeps the colour of its place in the
    registry (tab20's strong shades first, then its pale ones), the no-mixer control dark grey; a layer the
    registry here does not know (a user's own) takes a colour from a stable hash of its name. The variants and
    series of one layer share its colour and differ by line style and marker, given in the order they are first
    drawn."""

    def __init__(self, layer_of: dict[str, str]) -> None:
        tab20 = sns.color_palette("tab20", 20)
        self._registered = tab20[0::2] + tab20[1::2]
        self._unregistered = sns.color_palette("dark", 10)
        self._index = {name: index for index, name in enumerate(layers.names())}
        self._layer_of = dict(layer_of)  # variant or series name -> its layer
        self._styles: dict[str, Style] = {}

    def learn_series(self, series, variants) -> None:
        """Each series (a variant under one setting) takes its variant's layer."""
        self._layer_of |= {str(name): self.layer_of(str(variant)) for name, variant in zip(series, variants)
                           if str(name) not in self._layer_of}

    def layer_of(self, name: str) -> str:
        """The layer behind a variant or series; a name never learnt is taken for a layer's."""
        return self._layer_of.get(name, name)

    def layer_colour(self, layer: str) -> tuple[float, float, float]:
        if layer == CONTROL_LAYER:  # the reference every accuracy is read against: neutral, never a layer's hue
            return CONTROL_COLOUR
        if layer in self._index:
            return self._registered[self._index[layer] % len(self._registered)]
        return self._unregistered[zlib.crc32(layer.encode()) % len(self._unregistered)]

    def style(self, name: str) -> Style:
        """The style of a variant or series: its layer's colour, and the next line style and marker of that layer
        the first time it is drawn (kept for every later figure)."""
        if name not in self._styles:
            layer = self.layer_of(name)
            taken = sum(1 for other in self._styles if self.layer_of(other) == layer)
            self._styles[name] = Style(self.layer_colour(layer), LINE_STYLES[taken % len(LINE_STYLES)],
                                       MARKERS[taken % len(MARKERS)])
        return self._styles[name]


def palette_of(frame: pd.DataFrame) -> Palette:
    """The palette of a results frame: each variant's layer from its rows."""
    rows = frame[["variant", "layer"]].dropna(subset=["variant"]).drop_duplicates("variant")
    return Palette({str(v): str(layer) if pd.notna(layer) else str(v) for v, layer in zip(rows.variant, rows.layer)})
