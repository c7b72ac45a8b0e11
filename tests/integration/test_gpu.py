"""The pipeline on a CUDA GPU gives what it gives on the CPU (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scopeloop.models import average_precision, simulate_clip
from scopeloop.sim import CultureParams, SensorModel
from scopeloop.worker import FrameInput, Pipeline

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
]


def test_pipeline_on_the_gpu_matches_the_cpu() -> None:
    params = CultureParams(seed=1, density_per_mm2=1500, slide_width_um=400)
    clip = simulate_clip(params, SensorModel(), shape=(256, 256), frames=3)
    frames = [FrameInput(0, t, clip.noisy[t].astype(np.uint16), t) for t in range(3)]

    on_cpu = Pipeline.load(device="cpu").process(frames)
    on_gpu = Pipeline.load(device="cuda").process(frames)

    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        assert gpu.error is None
        assert gpu.restored is not None and cpu.restored is not None
        scale = float(cpu.restored.std())
        assert np.abs(gpu.restored - cpu.restored).max() < 0.05 * scale
        assert gpu.labels is not None and cpu.labels is not None
        assert average_precision(gpu.labels, cpu.labels) > 0.9
