"""Loading Micro-Manager configurations and running acquisitions on them.

Shared by the simulator's offline acquisitions and the controller: any
configuration loads here, a simulated rig or a real one.
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scopeloop.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pymmcore_plus.experimental.unicore import UniMMCore

__all__ = ["default_config", "load_core", "run_until_done"]


def default_config(name: str = "demo.cfg") -> Path:
    """Path of a configuration shipped with scopeloop (`hardware_configs/`)."""
    here = Path(__file__).resolve()
    for candidate in (
        here.parents[2] / "hardware_configs" / name,  # source checkout
        here.parent / "hardware_configs" / name,  # installed wheel
    ):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"bundled configuration {name!r} not found next to {here}")


def load_core(config: Path) -> UniMMCore:
    """A `UniMMCore` with `config` loaded; a bad file gives a `ConfigError`."""
    from pymmcore_plus.experimental.unicore import UniMMCore

    if not config.is_file():
        raise ConfigError(f"configuration file not found: {config}")
    text = config.read_text(errors="replace")
    python_only = not any(line.startswith("Device,") for line in text.splitlines())
    # Without C++ devices there is no Micro-Manager installation to find; the
    # core's complaint about that is noise.
    logger = logging.getLogger("pymmcore-plus")
    level = logger.level
    if python_only:
        logger.setLevel(logging.CRITICAL)
    try:
        core = UniMMCore()
    finally:
        logger.setLevel(level)
    try:
        core.loadSystemConfiguration(str(config))
    except Exception as e:  # the loader wraps everything in RuntimeError
        message = f"cannot load {config}: {e}"
    else:
        return core
    # Release the half-loaded core here, on this thread, not from a traceback.
    del core
    gc.collect()
    raise ConfigError(message)


def run_until_done(
    core: UniMMCore,
    events: Any,
    *,
    output: str | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 0.25,
) -> KeyboardInterrupt | None:
    """Run an MDA on the runner's own thread until it finishes.

    Ctrl-C here cancels the runner cleanly, so the writer closes and every
    acquired frame stays readable; the interruption is returned, not raised.
    `on_tick` is called about every `tick_s` seconds while the run goes on.
    """
    interrupted: KeyboardInterrupt | None = None
    finished = threading.Event()
    core.mda.events.sequenceFinished.connect(finished.set)
    runner = core.run_mda(events, output=output)
    try:
        # Event.wait, not Thread.join: a join interrupted by Ctrl-C can report
        # the thread as finished while it still runs.
        while not finished.is_set() and runner.is_alive():
            try:
                finished.wait(timeout=tick_s)
                if on_tick is not None:
                    on_tick()
            except KeyboardInterrupt as e:
                interrupted = e
                core.mda.cancel()
            except BaseException:
                core.mda.cancel()  # e.g. on_tick failed: stop, then say why
                raise
    finally:
        while not finished.wait(timeout=0.1) and runner.is_alive():
            pass
        runner.join()
        core.mda.events.sequenceFinished.disconnect(finished.set)
    return interrupted
