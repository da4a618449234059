"""Idle cost: a real `bitinglip up` on a fresh home (the default models installed and warm), left alone;
the CPU time of every process it runs (Prefect server, gateway, model worker, both pool workers, the
supervisor) over 60 s, as a share of one core, per component. Target: the whole platform under 2%.

Two rounds in the same run, one after the other: the platform as shipped, and the same platform with
Prefect's defaults for what it runs and how often it polls (`BITINGLIP_PREFECT_LEAN=false`), the baseline.

    python -m bench.idle [seconds]"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

from bench.harness import cpu_seconds
from tests.ops.up_process import bitinglip, start_up, up_env

SETTLE_S = 20  # after ready: first heartbeats, registrations, model warm-up


def _component(p: psutil.Process) -> str:
    line = " ".join(p.cmdline())
    for marker, name in (
        ("bitinglip.prefect_server", "prefect server"),
        ("--pool gpu", "pool worker gpu"),
        ("--pool cpu", "pool worker cpu"),
        ("bitinglip.cli worker", "model worker"),
        ("bitinglip.cli gateway", "gateway"),
        ("bitinglip.cli up", "supervisor"),
    ):
        if marker in line:
            return name
    return "other: " + line[:60]


def measure(lean: bool, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bitinglip-idle-") as tmp:
        home = Path(tmp) / "home"
        env = up_env(home, BITINGLIP_PREFECT_LEAN=str(lean).lower())
        env.pop("BITINGLIP_WORKER_MODELS")  # the default models, as a new user gets them
        up = start_up(home, env)
        try:
            up.wait_ready(timeout=600)
            time.sleep(SETTLE_S)
            root = psutil.Process(up.pid)
            processes = [root, *root.children(recursive=True)]
            before = cpu_seconds(processes)
            time.sleep(seconds)
            after = cpu_seconds(processes)
            shares: dict[str, float] = defaultdict(float)
            for p in processes:
                if p.pid in before and p.pid in after:
                    shares[_component(p)] += (after[p.pid] - before[p.pid]) / seconds * 100
            return dict(shares)
        finally:
            bitinglip(env, "down", timeout=120)
            up.wait_gone(timeout=120)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60
    rounds = {"Prefect defaults": measure(False, seconds), "as shipped": measure(True, seconds)}
    names = sorted({name for shares in rounds.values() for name in shares})
    print(f"idle CPU over {seconds:.0f} s, % of one core (2-core box):")
    print(f"  {'component':<22}" + "".join(f"{label:>18}" for label in rounds))
    for name in names:
        print(f"  {name:<22}" + "".join(f"{shares.get(name, 0):>17.2f}%" for shares in rounds.values()))
    totals = {label: sum(shares.values()) for label, shares in rounds.items()}
    print(f"  {'total':<22}" + "".join(f"{total:>17.2f}%" for total in totals.values()))
    print(f"  as shipped vs Prefect defaults: {totals['as shipped'] / totals['Prefect defaults']:.2f}   (target: < 2%)")


if __name__ == "__main__":
    main()
