"""A run at a glance: `report.png` in the run folder (matplotlib, no display).

Two panels over the run's wall-clock time (`frames.csv` ``time_s``):

- cumulative dose per position and in total;
- per position, a band coloured by the imaging mode (each frame's mode
  holds until that position's next frame), the divisions the worker
  detected (at the time of their frame) and, where the run has ground truth,
  the true divisions (at anaphase onset, mapped from simulated time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scopeloop.evaluate import read_run

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

    from scopeloop.evaluate import RunTables

__all__ = ["write_report"]

MODE_COLOURS = {"fast": "tab:orange", "slow": "tab:blue"}
OTHER_MODE_COLOUR = "tab:gray"
BAND_HEIGHT = 0.5


def write_report(folder: Path) -> Path:
    """Draw `folder/report.png` from the run's tables; returns its path.

    Parameters
    ----------
    folder
        A run folder of `scopeloop run` (ground truth optional).

    Raises
    ------
    scopeloop.evaluate.RunFolderError
        When `folder` has no `frames.csv`.

    """
    run = read_run(folder)
    figure = Figure(figsize=(10, 3 + 0.6 * max(1, len(run.positions))), dpi=100)
    FigureCanvasAgg(figure)
    dose_ax, mode_ax = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1]}
    )
    end_s = max((float(r["time_s"]) for r in run.frames), default=0.0)
    _draw_dose(dose_ax, run, end_s)
    _draw_modes(mode_ax, run, end_s)
    _draw_divisions(mode_ax, run)
    mode_ax.set_xlabel("time since the run started (s, wall clock)")
    mode_ax.set_xlim(0, max(end_s, 1e-3) * 1.02)
    figure.suptitle(f"run {folder.name}")
    figure.tight_layout()
    path = folder / "report.png"
    figure.savefig(path)
    return path


def _per_position(run: RunTables) -> dict[int, list[dict[str, str]]]:
    out: dict[int, list[dict[str, str]]] = {p: [] for p in range(len(run.positions))}
    for r in run.frames:
        out.setdefault(int(r["position"]), []).append(r)
    for rows in out.values():
        rows.sort(key=lambda r: float(r["time_s"]))
    return out


def _cumulative(
    rows: list[dict[str, str]], end_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Step curve of delivered dose: (times, dose after each), to `end_s`."""
    t = [0.0] + [float(r["time_s"]) for r in rows] + [end_s]
    dose = np.cumsum([0.0] + [float(r["dose_mj"] or 0.0) for r in rows] + [0.0])
    return np.asarray(t), dose


def _draw_dose(ax: Axes, run: RunTables, end_s: float) -> None:
    for p, rows in _per_position(run).items():
        ax.step(*_cumulative(rows, end_s), where="post", label=run.positions[p])
    frames = sorted(run.frames, key=lambda r: float(r["time_s"]))
    ax.step(
        *_cumulative(frames, end_s),
        where="post",
        color="black",
        linewidth=2,
        label="total",
    )
    ax.set_ylabel("cumulative dose (mJ)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.grid(alpha=0.3)


def _draw_modes(ax: Axes, run: RunTables, end_s: float) -> None:
    used: set[str] = set()
    for p, rows in _per_position(run).items():
        # Runs of equal mode, each as long as the frames it spans.
        spans: dict[str, list[tuple[float, float]]] = {}
        times = [float(r["time_s"]) for r in rows]
        for k, r in enumerate(rows):
            start = times[k]
            stop = times[k + 1] if k + 1 < len(rows) else end_s
            mode = r["mode"] or "base"
            last = spans.setdefault(mode, [])
            if last and abs(last[-1][0] + last[-1][1] - start) < 1e-9:
                last[-1] = (last[-1][0], stop - last[-1][0])
            else:
                last.append((start, max(stop - start, 1e-3)))
        for mode, segments in spans.items():
            used.add(mode)
            ax.broken_barh(
                segments,
                (p - BAND_HEIGHT / 2, BAND_HEIGHT),
                facecolors=MODE_COLOURS.get(mode, OTHER_MODE_COLOUR),
                alpha=0.35,
            )
    for mode in sorted(used):
        ax.plot(
            [],
            [],
            linewidth=8,
            alpha=0.35,
            color=MODE_COLOURS.get(mode, OTHER_MODE_COLOUR),
            label=f"{mode} mode",
        )
    ax.set_yticks(range(len(run.positions)), run.positions)
    ax.set_ylim(-0.7, len(run.positions) - 0.3)
    ax.set_ylabel("position")
    ax.grid(axis="x", alpha=0.3)


def _draw_divisions(ax: Axes, run: RunTables) -> None:
    time_of = {int(r["index"]): float(r["time_s"]) for r in run.frames}
    detected = [
        (time_of[int(r["frame_index"])], int(r["position"]))
        for r in run.detected
        if int(r["frame_index"]) in time_of
    ]
    if detected:
        t, p = zip(*detected, strict=True)
        ax.scatter(
            t,
            np.asarray(p, float) + 0.12,
            marker="v",
            color="black",
            zorder=3,
            label="division detected",
        )
    if run.truth_divisions and run.clock is not None:
        clock = run.clock
        t_true = [clock.wall(float(r["sim_time_s"])) for r in run.truth_divisions]
        p_true = [int(r["position"]) - 0.12 for r in run.truth_divisions]
        ax.scatter(
            t_true,
            p_true,
            marker="x",
            color="tab:red",
            zorder=3,
            label="true division (anaphase onset)",
        )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
