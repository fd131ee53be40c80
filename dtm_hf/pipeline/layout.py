"""The run folder of `dtm-hf run`: where each stage writes, and how the stages find each other's outputs.

    data/  submodels/<cluster>/  baseline/all/  merged/<name>/  eval/  logs/  recipe.yaml  run_state.json
"""

import json
from dataclasses import dataclass
from pathlib import Path

from ..names import ALL, BASELINE, MARKER, cluster_names


@dataclass(frozen=True)
class RunLayout:
    run_dir: Path

    data_dir = property(lambda self: self.run_dir / "data")
    submodels_dir = property(lambda self: self.run_dir / "submodels")
    baseline_dir = property(lambda self: self.run_dir / BASELINE)
    merged_dir = property(lambda self: self.run_dir / "merged")
    eval_dir = property(lambda self: self.run_dir / "eval")
    logs_dir = property(lambda self: self.run_dir / "logs")
    state_file = property(lambda self: self.run_dir / "run_state.json")
    recipe_file = property(lambda self: self.run_dir / "recipe.yaml")
    pushed_file = property(lambda self: self.run_dir / "pushed.json")

    def clusters(self) -> list[str]:
        """The distribute stage's clusters, read from its output."""
        return cluster_names(json.loads((self.data_dir / "stats.json").read_text())["n_clusters"])

    def trained_dir(self, cluster: str) -> Path:
        """`dtm-hf train` writes OUTPUT_DIR/<cluster>/: sub-models under submodels/, the baseline at baseline/all/."""
        return (self.baseline_dir if cluster == ALL else self.submodels_dir) / cluster

    def merged(self, name: str) -> Path:
        return self.merged_dir / name

    def trained_models(self) -> dict[str, Path]:
        """The trained models by name: the baseline (when it was trained) and every cluster's sub-model."""
        baseline = {BASELINE: self.trained_dir(ALL)} if (self.trained_dir(ALL) / MARKER).is_file() else {}
        return {**baseline, **{c: self.trained_dir(c) for c in self.clusters()}}
