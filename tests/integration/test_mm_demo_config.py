"""Micro-Manager's own demo configuration, for machines with the C++ adapters."""

from __future__ import annotations

import gc
import logging
from typing import TYPE_CHECKING

import numpy as np
import pytest
from pymmcore_plus import CMMCorePlus, find_micromanager

from scopeloop.errors import ConfigError
from scopeloop.sim import default_config, load_core

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = "MMConfig_demo.cfg"

# Failed loads keep a core alive in their traceback: collect it here.
pytestmark = pytest.mark.usefixtures("collect_garbage")


def micromanager() -> str | None:
    """Micro-Manager's installation folder, found quietly, or None."""
    logger = logging.getLogger("pymmcore-plus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the "not found" complaint is expected here
    try:
        return find_micromanager()
    finally:
        logger.setLevel(level)


def test_demo_config_is_shipped_for_cpp_adapters() -> None:
    path: Path = default_config(CONFIG)

    lines = path.read_text().splitlines()

    assert any(line.startswith("Device,Camera,DemoCamera,DCam") for line in lines)
    assert not any(line.startswith("#py ") for line in lines)  # no Python devices


@pytest.mark.skipif(
    micromanager() is not None, reason="Micro-Manager adapters are installed"
)
def test_demo_config_without_adapters_is_a_clear_config_error() -> None:
    path = default_config(CONFIG)

    with pytest.raises(ConfigError) as info:
        core = load_core(path)
        del core
    gc.collect()

    assert str(path) in str(info.value)
    assert "DemoCamera" in str(info.value)


@pytest.mark.hardware
def test_demo_config_loads_in_a_plain_cmmcoreplus() -> None:
    # Arrange
    mm_path = micromanager()
    if mm_path is None:
        pytest.skip(
            "Micro-Manager's C++ device adapters were not found "
            "(pymmcore_plus.find_micromanager() returned None; run `mmcore install`)"
        )
    core = CMMCorePlus(mm_path)

    # Act
    try:
        core.loadSystemConfiguration(str(default_config(CONFIG)))
        core.snapImage()
        image = core.getImage()
        camera, shutter, focus = (
            core.getCameraDevice(),
            core.getShutterDevice(),
            core.getFocusDevice(),
        )
        shape = (core.getImageHeight(), core.getImageWidth())
    finally:
        del core
        gc.collect()

    # Assert
    assert (camera, shutter, focus) == ("Camera", "White Light Shutter", "Z")
    assert image.shape == shape
    assert image.dtype in (np.uint8, np.uint16)
    assert image.max() > image.min()
