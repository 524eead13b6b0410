"""`ttt-bench` command line. User errors print one line without a traceback and exit 2."""

from __future__ import annotations

import argparse
import sys

from ttt_bench.errors import ConfigError, UnknownLayerError


def _list_layers(args: argparse.Namespace) -> None:
    from ttt_bench import layers

    selected = args.layers or layers.names()
    for name in selected:
        variant = layers.variant(name)
        settings = ", ".join(f"{key}={value!r}" for key, value in variant.settings.items())
        print(f"{name:34} {variant.layer_cls.__name__}({settings})")
        if args.knobs:
            for knob in layers.knobs(name):
                print(f"    {knob.name} = {knob.default!r}  # {knob.doc}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttt-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list the registered layers (and with --knobs, their settings)")
    ls.add_argument("layers", nargs="*", help="layer names (default: all)")
    ls.add_argument("--knobs", action="store_true", help="show each layer's knobs, defaults and docs")
    ls.set_defaults(handler=_list_layers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ConfigError, UnknownLayerError) as err:
        print(f"ttt-bench: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
