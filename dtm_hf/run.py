"""The whole Disperse-Then-Merge pipeline from one recipe; with no recipe, an offline CPU demo.

    dtm-hf run                                              # demo: ./dtm-demo, a few minutes on 2 CPU cores
    dtm-hf run --config recipes/llama-2-7b/dtm.yaml --run_dir runs/llama2-dtm

A pipeline recipe has one section per step, `distribute:`, `train:`, `merge:` (a list), `evaluate:`, and
`hub:`, whose keys are exactly those of the step commands (copy a section into a step's own `--config`). The
run folder holds `data/`, `submodels/<cluster>/`, `baseline/`, `merged/<name>/`, `eval/` and `recipe.yaml`.
A stage whose settings and inputs are unchanged and whose outputs are complete is skipped; a changed setting
re-runs that stage and the ones after it.
"""

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .cli import run_command
from .errors import DtmError

STAGES = ("distribute", "train", "merge", "evaluate", "push")
SECTIONS = {"distribute", "train", "merge", "evaluate", "hub", "accelerate_config"}
HUB_KEYS = {"namespace", "push", "private", "prefix"}


@dataclass
class RunArguments:
    config: str | None = field(default=None, metadata={"help": "Pipeline recipe (YAML); the offline demo if unset."})
    run_dir: str | None = field(default=None, metadata={"help": "Run folder (default: ./dtm-demo for the demo)."})
    stages: str = field(default=",".join(STAGES), metadata={
        "help": "Comma-separated stages to run; they always run in pipeline order."})
    overwrite: bool = field(default=False, metadata={"help": "Re-run every stage even when its outputs are current."})


class Pipeline:
    """Runs the stages of one recipe inside one run folder, recording what each stage was run with."""

    def __init__(self, recipe: dict, run_dir: Path, overwrite: bool):
        self.recipe, self.run_dir, self.overwrite = recipe, run_dir, overwrite
        self.state_path = run_dir / "run_state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self.upstream = ""  # fingerprint chain: a changed stage changes every later stage's fingerprint
        self.summary: list[tuple[str, str, float]] = []

    # --- paths -------------------------------------------------------------------------------------------------
    data_dir = property(lambda self: self.run_dir / "data")
    submodels_dir = property(lambda self: self.run_dir / "submodels")
    baseline_dir = property(lambda self: self.run_dir / "baseline")
    merged_dir = property(lambda self: self.run_dir / "merged")
    eval_dir = property(lambda self: self.run_dir / "eval")

    def clusters(self) -> list[str]:
        sizes = json.loads((self.data_dir / "stats.json").read_text())["sizes"]
        return [f"cluster_{i}" for i in range(len(sizes))]

    # --- one stage -----------------------------------------------------------------------------------------------
    def stage(self, name: str, settings: dict, outputs_complete, work) -> None:
        fingerprint = hashlib.sha256(json.dumps([self.upstream, settings], sort_keys=True, default=str)
                                     .encode()).hexdigest()[:16]
        self.upstream = fingerprint
        recorded = self.state.get(name, {})
        if not self.overwrite and recorded.get("fingerprint") == fingerprint and outputs_complete():
            print(f"[{name}] skipped: outputs complete, settings and inputs unchanged")
            self.summary.append((name, "skipped", 0.0))
            return
        reason = ("--overwrite" if self.overwrite else "first run" if not recorded else
                  "settings or inputs changed" if recorded.get("fingerprint") != fingerprint else
                  "outputs incomplete (interrupted)")
        print(f"[{name}] running ({reason})")
        start = time.perf_counter()
        work(changed=recorded.get("fingerprint") not in (None, fingerprint) or self.overwrite)
        elapsed = time.perf_counter() - start
        self.state[name] = {"fingerprint": fingerprint, "seconds": round(elapsed, 2)}
        self.state_path.write_text(json.dumps(self.state, indent=2) + "\n")
        self.summary.append((name, "ran", elapsed))


def step_args(module_name: str, section: dict, overrides: dict, label: str) -> tuple:
    """Parse a recipe section with the step's own parser (unknown keys fail there), plus the run's overrides."""
    import importlib
    import tempfile

    from .cli import parse

    module = importlib.import_module(f"dtm_hf.{module_name}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({**section, **overrides}, f)
    try:
        return parse(module.make_parser(prog=f"dtm-hf {module_name}"), ["--config", f.name])
    except DtmError as err:
        raise DtmError(f"recipe section {label!r}: {str(err).replace(f.name, 'the recipe')}") from err
    finally:
        Path(f.name).unlink()


def load_recipe(path: str | None, run_dir: Path) -> dict:
    if path is None:
        from .demo import prepare_demo

        return prepare_demo(run_dir)
    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DtmError(f"cannot read the recipe {path}: {err}") from err
    if not isinstance(recipe, dict):
        raise DtmError(f"the recipe {path} must be a YAML mapping with sections {sorted(SECTIONS)}")
    unknown = sorted(set(recipe) - SECTIONS)
    if unknown:
        raise DtmError(f"unknown section(s) {unknown} in {path}; the sections are {sorted(SECTIONS)}")
    return recipe


def run(args: RunArguments) -> Path:
    from . import pipeline_stages

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise DtmError(f"unknown stage(s) {bad}; the stages are {', '.join(STAGES)}")
    run_dir = Path(args.run_dir or ("dtm-demo" if args.config is None else "dtm-run")).absolute()
    recipe = load_recipe(args.config, run_dir)
    pipeline = Pipeline(recipe, run_dir, args.overwrite)
    plan = pipeline_stages.validate(pipeline, stages)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    start = time.perf_counter()
    for name in STAGES:
        if name in plan:
            plan[name]()
    print(pipeline_stages.summary(pipeline, time.perf_counter() - start))
    return run_dir


def main(args: RunArguments) -> Path:
    return run(args)


def make_parser(prog: str | None = None):
    from transformers import HfArgumentParser

    # `--config` is this command's own flag (the pipeline recipe), so the plain HfArgumentParser is used.
    return HfArgumentParser((RunArguments,), prog=prog)


def accelerate_launch(config_file: str, train_yaml: Path, cluster: str) -> None:
    # This interpreter's accelerate, so that the run works without the environment's bin/ on PATH.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file, "-m",
               "dtm_hf.train", "--config", str(train_yaml), "--cluster", cluster]
    print("$ " + " ".join(command))
    if subprocess.run(command).returncode:
        raise DtmError(f"training {cluster} under accelerate failed; see the log above")


if __name__ == "__main__":
    run_command(make_parser, main)
