"""The `scopeloop` command line."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
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
    "recording": "--recording",
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
            "(default: hardware_configs/demo.cfg), or of a replay rig "
            "(hardware_configs/replay.cfg)."
        ),
    ] = None,
    recording: Annotated[
        Path | None,
        typer.Option(
            help="Recording to replay (TIFF/OME-TIFF, OME-Zarr or a run folder); "
            "needs a replay configuration (--config hardware_configs/replay.cfg)."
        ),
    ] = None,
    frames: Annotated[int, typer.Option(help="Number of time points.")] = 36,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            help="Simulated seconds between time points [default: 600; "
            "replay: the recording's frame interval].",
            show_default=False,
        ),
    ] = None,
    positions: Annotated[
        int | None,
        typer.Option(
            help="Number of stage positions (a grid over the slide) [default: 2; "
            "replay: the recording's positions].",
            show_default=False,
        ),
    ] = None,
    z_planes: Annotated[
        int, typer.Option(help="Planes per z-stack (1: no stack).")
    ] = 1,
    z_step: Annotated[float, typer.Option(help="Step between planes, um.")] = 1.0,
    exposure: Annotated[
        float | None,
        typer.Option(
            "--exposure",
            help="Exposure, ms [default: 50; replay: the recorded exposure if set].",
            show_default=False,
        ),
    ] = None,
    power: Annotated[
        float | None,
        typer.Option(
            "--power",
            help="Laser power, mW [default: 2; replay: the recorded power; below "
            "it the recorded photons are thinned].",
            show_default=False,
        ),
    ] = None,
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
    """Acquire a simulated time-lapse through the MDA runner, with ground truth.

    On a replay rig (--config hardware_configs/replay.cfg --recording PATH) the
    frames are the recording's, served deterministically, with no ground truth.
    """
    from scopeloop.config import SimulationOptions
    from scopeloop.sim import run_simulation

    # Options not given stay unset: on a replay rig they default to the
    # recording's own values.
    given = {
        "interval_s": interval,
        "positions": positions,
        "exposure_ms": exposure,
        "laser_power_mw": power,
        "recording": recording,
    }
    try:
        options = SimulationOptions(
            out=out,
            config=config,
            frames=frames,
            z_planes=z_planes,
            z_step_um=z_step,
            speedup=speedup,
            seed=seed,
            output_format=output_format,
            **{k: v for k, v in given.items() if v is not None},
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
    task = progress.add_task("frames", total=None)

    def on_frame(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

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

    if summary.recording is not None:
        table = Table(title=f"replayed acquisition -> {out}", show_header=False)
        table.add_row("recording", summary.recording)
        table.add_row("frames", f"{summary.frames} / {summary.frames_planned}")
        table.add_row("positions", str(summary.positions))
        table.add_row(
            "replay time",
            f"{summary.sim_time_h * 3600:.1f} s in {summary.wall_time_s:.1f} s",
        )
        light = summary.light or 0.0
        table.add_row(
            "light",
            f"{light:.3g} x the recording's ("
            + ("photons thinned" if light < 1 else "frames as recorded")
            + ")",
        )
        table.add_row("dose delivered", f"{summary.delivered_dose_mj:.3f} mJ")
        table.add_row("raw stream", summary.raw)
        table.add_row("frames served", "replay_frames.csv")
        table.add_row("ground truth", "none (a recording has none)")
        Console().print(table)
        return
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


def _default_plan() -> Path:
    return Path(__file__).parent / "plans" / "closed_loop.yaml"


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Option(
            help="Micro-Manager configuration (default: hardware_configs/demo.cfg)."
        ),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option(
            help="Session plan (YAML) (default: the bundled plans/closed_loop.yaml)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder (new or empty) (default: under the plan's output root).",
        ),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option(
            help="Address to stream frames on for workers started elsewhere, e.g. "
            "tcp://127.0.0.1:5555, or 'none' (default: start a local worker).",
        ),
    ] = None,
) -> None:
    """Run the loop: acquire, stream every frame to a worker, react, keep everything.

    With no arguments: the closed loop on the simulated rig with the default
    plan and a local worker, then a report.
    """
    from scopeloop.config import load_plan
    from scopeloop.controller import RunStatus, run_session
    from scopeloop.hardware import default_config
    from scopeloop.worker import LocalWorker, free_loopback_address

    plan_path = plan or _default_plan()
    try:
        session_plan = load_plan(plan_path)
    except ScopeloopError as e:
        raise _fail(str(e)) from None
    local: LocalWorker | None = None
    if worker is None and session_plan.stream.enabled:
        worker = free_loopback_address()
        stream = session_plan.stream.model_copy(
            update={
                "wait_for_worker_s": max(session_plan.stream.wait_for_worker_s, 120)
            }
        )
        session_plan = session_plan.model_copy(update={"stream": stream})
        console.print(f"starting a local worker on {worker}", highlight=False)
        local = LocalWorker(worker)

    def render(status: RunStatus) -> Table:
        table = Table(show_header=False, box=None)
        table.add_row(
            "frames",
            f"{status.frames}  ({status.frames_per_s:.1f}/s, {status.elapsed_s:.0f} s)",
        )
        s = status.stream
        if s is not None:
            table.add_row("workers", str(s.workers))
            table.add_row("queue", f"{s.queue_depth} waiting, {s.in_flight} in flight")
            table.add_row(
                "analysed / skipped / lost", f"{s.results} / {s.skipped} / {s.lost}"
            )
            latency = (
                "-"
                if status.latency_p50_ms is None
                else f"{status.latency_p50_ms:.0f} ms"
            )
            table.add_row("latency p50", latency)
        for p in status.positions:
            table.add_row(
                p.name,
                f"{p.mode:<5} {p.frames:>4} frames  {p.dose_mj:7.3f} mJ  "
                f"{p.divisions} divisions",
            )
        return table

    from scopeloop.sim import write_run_truth

    live = Live(console=console, refresh_per_second=4, transient=True)
    live.start()
    summary = None
    try:
        summary = run_session(
            config or default_config(),
            session_plan,
            plan_file=plan_path,
            out=out,
            worker=worker,
            on_tick=lambda status: live.update(render(status)),
            on_finished=write_run_truth,
        )
    except ScopeloopError as e:
        live.stop()
        raise _fail(str(e)) from None
    finally:
        live.stop()
        if local is not None:
            local.stop(Path(summary.folder) if summary is not None else out)

    table = Table(
        title=f"run {summary.finish_reason} -> {summary.folder}", show_header=False
    )
    table.add_row(
        "frames",
        f"{summary.frames} at {summary.frames_per_s:.1f}/s "
        f"over {summary.elapsed_s:.1f} s",
    )
    table.add_row("positions", str(summary.positions))
    table.add_row("dose delivered", f"{summary.delivered_dose_mj:.3f} mJ")
    table.add_row(
        "frames by stream state",
        ", ".join(f"{k}: {v}" for k, v in sorted(summary.stream_states.items())),
    )
    if summary.latency_p50_ms is not None:
        table.add_row(
            "latency p50 / p99",
            f"{summary.latency_p50_ms:.1f} / {summary.latency_p99_ms:.1f} ms",
        )
    if summary.decisions:
        table.add_row(
            "decisions",
            ", ".join(f"{k}: {v}" for k, v in sorted(summary.decisions.items())),
        )
    if summary.rejected_messages:
        table.add_row("rejected messages", str(summary.rejected_messages))
    Console().print(table)
    _report(Path(summary.folder))
    if summary.finish_reason == "cancelled":
        raise typer.Exit(code=130)


def _report(folder: Path) -> None:
    """Write report.png, and score the run if it has ground truth."""
    from scopeloop.evaluate import RunFolderError, evaluate_run, format_evaluation
    from scopeloop.report import write_report

    try:
        console.print(f"report: {write_report(folder)}", highlight=False)
    except Exception as e:  # the run is on disk whatever the report does
        console.print(f"[yellow]no report:[/] {e}", highlight=False)
    if (folder / "ground_truth").is_dir():
        try:
            Console().print(format_evaluation(evaluate_run(folder)))
        except (RunFolderError, ValueError) as e:
            console.print(f"[yellow]not scored:[/] {e}", highlight=False)


@app.command()
def evaluate(
    folder: Annotated[
        Path,
        typer.Argument(help="A run folder of a simulated rig (with ground_truth/)."),
    ],
    tolerance: Annotated[
        int, typer.Option(min=0, help="Frames a detected division may be off by.")
    ] = 2,
    min_fast_frames: Annotated[
        int,
        typer.Option(min=1, help="Fast frames around anaphase to count as filmed."),
    ] = 3,
) -> None:
    """Score a simulated run against its ground truth (writes evaluation.json)."""
    from scopeloop.evaluate import RunFolderError, evaluate_run, format_evaluation

    try:
        result = evaluate_run(
            folder, tolerance_frames=tolerance, min_fast_frames=min_fast_frames
        )
    except (RunFolderError, ScopeloopError) as e:
        raise _fail(str(e)) from None
    Console().print(format_evaluation(result))


_ADDRESS = "tcp://127.0.0.1:5555"


def _model_option(kind: str) -> Any:
    return typer.Option(
        help=f"{kind} model file (default: the shipped weights).",
        exists=True,
        dir_okay=False,
    )


def _threads_option() -> Any:
    return typer.Option(
        min=1,
        help="CPU threads for the networks (default: half the cores, so that "
        "a controller on the same PC keeps its own).",
    )


def _load_pipeline(
    threads: int | None,
    device: str,
    denoiser: Path | None,
    no_denoise: bool,
    labels: Path | None,
    mitosis: Path | None,
) -> Any:
    import torch

    from scopeloop.worker import Pipeline

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))
    with console.status("loading models"):
        return Pipeline.load(
            device=device,
            denoiser=False if no_denoise else denoiser,
            labels=labels,
            mitosis=mitosis,
        )


# Options that `worker` and `analyze` share.
_Device = Annotated[
    str, typer.Option(help="Where the networks run: auto, cpu, cuda, cuda:N.")
]
_Denoiser = Annotated[Path | None, _model_option("Denoiser")]
_NoDenoise = Annotated[bool, typer.Option("--no-denoise", help="Label the raw frames.")]
_Labels = Annotated[Path | None, _model_option("Nucleus label")]
_Mitosis = Annotated[Path | None, _model_option("Mitosis score")]
_Threads = Annotated[int | None, _threads_option()]


@app.command()
def worker(
    address: Annotated[
        str, typer.Option(help="The controller's stream address.")
    ] = _ADDRESS,
    device: _Device = "auto",
    credits: Annotated[
        int, typer.Option(min=1, max=64, help="Frames taken before answering.")
    ] = 2,
    batch: Annotated[
        int, typer.Option(min=1, max=64, help="Most frames analysed together.")
    ] = 4,
    denoiser: _Denoiser = None,
    no_denoise: _NoDenoise = False,
    labels: _Labels = None,
    mitosis: _Mitosis = None,
    threads: _Threads = None,
    send_images: Annotated[
        bool,
        typer.Option(help="Send restored frames and labels back (else tables only)."),
    ] = True,
    frames: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many frames.")
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option(min=0, help="Stop after this many seconds without a frame."),
    ] = None,
) -> None:
    """Run an inference worker: denoise, label and track what a controller streams."""
    import threading

    from scopeloop.worker import serve

    try:
        pipeline = _load_pipeline(
            threads, device, denoiser, no_denoise, labels, mitosis
        )
    except ScopeloopError as e:
        raise _fail(str(e)) from None
    with console.status("warming up"):
        pipeline.warm_up()
    console.print(
        f"worker on {pipeline.device}, models "
        + ", ".join(f"{k} {v[:12]}" for k, v in pipeline.models.items())
        + f"; connecting to {address}",
        highlight=False,
    )
    stop = threading.Event()
    live = Live(console=console, refresh_per_second=4, transient=True)

    def on_batch(stats: Any, _outputs: Any) -> None:
        live.update(
            f"frames {stats.frames} ({stats.frames_per_s:.1f}/s), "
            f"errors {stats.errors}, divisions {stats.divisions}"
        )

    live.start()
    try:
        stats = serve(
            address,
            pipeline,
            credits=credits,
            max_batch=batch,
            send_images=send_images,
            stop=stop,
            max_frames=frames,
            idle_exit_s=idle_exit,
            on_batch=on_batch,
        )
    except KeyboardInterrupt:
        stop.set()
        live.stop()
        console.print("worker stopped")
        raise typer.Exit(code=130) from None
    finally:
        live.stop()
    busy = stats.busy_s / stats.frames * 1000 if stats.frames else 0.0
    console.print(
        f"worker done: {stats.frames} frames, {stats.errors} errors, "
        f"{stats.divisions} divisions, {busy:.0f} ms per frame busy",
        highlight=False,
    )


@app.command()
def analyze(
    source: Annotated[
        Path,
        typer.Argument(
            help="A TIFF/OME-TIFF (YX or TYX, one series per position) or a "
            "scopeloop run folder.",
            exists=True,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (new or empty).")
    ],
    device: _Device = "auto",
    batch: Annotated[
        int, typer.Option(min=1, max=64, help="Frames analysed together.")
    ] = 4,
    denoiser: _Denoiser = None,
    no_denoise: _NoDenoise = False,
    labels: _Labels = None,
    mitosis: _Mitosis = None,
    threads: _Threads = None,
) -> None:
    """Run the worker's pipeline on a recording: restored, labels, nuclei, divisions."""
    from scopeloop.worker import analyze_recording

    try:
        pipeline = _load_pipeline(
            threads, device, denoiser, no_denoise, labels, mitosis
        )
        progress = Progress(
            TextColumn("analysing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        with progress:
            task = progress.add_task("frames", total=None)
            summary = analyze_recording(
                source,
                out,
                pipeline,
                batch=batch,
                on_frame=lambda done, total: progress.update(
                    task, completed=done, total=total
                ),
            )
    except ScopeloopError as e:
        raise _fail(str(e)) from None
    table = Table(title=f"analysis -> {summary.out}", show_header=False)
    table.add_row(
        "frames",
        f"{summary.frames} over {summary.positions} position(s), "
        f"{summary.frames_per_s:.1f}/s",
    )
    table.add_row("nuclei (rows)", str(summary.nuclei))
    table.add_row("divisions", str(summary.divisions))
    if summary.errors:
        table.add_row("frames with errors", str(summary.errors))
    Console().print(table)


class ModelKind(StrEnum):
    """The models `scopeloop train` makes."""

    denoiser = "denoiser"
    labels = "labels"
    mitosis = "mitosis"


@app.command()
def train(
    kind: Annotated[ModelKind, typer.Argument(help="Which model to train.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Model file to write (default: the shipped weights' path, "
            "to remake them).",
            dir_okay=False,
        ),
    ] = None,
    source: Annotated[
        list[Path] | None,
        typer.Option(
            "--input",
            "-i",
            help="Denoiser only: recordings to train on, self-supervised (TIFF, "
            "OME-TIFF or run folders; repeatable) (default: simulated frames).",
            exists=True,
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            help="Denoiser only: fine-tune these weights instead of starting afresh.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=0, help="Training steps (default: the model's).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    device: Annotated[
        str, typer.Option(help="Where to train: auto, cpu, cuda, cuda:N.")
    ] = "auto",
) -> None:
    """Train a model: the denoiser on your recordings, or any model on simulated data.

    Without --input, models train on simulated clips with ground truth (the
    shipped weights are made this way, with the default steps and seed 0).
    """
    from scopeloop.models import (
        Denoiser,
        pick_device,
        shipped_model_path,
        train_denoiser,
        train_shipped_denoiser,
        train_shipped_scorer,
        train_shipped_segmenter,
    )
    from scopeloop.storage import read_recording

    if (source or init) and kind is not ModelKind.denoiser:
        raise _fail("--input and --init apply to the denoiser only")
    target = out or shipped_model_path(kind.value)
    extra = {} if steps is None else {"steps": steps}
    progress = Progress(
        TextColumn(f"training {kind.value}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    try:
        where = str(pick_device(device))
        with progress:
            task = progress.add_task("steps", total=steps, loss=float("nan"))

            def report(step: int, loss: float) -> None:
                progress.update(task, completed=step, loss=loss)

            if kind is ModelKind.denoiser and source:
                frames = [
                    np.asarray(frame)
                    for path in source
                    for series in read_recording(path).series
                    for frame in series.frames
                ]
                model = train_denoiser(
                    frames,
                    seed=seed,
                    device=where,
                    init=None if init is None else Denoiser.load(init, device=where),
                    progress=report,
                    **extra,
                )
                sha = model.save(
                    target,
                    meta={
                        "command": "scopeloop train denoiser",
                        "inputs": [str(p) for p in source],
                        "frames": len(frames),
                        "steps": steps,
                        "seed": seed,
                        "init": None if init is None else str(init),
                    },
                )
            elif kind is ModelKind.denoiser:
                sha = train_shipped_denoiser(
                    target, seed=seed, progress=report, **extra
                ).sha256
            elif kind is ModelKind.labels:
                sha = train_shipped_segmenter(
                    target, seed=seed, device=where, progress=report, **extra
                )
            else:
                sha = train_shipped_scorer(
                    target, seed=seed, device=where, progress=report, **extra
                )
    except ScopeloopError as e:
        raise _fail(str(e)) from None
    console.print(f"wrote {target} (sha256 {sha})", highlight=False)


def main() -> None:
    """Entry point of the `scopeloop` console script."""
    app()
