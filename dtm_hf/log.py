"""The console: dtm-hf's messages through the standard `logging` module (which transformers and accelerate log
through too), printed by the main process only, with third-party noise that is not the user's business kept off.

Modules log with `logging.getLogger(__name__)` (entry modules name theirs, as they may run as `__main__`); `setup()` runs once per command, before any heavy import.
"""

import logging
import os
import sys
import warnings


class _Console(logging.Handler):
    """Information to stdout, warnings to stderr as `warning: ...`; the streams are looked up at each message, so
    a redirected sys.stdout (a log file, a test's capture) receives them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"warning: {self.format(record)}\n")
                sys.stderr.flush()
            else:
                sys.stdout.write(self.format(record) + "\n")
                sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (accelerate and torchrun set RANK), or a plain process."""
    return os.environ.get("RANK", "0") == "0"


def setup() -> None:
    logger = logging.getLogger("dtm_hf")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console())
    logger.setLevel(logging.INFO if is_main_process() else logging.ERROR)
    logger.propagate = False
    # bitsandbytes warns on import when the optional `kernels` package (a faster CPU 4-bit kernel) is missing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # huggingface_hub warns at every retry of a failing request; a failed upload ends in one line of ours.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    # TRL and peft read `model.is_gradient_checkpointing`, which transformers 5 deprecates: theirs to rename.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
