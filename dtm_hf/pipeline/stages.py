"""The stages of `dtm-hf run`, in pipeline order: what each one runs, what its fingerprint records, and when its
outputs are complete. Adding a stage is adding a function here and its entry in STAGES."""

import copy
import dataclasses
import json
from pathlib import Path

from .. import distribute, evaluate, merge, train
from ..names import ALL, MARKER
from .engine import Pipeline
from .launch import accelerate_launch


def input_signature(path_or_id: str | None) -> list | str | None:
    """What identifies an input's content cheaply: each local file's size and modification time (a Hub id
    stands for itself), so that an edited dataset file or a replaced base model re-runs the stages using it."""
    path = Path(path_or_id or "")
    if not path_or_id or not path.exists():
        return path_or_id
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(f.relative_to(path).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def stage_distribute(p: Pipeline) -> None:
    args = p.recipe.distribute
    settings = {"distribute": p.recipe.sections["distribute"], "input": input_signature(args.dataset),
                "embedding_model": input_signature(args.embedding_model)}
    p.stage("distribute", settings, lambda: (p.layout.data_dir / "stats.json").is_file(),
            lambda changed: distribute.main(args))


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


def stage_train(p: Pipeline) -> None:
    dtm_args, _, model_args = p.recipe.train
    settings = {"train": p.recipe.sections["train"], "accelerate_config": p.recipe.accelerate_config,
                "held_out": dtm_args.held_out, "base_model": input_signature(model_args.model_name_or_path)}

    def complete():
        return all((p.layout.trained_dir(c) / MARKER).is_file() for c in train_jobs(p))

    def work(changed):
        for cluster, (job_dtm, job_training, job_model) in train_jobs(p).items():
            job_dtm = dataclasses.replace(job_dtm, overwrite=changed)
            if p.recipe.accelerate_config:
                accelerate_launch(p, cluster, (job_dtm, job_training, job_model))
            else:
                train.main(job_dtm, job_training, job_model)

    p.stage("train", settings, complete, work)


def stage_merge(p: Pipeline) -> None:
    merges = p.recipe.merges

    def work(changed):
        for args in merges.values():
            merge.main(args)

    p.stage("merge", p.recipe.sections.get("merge"),
            lambda: all((p.layout.merged(name) / "mergekit_config.yml").is_file() for name in merges), work)


def evaluated_models(p: Pipeline) -> list[str]:
    models = [f"base={p.recipe.train[2].model_name_or_path}"]
    models += [f"{name}={path}" for name, path in p.layout.trained_models().items()]
    models += [f"merged_{name}={p.layout.merged(name)}" for name in p.recipe.merges]
    return models


def stage_evaluate(p: Pipeline) -> None:
    def work(changed):
        evaluate.main(dataclasses.replace(p.recipe.evaluate, models=evaluated_models(p)))

    p.stage("evaluate", p.recipe.sections["evaluate"], lambda: (p.layout.eval_dir / "results.json").is_file(), work)


def stage_push(p: Pipeline) -> None:
    from .push import push_run

    p.stage("push", p.recipe.sections["hub"], lambda: p.layout.pushed_file.is_file(), lambda changed: push_run(p))


# Stage -> (whether the recipe asks for it, what runs it), in pipeline order.
STAGES = {
    "distribute": (lambda r: r.distribute is not None, stage_distribute),
    "train": (lambda r: r.train is not None, stage_train),
    "merge": (lambda r: bool(r.merges), stage_merge),
    "evaluate": (lambda r: r.evaluate is not None, stage_evaluate),
    "push": (lambda r: r.hub.push, stage_push),
}


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
