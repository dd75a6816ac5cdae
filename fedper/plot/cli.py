"""`python -m fedper.plot`: figures, the summary table and paired differences from runs.

`python -m fedper.plot pack <sweep folder> --out <file>.jsonl.gz` packs a sweep into one file;
`python -m fedper.plot redraw [manifest]` draws every committed table and figure again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fedper.plot.command import plot_parser, plot_runs
from fedper.plot.pack import pack_sweep
from fedper.plot.redraw import MANIFEST, redraw
from fedper.plot.runs import PlotError
from fedper.plot.tables import differences_markdown, summary_markdown


def pack_main(argv: Sequence[str]) -> int:
    """`python -m fedper.plot pack <folder> --out <file>`: exit 0 packed, 2 with a one-line error."""
    parser = argparse.ArgumentParser(
        prog="python -m fedper.plot pack",
        description="Pack every run below a sweep folder into one JSON Lines file (gzip): "
        "settings without machine paths, code and library versions, per-round metrics.",
    )
    parser.add_argument("folder", type=Path, help="the sweep (multirun) folder")
    parser.add_argument("--out", type=Path, required=True, help="the file, e.g. runs.jsonl.gz")
    parser.add_argument(
        "--legacy",
        action="store_true",
        help="pack runs from several commits or uncommitted trees anyway (recorded per run)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    try:
        packed = pack_sweep(args.folder, args.out, args.legacy, args.force)
    except PlotError as error:
        print(f"fedper.plot pack: error: {error}", file=sys.stderr)
        return 2
    commits = ", ".join(commit[:10] for commit in packed.commits)
    legacy = " (legacy: not one clean commit)" if packed.legacy else ""
    print(f"packed {packed.runs} runs of commit(s) {commits}{legacy} into {packed.path}")
    return 0


def redraw_main(argv: Sequence[str]) -> int:
    """`python -m fedper.plot redraw [manifest]`: every committed table and figure, drawn again."""
    parser = argparse.ArgumentParser(
        prog="python -m fedper.plot redraw",
        description="Draw every table and figure a manifest lists again, from its packed runs.",
    )
    parser.add_argument("manifest", type=Path, nargs="?", default=MANIFEST, help=f"default {MANIFEST}")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        written = redraw(args.manifest)
    except PlotError as error:
        print(f"fedper.plot redraw: error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit 0 with figures written, 2 with a one-line error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="fedper.plot: warning: %(message)s", level=logging.WARNING)
    if argv[:1] == ["pack"]:
        return pack_main(argv[1:])
    if argv[:1] == ["redraw"]:
        return redraw_main(argv[1:])
    args = plot_parser().parse_args(argv)
    out_dir = args.out or (args.folders[0] if args.folders[0].is_dir() else args.folders[0].parent)
    split = "test" if args.metric == "test" else "validation"
    try:
        output = plot_runs(
            args.folders, out_dir, args.figure, args.band, args.compare, args.metric,
            args.target, args.reused_from, tuned=args.tuned,
        )  # fmt: skip
    except PlotError as error:
        print(f"fedper.plot: error: {error}", file=sys.stderr)
        return 2
    print(summary_markdown(output.summary, split), end="")
    if output.differences is not None and len(output.differences):
        print("\n" + differences_markdown(output.differences, split), end="")
    for path in [*output.figures, *output.tables]:
        print(f"wrote {path}")
    return 0
