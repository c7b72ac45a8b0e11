"""The closed loop against always-slow and always-fast imaging, same culture.

Run from the repository root:

    python benchmarks/bench_loop.py                 # about 10 minutes
    python benchmarks/bench_loop.py --duration 60   # a shorter look

Four runs of `run_session` on `hardware_configs/demo.cfg`, each with the same
culture (same seed, same positions, same speed-up, a fresh world):

* ``loop``: the bundled closed-loop plan's event-driven policy, with a local
  `scopeloop worker` process analysing every frame;
* ``always slow``: the base plan at the slow interval and power;
* ``always fast``: the base plan at the fast interval (frames labelled fast);
* ``always fast, high power``: the same at `--high-power` times the power.

Each run is scored with `scopeloop.evaluate.evaluate_run` against the
simulator's ground truth. Printed per run: divisions in view, divisions
filmed at the fast rate (>= 3 fast frames around anaphase onset), the
worker's division F1 (loop only), dose, and the light damage (nuclei arrested
or dead, divisions prevented). Goal: the loop films >= 90% of divisions at the
fast rate with <= 20% of the dose of always-fast imaging, and loses far fewer
divisions to light than always-fast at high power.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from scopeloop import __version__
from scopeloop.config import BasePolicySettings, SessionPlan, load_plan
from scopeloop.controller import run_session
from scopeloop.evaluate import Evaluation, evaluate_run
from scopeloop.hardware import default_config
from scopeloop.sim import write_run_truth
from scopeloop.worker import LocalWorker, free_loopback_address

PLAN = Path(__file__).parents[1] / "src" / "scopeloop" / "plans" / "closed_loop.yaml"


def variants(base: SessionPlan, high_power: float) -> dict[str, SessionPlan]:
    """The four plans, from the closed-loop plan."""
    policy = base.policy
    assert policy.kind == "event-driven"
    ill = base.illumination
    fast_power = policy.fast_power_mw or ill.laser_power_mw
    none = base.stream.model_copy(update={"worker": "none"})
    budget = base.budget.model_copy(
        update={
            "max_power_mw": max(base.budget.max_power_mw, fast_power * high_power),
            "max_dose_per_position_mj": None,
            "max_dose_total_mj": None,
        }
    )

    def fixed(interval: float, power: float, mode: str) -> SessionPlan:
        return base.model_copy(
            update={
                "time": base.time.model_copy(update={"interval_s": interval}),
                "illumination": ill.model_copy(update={"laser_power_mw": power}),
                "policy": BasePolicySettings.model_validate({"mode": mode}),
                "stream": none,
                "budget": budget,
            }
        )

    return {
        "loop": base,
        "always slow": fixed(base.time.interval_s, ill.laser_power_mw, "slow"),
        "always fast": fixed(policy.fast_interval_s, fast_power, "fast"),
        "always fast, high power": fixed(
            policy.fast_interval_s, fast_power * high_power, "fast"
        ),
    }


def run_one(name: str, plan: SessionPlan, folder: Path) -> Evaluation:
    """Acquire `plan` (with a local worker if it streams) and score it."""
    worker = None
    if plan.stream.enabled:
        address = free_loopback_address()
        plan = plan.model_copy(
            update={"stream": plan.stream.model_copy(update={"worker": address})}
        )
        worker = LocalWorker(address)
    started = time.perf_counter()
    try:
        run_session(default_config(), plan, out=folder, on_finished=write_run_truth)
    finally:
        if worker is not None:
            worker.stop(folder)
    print(f"  {name}: {time.perf_counter() - started:.0f} s -> {folder}", flush=True)
    return evaluate_run(folder)


def main() -> int:
    """Run the four strategies and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=None, help="wall s per run")
    parser.add_argument("--high-power", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    base = load_plan(PLAN)
    if args.duration is not None:
        base = base.model_copy(
            update={"time": base.time.model_copy(update={"duration_s": args.duration})}
        )
    seed = [p for p in base.properties if p.property == "Seed"]
    if not seed:
        from scopeloop.config import PropertySetting

        base = base.model_copy(
            update={
                "properties": (
                    *base.properties,
                    PropertySetting(device="SimHub", property="Seed", value=args.seed),
                )
            }
        )
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_loop_"))
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"bench_loop: scopeloop {__version__}, plan {PLAN.name}, "
        f"{base.time.duration_s:g} s per run, seed {args.seed}, runs in {root}"
    )
    results: dict[str, Evaluation] = {}
    for i, (name, plan) in enumerate(variants(base, args.high_power).items()):
        results[name] = run_one(name, plan, root / f"{i}_{name.replace(' ', '_')}")

    fast_dose = results["always fast"].dose_total_mj
    header = (
        f"{'strategy':<24}{'frames':>7}{'divs':>6}{'filmed fast':>13}"
        f"{'F1':>6}{'dose mJ':>9}{'/fast':>7}{'arrested':>9}{'dead':>6}"
        f"{'prevented':>10}"
    )
    print("\n" + header)
    print("-" * len(header))
    for name, e in results.items():
        filmed = (
            f"{e.divisions_filmed_fast}/{e.true_divisions}"
            f" ({e.divisions_filmed_fast / e.true_divisions:.0%})"
            if e.true_divisions
            else "-"
        )
        f1 = "-" if e.f1 is None or name != "loop" else f"{e.f1:.2f}"
        print(
            f"{name:<24}{e.frames:>7}{e.true_divisions:>6}{filmed:>13}{f1:>6}"
            f"{e.dose_total_mj:>9.2f}{e.dose_total_mj / fast_dose:>7.2f}"
            f"{e.nuclei_arrested or 0:>9}{e.nuclei_dead or 0:>6}"
            f"{e.divisions_prevented or 0:>10}"
        )
    loop = results["loop"]
    filmed_share = (
        loop.divisions_filmed_fast / loop.true_divisions if loop.true_divisions else 0
    )
    ratio = loop.dose_total_mj / fast_dose
    verdict = "MET" if filmed_share >= 0.9 and ratio <= 0.2 else "MISSED"
    print(
        f"\nGoal: loop films >= 90% of divisions fast with <= 20% of always-fast "
        f"dose: {filmed_share:.0%} filmed, {ratio:.2f} of the dose -> {verdict}"
    )
    high = results["always fast, high power"]
    print(
        f"Divisions prevented by light: loop {loop.divisions_prevented}, "
        f"always fast at high power {high.divisions_prevented}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
