"""Sub-model trainings as jobs: each a process of its own with its own slice of the machine (GPUs, or CPU threads),
its log in `logs/train-<cluster>.log`, and one progress line on the console while it runs. A job that fails does not
stop the others."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..training.trainer import PROGRESS_FILE

POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Slot:
    """A share of the machine for one job at a time."""

    index: int
    devices: tuple[str, ...] | None  # CUDA devices (CUDA_VISIBLE_DEVICES), None on CPU
    threads: int | None  # CPU threads, on CPU
    port: int  # accelerate's main process port


def make_slots(parallel: int, gpus_per_job: int | None, use_cpu: bool) -> list[Slot]:
    """`parallel` slots: the visible GPUs split into groups of `gpus_per_job` (default: evenly), or the CPU cores
    split evenly when training on CPU (or when there is no GPU)."""
    from ..errors import DtmError

    visible = _visible_gpus() if not use_cpu else []
    base_port = 29500 + os.getpid() % 1000 * 10  # apart from another run's jobs on the same machine
    if not visible:
        threads = max(1, (os.cpu_count() or 1) // parallel)
        return [Slot(i, None, threads, base_port + i) for i in range(parallel)]
    per_job = gpus_per_job or len(visible) // parallel
    if per_job < 1 or per_job * parallel > len(visible):
        raise DtmError(f"parallel_submodels {parallel} x gpus_per_submodel {per_job} needs {parallel * max(per_job, 1)} "
                       f"GPUs, and {len(visible)} are visible; lower one of them")
    return [Slot(i, tuple(visible[i * per_job:(i + 1) * per_job]), None, base_port + i) for i in range(parallel)]


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def slot_env(slot: Slot) -> dict[str, str]:
    env = dict(os.environ)
    if slot.devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.devices)
    if slot.threads is not None:
        env.update(OMP_NUM_THREADS=str(slot.threads), MKL_NUM_THREADS=str(slot.threads))
    return env


def _stamp() -> str:
    return datetime.now().isoformat(timespec="milliseconds")


def _progress(path: Path) -> tuple[int, int | None]:
    try:
        state = json.loads(path.read_text())
        return int(state["step"]), int(state["max_steps"]) or None
    except (OSError, ValueError, KeyError, TypeError):
        return 0, None


def run_jobs(names: list[str], slots: list[Slot], logs: Path,
             command: Callable[[str, Slot], tuple[list[str], dict]]) -> list[str]:
    """Run one job per name, as many at a time as there are slots; `command(name, slot)` gives its argv and
    environment. Returns the names whose job failed."""
    from tqdm.auto import tqdm

    logs.mkdir(parents=True, exist_ok=True)
    queue, free, running, failed = list(names), list(slots), {}, []
    bars = {slot.index: None for slot in slots}
    try:
        while queue or running:
            while queue and free:
                name, slot = queue.pop(0), free.pop(0)
                progress = logs / f".train-{name}.progress"
                progress.unlink(missing_ok=True)
                argv, env = command(name, slot)
                log = (logs / f"train-{name}.log").open("a")
                log.write(f"[{_stamp()}] started: {' '.join(argv)}\n")
                log.flush()
                process = subprocess.Popen(argv, env={**env, PROGRESS_FILE: str(progress)}, stdout=log,
                                           stderr=subprocess.STDOUT)
                running[name] = (process, slot, log, progress)
                bars[slot.index] = tqdm(desc=f"train {name}", unit="step", position=slot.index, leave=False)
            time.sleep(POLL_SECONDS)
            for name, (process, slot, log, progress) in list(running.items()):
                bar, (step, total) = bars[slot.index], _progress(progress)
                bar.total, bar.n = total, step
                bar.refresh()
                if process.poll() is None:
                    continue
                log.write(f"[{_stamp()}] finished: exit code {process.returncode}\n")
                log.close()
                bar.close()
                progress.unlink(missing_ok=True)
                if process.returncode:
                    failed.append(name)
                del running[name]
                free.append(slot)
    finally:
        for process, *_ in running.values():  # interrupted: no orphan trainings
            process.terminate()
        for bar in bars.values():
            if bar is not None:
                bar.close()
        sys.stderr.write("\n")  # the bars leave the cursor mid-line; what follows starts on its own
    return failed
