"""The evmamba command line: preprocess | train | evaluate | baseline | stream | info | view | bench.

The top layer: each command is a module of this package (``evmamba bench NAME`` runs a module of
:mod:`evmamba.bench`), imported only when it runs, so that ``evmamba --help`` stays fast and a broken optional
dependency of one command does not break the others. A command module holds argument parsing and printing
only; the work is done by the library below it (no library module imports a command). A command module
provides ``configure(parser)`` (adds its arguments), ``run(args) -> int`` (the exit status) and ``EXAMPLE``
(one command line, shown at the end of its ``--help``); it may provide ``DESCRIPTION``, plain text shown
under the usage line. Help texts are plain text: they are printed as written, without reStructuredText
markup.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

# ``key.sub=value`` config overrides (``train.epochs=3``, ``model.pool_stride=[4,1]``)
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")

# name -> (module, one-line help)
COMMANDS = {
    "preprocess": ("evmamba.cli.preprocess", "bin a dataset into tokens and write one HDF5 file per split"),
    "train": ("evmamba.cli.train", "train a classifier from a YAML config"),
    "evaluate": ("evmamba.cli.evaluate", "evaluate a checkpoint on full test streams"),
    "baseline": ("evmamba.cli.baseline", "nearest-neighbour accuracy on event-count histograms, for any config"),
    "stream": ("evmamba.cli.stream", "classify a live or replayed event stream token by token"),
    "info": ("evmamba.cli.info", "describe event files or a dataset: counts, duration, rates, polarity, classes"),
    "view": ("evmamba.cli.view", "render a recording as event frames (GIF, MP4, PNG), with class probabilities"),
}

# evmamba bench <name>: name -> (module, one-line help)
BENCHMARKS = {
    "scan": ("evmamba.bench.scan", "reference selective scan on the CPU (elements/s)"),
    "kernels": ("evmamba.bench.kernels", "Triton scan, backward and step against copy bandwidth (GPU)"),
    "layer": ("evmamba.bench.layer", "the Mamba layer, forward and backward, beside mamba_ssm's and lrnnx's (GPU)"),
    "binning": ("evmamba.bench.binning", "numba binning against tonic's transforms (events/s)"),
    "readers": ("evmamba.bench.readers", "Prophesee EVT 2.0 / EVT 3.0 decoding against expelliarmus (events/s)"),
    "stream": ("evmamba.bench.stream", "the real-time loop on recorded streams (real-time factor, latency)"),
    "train": ("evmamba.bench.train", "training steps on a config: samples/s, tokens/s, time per part, memory"),
    "cache": ("evmamba.bench.cache", "host memory over an epoch of token caches larger than memory"),
}


DESCRIPTION = ("evmamba classifies event-camera recordings and spike data with selective state-space (Mamba)\n"
               "layers: read and look at recordings, bin them into tokens, train, evaluate and stream.\n"
               "'evmamba COMMAND --help' describes a command.")
EXAMPLE = "evmamba train --config nmnist_small train.epochs=20"
BENCH_HELP = "run a benchmark; prints a table and writes JSON"
BENCH_EXAMPLE = "evmamba bench binning --quick --json binning.json"


def _example(text: str | None) -> str | None:
    return None if not text else f"example:\n  {text}"


def _add_lazy(subparsers, name: str, module: str, help_text: str, argv_name: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(_module=module)
    # Only the chosen command's module is imported (to add its arguments and help texts); see main().
    if argv_name == name:
        mod = importlib.import_module(module)
        mod.configure(parser)
        extra = getattr(mod, "DESCRIPTION", None)
        if extra:
            parser.description = f"{help_text}\n\n{extra.strip()}"
        parser.epilog = _example(getattr(mod, "EXAMPLE", None))


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evmamba", description=DESCRIPTION, epilog=_example(EXAMPLE),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"evmamba {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    first = argv[0] if argv else None
    for name, (module, help_text) in COMMANDS.items():
        _add_lazy(sub, name, module, help_text, first)
    bench = sub.add_parser("bench", help=BENCH_HELP, description=BENCH_HELP, epilog=_example(BENCH_EXAMPLE),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    second = argv[1] if first == "bench" and len(argv) > 1 else None
    for name, (module, help_text) in BENCHMARKS.items():
        _add_lazy(bench_sub, name, module, help_text, second)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    # Overrides may come before, between or after the options (argparse alone takes one unbroken run of
    # positionals); any other leftover is an error, as with parse_args.
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list):
        args.overrides += [a for a in extra if _OVERRIDE.match(a)]
        extra = [a for a in extra if not _OVERRIDE.match(a)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    module = getattr(args, "_module", None)
    if module is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
