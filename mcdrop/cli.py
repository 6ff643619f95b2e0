"""The ``mcdrop`` command line: a dispatcher to ``train``, ``predict``, ``eval``, ``calibrate``, ``compare`` and
``serve``.

Each subcommand lives in the layer it belongs to (``mcdrop.training.train_command``,
``mcdrop.serving.predict_command``, ``mcdrop.training.evaluate``, ``mcdrop.training.calibrate_command``,
``mcdrop.training.compare``, ``mcdrop.serving.serve``); only the module of the command being run is imported.

Every user error (bad flag value, missing or corrupt checkpoint, unreadable input) ends with one line on
stderr saying what is wrong and how to fix it, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mcdrop import __version__
from mcdrop.core.errors import McdropError

logger = logging.getLogger(__name__)

# Subcommands implemented in their own modules: each has add_arguments(parser) and run(args) -> int.
DELEGATED = {
    "train": ("mcdrop.training.train_command", "train a model and write a checkpoint directory"),
    "predict": ("mcdrop.serving.predict_command", "MC predictions for texts, one JSON object per line"),
    "eval": ("mcdrop.training.evaluate", "evaluate a checkpoint: accuracy, NLL, Brier, ECE, selective prediction, OOD"),
    "calibrate": ("mcdrop.training.calibrate_command", "recalibrate a checkpoint on a labelled sample of your traffic"),
    "compare": (
        "mcdrop.training.compare",
        "paired NLL difference of two checkpoints on the same texts, with an interval",
    ),
    "serve": ("mcdrop.serving.serve", "serve every checkpoint under a model directory over HTTP"),
}


def _requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is neither an option nor an option's value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    requested = _requested_command(argv)
    parser = argparse.ArgumentParser(prog="mcdrop", description="Monte Carlo dropout uncertainty for text classifiers")
    parser.add_argument("--version", action="version", version=f"mcdrop {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, (module_name, help_text) in DELEGATED.items():
        sub = subparsers.add_parser(command, help=help_text, description=help_text)
        # Import only the module of the command being run: serving's and training's imports are heavy.
        if command == requested:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        status: int = args.handler(args)
    except McdropError as error:
        print(f"mcdrop {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return status
