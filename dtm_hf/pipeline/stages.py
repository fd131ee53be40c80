"""The stages of `dtm-hf run`, in pipeline order: what each one runs, what it ran with (its recipe section and the
content of its inputs, earlier stages' outputs included), when its outputs are complete, and which stages' outputs
it needs. Adding a stage is adding a function here and its entry in STAGES."""

import copy
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .. import distribute, evaluate, merge, train
from ..errors import DtmError
from ..names import ALL, MARKER, MERGE_MARKER
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


def train_jobs(p: Pipeline) -> dict[str, tuple]:
    """One `dtm-hf train` per sub-model, cluster by cluster, then the all-data baseline: its three dataclasses."""
    dtm_args, training_args, model_args = p.recipe.train
    targets = p.layout.clusters() + ([ALL] if dtm_args.baseline else [])
    jobs = {}
    for cluster in targets:
        job_training = copy.deepcopy(training_args)
        job_training.output_dir = str(p.layout.trained_dir(cluster).parent)
        jobs[cluster] = (dataclasses.replace(dtm_args, cluster=cluster, baseline=False), job_training, model_args)
    return jobs


def train_complete(p: Pipeline) -> bool:
    return data_complete(p) and all((p.layout.trained_dir(c) / MARKER).is_file() for c in train_jobs(p))


def train_all(p: Pipeline, jobs: dict[str, tuple], changed: bool) -> None:
    """Train `jobs` (cluster -> dataclasses): in this process one after another, or as processes of their own when
    the recipe trains several at a time or through accelerate. A finished sub-model is skipped unless `changed`."""
    jobs = {c: (dataclasses.replace(d, overwrite=changed), t, m) for c, (d, t, m) in jobs.items()}
    if p.recipe.parallel_submodels == 1 and not p.recipe.accelerate_config:
        for job in jobs.values():
            train.main(*job)
        return
    todo = [c for c in jobs if changed or not (p.layout.trained_dir(c) / MARKER).is_file()]
    slots = make_slots(p.recipe.parallel_submodels, p.recipe.gpus_per_submodel, jobs[next(iter(jobs))][1].use_cpu)
    logger.info(f"[train] {len(todo)} sub-model(s), {len(slots)} at a time; logs in {p.layout.logs_dir}")
    failed = run_jobs(todo, slots, p.layout.logs_dir, lambda c, slot, _: train_command(p, c, jobs[c], slot))
    if failed:
        logs = ", ".join(str(p.layout.logs_dir / f"train-{c}.log") for c in failed)
        raise DtmError(f"training failed for {', '.join(failed)} ({len(todo) - len(failed)} of {len(todo)} finished); "
                       f"see {logs}; rerun to train what is missing")


def stage_train(p: Pipeline) -> None:
    dtm_args, _, model_args = p.recipe.train
    jobs = train_jobs(p)
    if p.only:
        if p.only not in jobs:
            raise DtmError(f"--only {p.only}: the recipe trains {', '.join(jobs)}")
        logger.info(f"[train] {p.only} only (--only); the stage is recorded by a run of every sub-model")
        train_all(p, {p.only: jobs[p.only]}, changed=False)
        return
    settings = {"train": p.recipe.sections["train"], "accelerate_config": p.recipe.accelerate_config,
                "held_out": dtm_args.held_out,
                "inputs": {"base_model": p.digests.signature(model_args.model_name_or_path), "data": data_signature(p),
                           "accelerate_config": p.digests.signature(p.recipe.accelerate_config)}}
    p.stage("train", settings, lambda: train_complete(p), lambda changed: train_all(p, jobs, changed))


def trained_signatures(p: Pipeline) -> dict[str, str]:
    return {name: p.digests.signature(folder, skip=RECORDS) for name, folder in p.layout.trained_models().items()}


def merge_complete(p: Pipeline) -> bool:
    return all((p.layout.merged(name) / MERGE_MARKER).is_file() for name in p.recipe.merges)


def stage_merge(p: Pipeline) -> None:
    merges = p.recipe.merges
    subs = {name: sig for name, sig in trained_signatures(p).items() if name != "baseline"}
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
            return (f"the {name} stage needs the {need} stage's outputs, which {p.layout.run_dir} does not have yet; "
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
