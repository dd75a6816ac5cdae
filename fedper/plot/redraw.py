"""`python -m fedper.plot redraw`: every committed table and figure, drawn again from its packed runs.

A manifest (YAML, `docs/results/tables.yaml`) lists each `python -m fedper.plot` call under
`plots`: `runs` (packed files), `out` (folder), `args` (the other options) and `reused_from`
(name -> packed file), every path relative to the manifest's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from fedper.plot.command import plot_parser, plot_runs
from fedper.plot.runs import PlotError

MANIFEST = Path("docs/results/tables.yaml")


@dataclass(frozen=True)
class Entry:
    """One `python -m fedper.plot` call of a manifest."""

    runs: tuple[str, ...]
    out: str
    args: tuple[str, ...] = ()
    reused_from: dict[str, str] = field(default_factory=dict)


def read_manifest(path: str | Path) -> list[Entry]:
    """The entries of a manifest, or a PlotError naming the file and what is wrong."""
    path = Path(path)
    try:
        entries = OmegaConf.to_container(OmegaConf.load(path))["plots"]
        return [
            Entry(tuple(e["runs"]), e["out"], tuple(e.get("args", ())), e.get("reused_from", {}))
            for e in entries
        ]
    except FileNotFoundError:
        raise PlotError(f"{path} does not exist: give a manifest such as {MANIFEST}") from None
    except Exception as error:  # YAML syntax, or entries without runs and out
        raise PlotError(f"{path}: not a manifest of `plots` entries with runs and out ({error})") from None  # fmt: skip


def redraw(manifest: str | Path, out_root: str | Path | None = None, figures: bool = True) -> list[Path]:  # fmt: skip
    """Draw every entry again, into its `out` below out_root (default: the manifest's folder)."""
    base = Path(manifest).parent
    root = base if out_root is None else Path(out_root)
    written = []
    for entry in read_manifest(manifest):
        options = plot_parser().parse_args([*[str(base / r) for r in entry.runs], *entry.args])
        reused = [f"{name}={base / source}" for name, source in entry.reused_from.items()]
        output = plot_runs(
            options.folders, root / entry.out, options.figure, options.band, options.compare,
            options.metric, options.target, reused, figures, tuned=options.tuned,
        )  # fmt: skip
        written += [*output.figures, *output.tables]
    return written
