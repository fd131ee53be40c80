"""The stages of `dtm-hf run`, in pipeline order: what each one runs, what it ran with (its recipe section and the
content of its inputs, earlier stages' outputs included), when its outputs are complete, and which stages' outputs
it needs. Adding a stage is adding a function here and its entry in STAGES."""

import copy
import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import distribute, evaluate, merge, train
from ..errors import DtmError
from ..names import ALL, BASELINE, MARKER, MERGE_MARKER
from ..outputs import output_lock, write_atomic
from .engine import Pipeline
from .jobs import make_slots, run_jobs
from .launch import train_command
from .push import push_run
from .recipe import Recipe

logger = logging.getLogger(__name__)
# Files of a trained or merged model that do not change what it computes (records, cards, logs).
RECORDS = ("README.md", MARKER, MERGE_MARKER, "trainer_state.json")


def data_complete(p: Pipeline) -> bool:
    return (p.layout.data_dir / "stats.json").is_file()


def data_signature(p: Pipeline) -> str | None:
    """The distribute output's content: its parquet shards (named by digest) and which row went where."""
    data = p.layout.data_dir
    parts = sorted(f.relative_to(data).as_posix() for f in data.glob("*/*.parquet"))
    return p.digests.signature(data / "clusters.json") + ":" + ",".join(parts) if data_complete(p) else None


def stage_distribute(p: Pipeline) -> None:
    args = p.recipe.distribute
    settings = {"distribute": p.recipe.sections["distribute"],
                "inputs": {"dataset": p.digests.signature(args.dataset),
                           "embedding_model": p.digests.signature(args.embedding_model)}}
    p.stage("distribute", settings, lambda: data_complete(p), lambda changed: distribute.main(args))


def train_targets(p: Pipeline) -> list[str]:
    """The sub-models the recipe trains: every cluster, then the all-data baseline when asked."""
    return p.layout.clusters() + ([ALL] if p.recipe.train[0].baseline else [])


def train_jobs(p: Pipeline) -> dict[str, tuple]:
    """One `dtm-hf train` per sub-model: its three dataclasses."""
    dtm_args, training_args, model_args = p.recipe.train
    jobs = {}
    for cluster in train_targets(p):
        job_training = copy.deepcopy(training_args)
        job_training.output_dir = str(p.layout.trained_dir(cluster).parent)
        jobs[cluster] = (dataclasses.replace(dtm_args, cluster=cluster, baseline=False), job_training, model_args)
    return jobs


def train_settings(p: Pipeline) -> dict:
    dtm_args, _, model_args = p.recipe.train
    return {"train": p.recipe.sections["train"], "accelerate_config": p.recipe.accelerate_config,
            "held_out": dtm_args.held_out,
            "inputs": {"base_model": p.digests.signature(model_args.model_name_or_path), "data": data_signature(p),
                       "accelerate_config": p.digests.signature(p.recipe.accelerate_config)}}


def train_complete(p: Pipeline) -> bool:
    """Every sub-model finished, with the recipe's current settings."""
    if not data_complete(p):
        return False
    fingerprint = p.settings_record(train_settings(p))[1]
    return all((p.layout.trained_dir(c) / MARKER).is_file() and _stamped(p, c) == fingerprint
               for c in train_targets(p))


def _stamped(p: Pipeline, cluster: str) -> str | None:
    stamp = _stamp(p, cluster)
    return stamp.read_text().strip() if stamp.is_file() else None


def _stamp(p: Pipeline, cluster: str) -> Path:
    """Beside a sub-model's folder: the fingerprint of the settings its contents (checkpoints, then the finished
    sub-model) were made with. It survives the folder's replacement, and concurrent `--only` jobs write their own."""
    folder = p.layout.trained_dir(cluster)
    return folder.parent / f".{folder.name}.fingerprint"


def train_all(p: Pipeline, jobs: dict[str, tuple], fingerprint: str, overwrite: bool, unstamped_current: bool) -> None:
    """Train `jobs` (cluster -> dataclasses): in this process one after another, or as processes of their own when
    the recipe trains several at a time or through accelerate. A sub-model finished with these settings is kept,
    one begun with them resumes, and one made with other settings (or any, with `overwrite`) is trained anew.
    `unstamped_current`: a folder without a stamp (made before stamps) counts as made with these settings."""
    todo = {}
    for cluster in jobs:
        stamped = _stamped(p, cluster)
        current = not overwrite and (stamped == fingerprint or (stamped is None and unstamped_current))
        if not (current and (p.layout.trained_dir(cluster) / MARKER).is_file()):
            todo[cluster] = current

    def begin(cluster: str) -> tuple:
        """Just before a job starts: a folder made with other settings goes, then the stamp names these."""
        folder = p.layout.trained_dir(cluster)
        if not todo[cluster] and folder.is_dir():  # (a file in the way is the training's to report)
            with output_lock(folder):
                shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_stamp(p, cluster), fingerprint + "\n")
        return jobs[cluster]

    if not todo:
        logger.info("[train] every sub-model is complete with these settings")
        return
    if p.recipe.parallel_submodels == 1 and not p.recipe.accelerate_config:
        for cluster in todo:
            train.main(*begin(cluster))
        return
    slots = make_slots(p.recipe.parallel_submodels, p.recipe.gpus_per_submodel, p.recipe.train[1].use_cpu)
    logger.info(f"[train] {len(todo)} sub-model(s), {len(slots)} at a time; logs in {p.layout.logs_dir}")
    failed = run_jobs(list(todo), slots, p.layout.logs_dir, lambda c, slot: train_command(p, c, begin(c), slot))
    if failed:
        logs = ", ".join(str(p.layout.logs_dir / f"train-{c}.log") for c in failed)
        raise DtmError(f"training failed for {', '.join(failed)} ({len(todo) - len(failed)} of {len(todo)} finished); "
                       f"see {logs}; rerun to train what is missing")


