"""Run `dtm-hf` with one fault injected at a chosen call, in a process of its own that the tests can kill:

    python tests/fault_driver.py ACTION@MODULE:QUALNAME[#N] [--ready FILE] -- COMMAND ARGS...

At the N-th call (default 1) of the function MODULE:QUALNAME (e.g. `dtm_hf.data.repo:_write_config` or
`transformers.trainer_callback:TrainerState.save_to_json`), ACTION is:
  kill-before  the process kills itself (SIGKILL, as a pre-empted job or an OOM kill) before the call runs;
  kill-after   the call runs, then the process kills itself;
  pause        FILE is created and the process sleeps (for a signal, or a second writer to meet its lock).
"""

import importlib
import os
import signal
import sys
import time
from pathlib import Path


def inject(spec: str, ready: str | None) -> None:
    action, _, target = spec.partition("@")
    target, _, nth = target.partition("#")
    module_name, _, qualname = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = qualname.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = {"n": 0}

    def faulty(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(nth or 1):
            if action == "kill-before":
                os.kill(os.getpid(), signal.SIGKILL)
            if action == "pause":
                Path(ready).touch()
                time.sleep(120)
            if action == "kill-after":
                result = original(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
                return result
        return original(*args, **kwargs)

    setattr(owner, name, faulty)


def main(argv: list[str]) -> None:
    at = argv.index("--")
    spec, options, command = argv[0], argv[1:at], argv[at + 1:]
    ready = options[options.index("--ready") + 1] if "--ready" in options else None
    inject(spec, ready)
    from dtm_hf.cli import main as cli_main

    cli_main(command)


if __name__ == "__main__":
    main(sys.argv[1:])
