"""Runs the stages of one recipe in one run folder, recording what each stage ran with: its settings and the
content digests of its inputs (which include the outputs of the stages before it). A stage whose record is
unchanged and whose outputs are complete is skipped; otherwise it runs, and the console says why."""

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable

from ..hub import redact
from .fingerprint import Digests, changes
from .layout import RunLayout
from .recipe import Recipe

logger = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, recipe: Recipe, layout: RunLayout, overwrite: bool, only: str | None = None):
        self.recipe, self.layout, self.overwrite = recipe, layout, overwrite
        self.only = only  # one sub-model to train (one job of a cluster's array); its stage is not recorded
        self.state = self._load(layout.state_file)
        self.digests = Digests(layout.run_dir / ".digests.json")
        self.summary: list[tuple[str, str, float]] = []

    def stage(self, name: str, settings: dict, outputs_complete: Callable[[], bool],
              work: Callable[[bool], None]) -> None:
        """Run `work(changed)` unless the stage is current; `changed` says that outputs it made before are stale
        (settings or inputs changed), so they must be replaced rather than resumed."""
        settings = json.loads(json.dumps(redact(settings), default=str))
        fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        recorded = self.state.get(name, {})
        changed = recorded.get("fingerprint") not in (None, fingerprint)
        if not self.overwrite and not changed and recorded and outputs_complete():
            logger.info(f"[{name}] skipped: outputs complete, settings and inputs unchanged")
            self.summary.append((name, "skipped", 0.0))
            return
        if self.overwrite:
            reason = "--overwrite"
        elif not recorded:
            reason = "first run"
        elif changed:
            reason = "; ".join(changes(recorded.get("settings", {}), settings)) or "settings changed"
        else:
            reason = "outputs incomplete (interrupted)"
        logger.info(f"[{name}] running ({reason})")
        start = time.perf_counter()
        work(changed or self.overwrite)
        elapsed = time.perf_counter() - start
        self.state[name] = {"fingerprint": fingerprint, "seconds": round(elapsed, 2), "settings": settings}
        self._save()
        self.summary.append((name, "ran", elapsed))

    @staticmethod
    def _load(path) -> dict:
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError:
            # Each step skips its own complete outputs, so starting over costs no finished work.
            logger.warning(f"{path} is unreadable; every stage runs again, keeping what is complete")
            return {}

    def _save(self) -> None:
        """run_state.json whole or not at all; the digest cache beside it."""
        tmp = self.layout.state_file.with_name(f".run_state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.layout.state_file)
        self.digests.save()
