"""The `scopeloop` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from scopeloop import __version__
from scopeloop.errors import ScopeloopError

app = typer.Typer(
    name="scopeloop",
    help="Closed-loop smart microscopy on pymmcore-plus, with a simulated rig.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"scopeloop {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Closed-loop smart microscopy."""


_FLAGS = {
    "out": "--out",
    "config": "--config",
    "frames": "--frames",
    "interval_s": "--interval",
    "positions": "--positions",
    "z_planes": "--z-planes",
    "z_step_um": "--z-step",
    "exposure_ms": "--exposure",
    "laser_power_mw": "--power",
    "speedup": "--speedup",
    "seed": "--seed",
    "output_format": "--format",
}


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code=2)


@app.command()
def simulate(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder to write the run to (new or empty)."),
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            help="Micro-Manager configuration of a simulated rig "
            "[default: hardware_configs/demo.cfg]."
        ),
    ] = None,
    frames: Annotated[int, typer.Option(help="Number of time points.")] = 36,
    interval: Annotated[
        float, typer.Option("--interval", help="Simulated seconds between time points.")
    ] = 600.0,
    positions: Annotated[
        int, typer.Option(help="Number of stage positions (a grid over the slide).")
    ] = 2,
    z_planes: Annotated[
        int, typer.Option(help="Planes per z-stack (1: no stack).")
    ] = 1,
    z_step: Annotated[float, typer.Option(help="Step between planes, um.")] = 1.0,
    exposure: Annotated[float, typer.Option("--exposure", help="Exposure, ms.")] = 50.0,
    power: Annotated[float, typer.Option("--power", help="Laser power, mW.")] = 2.0,
    speedup: Annotated[
        float, typer.Option(help="Simulated seconds per wall-clock second.")
    ] = 3600.0,
    seed: Annotated[
        int, typer.Option(help="Seed of the culture and the camera noise.")
    ] = 0,
    output_format: Annotated[
        str, typer.Option("--format", help="ome-tiff or ome-zarr.")
    ] = "ome-tiff",
) -> None:
    """Acquire a simulated time-lapse through the MDA runner, with ground truth."""
    from scopeloop.config import SimulationOptions
    from scopeloop.sim import run_simulation

    try:
        options = SimulationOptions(
            out=out,
            config=config,
            frames=frames,
            interval_s=interval,
            positions=positions,
            z_planes=z_planes,
            z_step_um=z_step,
            exposure_ms=exposure,
            laser_power_mw=power,
            speedup=speedup,
            seed=seed,
            output_format=output_format,
        )
    except ValidationError as e:
        raise _fail(
            "; ".join(
                f"{_FLAGS.get(str(err['loc'][0]), err['loc'][0])} "
                f"{err.get('input')!r}: {err['msg']}"
                for err in e.errors()
            )
        ) from None

    progress = Progress(
        TextColumn("[bold]acquiring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("frames", total=frames * positions * z_planes)

    def on_frame(done: int, _total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done)

    try:
        summary = run_simulation(options, on_frame=on_frame)
    except ScopeloopError as e:
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        progress.stop()
        console.print(f"[yellow]interrupted[/]: frames acquired so far are in {out}")
        raise typer.Exit(code=130) from None
    finally:
        progress.stop()

    table = Table(title=f"simulated acquisition -> {out}", show_header=False)
    table.add_row("frames", f"{summary.frames} / {summary.frames_planned}")
    table.add_row("positions", str(summary.positions))
    table.add_row(
        "simulated time", f"{summary.sim_time_h:.2f} h in {summary.wall_time_s:.1f} s"
    )
    table.add_row("divisions in view", str(summary.divisions))
    table.add_row("dose delivered", f"{summary.delivered_dose_mj:.3f} mJ")
    table.add_row("dead nuclei (slide)", str(summary.dead_nuclei))
    table.add_row("raw stream", summary.raw)
    table.add_row("ground truth", "ground_truth/ (frames, nuclei, divisions, labels)")
    Console().print(table)


def main() -> None:
    """Entry point of the `scopeloop` console script."""
    app()
