"""Runs the stages of one recipe in one run folder, recording what each stage ran with: its settings and the
content digests of its inputs (which include the outputs of the stages before it). A stage whose record is
unchanged and whose outputs are complete is skipped; otherwise it runs, and the console says why."""

import hashlib
import json
import logging
import time
from collections.abc import Callable

from ..hub import redact
from ..outputs import write_atomic
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

    @staticmethod
    def settings_record(settings: dict) -> tuple[dict, str]:
        """(settings as recorded: JSON, tokens redacted; their fingerprint)."""
        settings = json.loads(json.dumps(redact(settings), default=str))
        return settings, hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def stage(self, name: str, settings: dict, outputs_complete: Callable[[], bool],
              work: Callable[[bool], None]) -> None:
        """Run `work(changed)` unless the stage is current; `changed` says that outputs it made before are stale
        (settings or inputs changed since they were made), so they must be replaced rather than resumed. The new
        record is kept before the work starts, marked unfinished: a rerun after a failure or an interruption
        resumes with the same settings instead of starting over."""
        settings, fingerprint = self.settings_record(settings)
        recorded = self.state.get(name, {})
        changed = recorded.get("fingerprint") not in (None, fingerprint)
        finished = recorded.get("finished", True)
        if not self.overwrite and not changed and recorded and finished and outputs_complete():
            logger.info(f"[{name}] skipped: outputs complete, settings and inputs unchanged")
            self.summary.append((name, "skipped", 0.0))
            self.digests.save()
            return
        if self.overwrite:
            reason = "--overwrite"
        elif not recorded:
            reason = "first run"
        elif changed:
            reason = "; ".join(changes(recorded.get("settings", {}), settings)) or "settings changed"
        else:
            reason = "interrupted: resuming" if not finished else "outputs incomplete"
        logger.info(f"[{name}] running ({reason})")
        self.state[name] = {"fingerprint": fingerprint, "settings": settings, "finished": False}
        self._save()
        start = time.perf_counter()
        work(changed or self.overwrite)
        elapsed = time.perf_counter() - start
        self.state[name].update(finished=True, seconds=round(elapsed, 2))
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
        write_atomic(self.layout.state_file, json.dumps(self.state, indent=2) + "\n")
        self.digests.save()
