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
# The layers most reports put side by side, first: they take the strongest, most distinct colours.
LEAD_LAYERS = ("ttt-linear", "ttt-mlp", "linear-attention-causal", "attention-sdpa-causal", "delta-rule",
               "fast-weights", "attention-naive-causal", "ttt-kernel", "mttt-linear", "mttt-mlp", "gated-delta-rule",
               "titans-mlp", "lact-swiglu")
CONTROL_COLOUR = (0.3, 0.3, 0.3)
MARKERS = ("o", "s", "^", "D", "v", "P")


class Palette:
    """A colour per layer, the same in every report: a layer ttt-bench ships keeps the colour of its place in
    LEAD_LAYERS and then the registry, from 25 hues that differ on white and from each other (the layers reports
    compare most take tab10's; pale shades are never used, and none is the no-mixer control's dark grey); any other
    layer (a user's own, registered or not) takes a colour from a stable hash of its name. The variants and series of
    one layer share its colour and differ by line style and marker, given in the order they are first drawn."""

    def __init__(self, layer_of: dict[str, str]) -> None:
        self._registered = _distinct_hues()
        self._unregistered = sns.color_palette("dark", 10)
        # Only the layers ttt-bench ships hold places: one a user registers takes its colour from its name, so it
        # moves no shipped layer's.
        shipped = [name for name in layers.names() if layers.is_shipped(name)]
        order = [name for name in LEAD_LAYERS if name in shipped]
        order += [name for name in shipped if name not in order]
        self._index = {name: index for index, name in enumerate(order)}
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


def _distinct_hues() -> list[tuple[float, float, float]]:
    """25 colours that read on white: tab10, Dark2, Set1, Paired and husl in that order, without their greys (the
    control's hue), light shades such as yellow (luminance above 0.7) and near-repeats (within 0.15 in RGB of one
    taken before: Set1 and Paired repeat most of tab10)."""
    readable = lambda c: max(c) - min(c) >= 0.1 and 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] <= 0.7
    apart = lambda c, taken: all(sum((a - b) ** 2 for a, b in zip(c, t)) ** 0.5 > 0.15 for t in taken)
    hues: list[tuple[float, float, float]] = []
    for c in (sns.color_palette("tab10", 10) + sns.color_palette("Dark2", 8) + sns.color_palette("Set1", 9)
              + sns.color_palette("Paired", 12) + sns.color_palette("husl", 12)):
        if readable(c) and apart(c, hues):
            hues.append(c)
    return hues


def palette_of(frame: pd.DataFrame) -> Palette:
    """The palette of a results frame: each variant's layer from its rows."""
    rows = frame[["variant", "layer"]].dropna(subset=["variant"]).drop_duplicates("variant")
    return Palette({str(v): str(layer) if pd.notna(layer) else str(v) for v, layer in zip(rows.variant, rows.layer)})
