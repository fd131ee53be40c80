"""Runs the stages of one recipe in one run folder, recording what each stage ran with: a stage whose settings
and inputs are unchanged and whose outputs are complete is skipped; a changed one re-runs, and so does every stage
after it (each stage's fingerprint chains the one before)."""

import hashlib
import json
import logging
import time
from collections.abc import Callable

from .layout import RunLayout
from .recipe import Recipe

logger = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, recipe: Recipe, layout: RunLayout, overwrite: bool):
        self.recipe, self.layout, self.overwrite = recipe, layout, overwrite
        self.state = json.loads(layout.state_file.read_text()) if layout.state_file.is_file() else {}
        self.upstream = ""  # fingerprint chain: a changed stage changes every later stage's fingerprint
        self.summary: list[tuple[str, str, float]] = []

    def stage(self, name: str, settings, outputs_complete: Callable[[], bool], work: Callable[[bool], None]) -> None:
        """Run `work(changed)` unless the stage is current; `changed` says whether earlier outputs are stale."""
        fingerprint = hashlib.sha256(json.dumps([self.upstream, settings], sort_keys=True, default=str)
                                     .encode()).hexdigest()[:16]
        self.upstream = fingerprint
        recorded = self.state.get(name, {})
        if not self.overwrite and recorded.get("fingerprint") == fingerprint and outputs_complete():
            logger.info(f"[{name}] skipped: outputs complete, settings and inputs unchanged")
            self.summary.append((name, "skipped", 0.0))
            return
        reason = ("--overwrite" if self.overwrite else "first run" if not recorded else
                  "settings or inputs changed" if recorded.get("fingerprint") != fingerprint else
                  "outputs incomplete (interrupted)")
        logger.info(f"[{name}] running ({reason})")
        start = time.perf_counter()
        work(recorded.get("fingerprint") not in (None, fingerprint) or self.overwrite)
        elapsed = time.perf_counter() - start
        self.state[name] = {"fingerprint": fingerprint, "seconds": round(elapsed, 2)}
        self.layout.state_file.write_text(json.dumps(self.state, indent=2) + "\n")
        self.summary.append((name, "ran", elapsed))