def stage_train(p: Pipeline) -> None:
    settings = train_settings(p)
    fingerprint = p.settings_record(settings)[1]
    recorded = p.state.get("train", {})
    unstamped_current = recorded.get("fingerprint") == fingerprint and recorded.get("finished", True)
    jobs = train_jobs(p)
    if p.only:  # one job of an array: the stage is recorded by a run of every sub-model, the job by its stamp
        if p.only not in jobs:
            raise DtmError(f"--only {p.only}: the recipe trains {', '.join(jobs)}")
        logger.info(f"[train] {p.only} only (--only)")
        train_all(p, {p.only: jobs[p.only]}, fingerprint, p.overwrite, unstamped_current)
        p.digests.save()
        return
    p.stage("train", settings, lambda: train_complete(p),
            lambda changed: train_all(p, jobs, fingerprint, p.overwrite, unstamped_current))


def trained_signatures(p: Pipeline) -> dict[str, str]:
    return {name: p.digests.signature(folder, skip=RECORDS) for name, folder in p.layout.trained_models().items()}


def merge_complete(p: Pipeline) -> bool:
    return all((p.layout.merged(name) / MERGE_MARKER).is_file() for name in p.recipe.merges)


def stage_merge(p: Pipeline) -> None:
    merges = p.recipe.merges
    subs = {name: sig for name, sig in trained_signatures(p).items() if name != BASELINE}
    settings = {"merge": p.recipe.sections.get("merge"), "inputs": subs}

    def work(changed):
        for args in merges.values():
            merge.main(args)

    p.stage("merge", settings, lambda: merge_complete(p), work)


def evaluated_models(p: Pipeline) -> dict[str, str]:
    models = {"base": p.recipe.train[2].model_name_or_path}
    models |= {name: str(path) for name, path in p.layout.trained_models().items()}
    models |= {f"merged_{name}": str(p.layout.merged(name)) for name in p.recipe.merges}
    return models


def stage_evaluate(p: Pipeline) -> None:
    models = evaluated_models(p)
    settings = {"evaluate": p.recipe.sections["evaluate"],
                "inputs": {"data": data_signature(p),
                           **{name: p.digests.signature(ref, skip=RECORDS) for name, ref in models.items()}}}

    def work(changed):
        evaluate.main(dataclasses.replace(p.recipe.evaluate, models=[f"{n}={ref}" for n, ref in models.items()]))

    p.stage("evaluate", settings, lambda: (p.layout.eval_dir / "results.json").is_file(), work)


def stage_push(p: Pipeline) -> None:
    settings = {"hub": p.recipe.sections["hub"],
                "inputs": {"data": data_signature(p), **trained_signatures(p),
                           **{f"merged_{n}": p.digests.signature(p.layout.merged(n)) for n in p.recipe.merges}}}
    p.stage("push", settings, lambda: p.layout.pushed_file.is_file(), lambda changed: push_run(p))


@dataclass(frozen=True)
class Stage:
    asked: Callable[[Recipe], bool]  # whether the recipe has this stage
    run: Callable[[Pipeline], None]
    complete: Callable[[Pipeline], bool]  # its outputs are all there (it may still be out of date)
    needs: tuple[str, ...] = ()  # the stages whose outputs it reads


STAGES = {
    "distribute": Stage(lambda r: r.distribute is not None, stage_distribute, data_complete),
    "train": Stage(lambda r: r.train is not None, stage_train, train_complete, ("distribute",)),
    "merge": Stage(lambda r: bool(r.merges), stage_merge, merge_complete, ("train",)),
    "evaluate": Stage(lambda r: r.evaluate is not None, stage_evaluate,
                      lambda p: (p.layout.eval_dir / "results.json").is_file(), ("distribute", "train", "merge")),
    "push": Stage(lambda r: r.hub.push, stage_push, lambda p: p.layout.pushed_file.is_file(),
                  ("distribute", "train", "merge")),
}


def missing_inputs(p: Pipeline, chosen: list[str]) -> str | None:
    """The first stage that would run without the outputs of a stage it needs; a message saying what to run."""
    for name in chosen:
        for need in STAGES[name].needs:
            if need in chosen or not STAGES[need].asked(p.recipe) or STAGES[need].complete(p):
                continue
            return (f"the {name} stage needs the {need} stage's outputs, made with the recipe as it is now, which "
                    f"{p.layout.run_dir} does not have yet; "
                    f"run the {need} stage first (e.g. --stages {need},{name}, or every stage)")
    return None


def summary(p: Pipeline, seconds: float) -> str:
    layout = p.layout
    lines = ["", f"Run folder: {layout.run_dir}", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {status} | {secs:.1f} |" for name, status, secs in p.summary]
    made = [("data", layout.data_dir), ("sub-models", layout.submodels_dir), ("baseline", layout.baseline_dir),
            ("merges", layout.merged_dir), ("evaluation", layout.eval_dir)]
    lines += ["", "Made:"] + [f"  {label:<11} {path}" for label, path in made if path.exists()]
    if (layout.eval_dir / "results.md").is_file():
        lines += ["", (layout.eval_dir / "results.md").read_text().strip()]
    if layout.pushed_file.is_file():
        lines += ["", "On the Hub:"] + [f"  {k:<11} {v}" for k, v in json.loads(layout.pushed_file.read_text()).items()]
    lines.append(f"\nTotal: {seconds:.0f} s")
    return "\n".join(lines)
