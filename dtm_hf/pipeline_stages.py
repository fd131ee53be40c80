"""The stages of `dtm-hf run`: what each one runs, what it depends on, and when its outputs are complete."""

import json
from pathlib import Path

import yaml

from .errors import DtmError
from .run import HUB_KEYS, Pipeline, accelerate_launch, step_args
from .submodel_card import MARKER


def input_signature(path_or_id: str | None) -> list | str | None:
    """What identifies an input's content cheaply: each local file's size and modification time (a Hub id
    stands for itself), so that an edited dataset file or a replaced base model re-runs the stages using it."""
    path = Path(path_or_id or "")
    if not path_or_id or not path.exists():
        return path_or_id
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(f.relative_to(path).as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def merges_of(recipe: dict) -> list[dict]:
    merges = recipe.get("merge") or []
    if not isinstance(merges, list) or not all(isinstance(m, dict) for m in merges):
        raise DtmError("recipe section 'merge' must be a list of merge settings (one mapping per merge)")
    return merges


def merge_name(section: dict) -> str:
    return Path(section.get("output_dir") or section.get("method", "linear")).name


def submodel_names(section: dict, clusters: list[str]) -> list[str]:
    return [Path(s).name for s in section.get("submodels") or clusters]


def validate(p: Pipeline, stages: list[str]) -> dict:
    """Parse every section with its step's parser and check cross-references before anything runs."""
    r = p.recipe
    for name in ("distribute", "train"):
        if name in stages and not isinstance(r.get(name), dict):
            raise DtmError(f"the recipe has no {name!r} section, which the {name} stage needs")
    if "distribute" in r:
        step_args("distribute", r["distribute"], {"output_dir": str(p.data_dir), "overwrite": True}, "distribute")
    if "train" in r:
        step_args("train", r["train"], _train_overrides(p, "cluster_0"), "train")
    k = (r.get("distribute") or {}).get("n_clusters")
    names = {merge_name(m) for m in merges_of(r)}
    if len(names) < len(merges_of(r)):
        raise DtmError("two merges in the recipe write to the same merged/<name>; give each its own output_dir")
    for section in merges_of(r):
        label = f"merge {merge_name(section)!r}"
        if k is not None:
            trained = [f"cluster_{i}" for i in range(k)]
            missing = [s for s in submodel_names(section, trained) if s not in trained]
            if missing:
                raise DtmError(f"{label} names sub-model(s) {missing} that the recipe does not train "
                               f"(it trains {', '.join(trained)})")
        step_args("merge", section, {"submodels": ["x"], "output_dir": str(p.merged_dir / "x"), "overwrite": True,
                                     "base_model": "x"}, label)
    if "evaluate" in r:
        step_args("evaluate", r["evaluate"], {"models": ["x=x"], "dataset": "x", "output_dir": "x"}, "evaluate")
    hub = r.get("hub") or {}
    unknown = sorted(set(hub) - HUB_KEYS)
    if unknown:
        raise DtmError(f"unknown key(s) {unknown} in recipe section 'hub'; its keys are {', '.join(sorted(HUB_KEYS))}")
    if hub.get("push") and not hub.get("namespace"):
        raise DtmError("recipe section 'hub' has push: true but no namespace (a user or organisation name)")
    if hub.get("push") and "push" in stages:
        from .hub import require_push_target

        require_push_target(True, hub["namespace"], "hub.namespace")  # the token, before hours of training
    work = {
        "distribute": lambda: stage_distribute(p),
        "train": lambda: stage_train(p),
        "merge": lambda: stage_merge(p) if merges_of(r) else None,
        "evaluate": lambda: stage_evaluate(p) if "evaluate" in r else None,
        "push": lambda: stage_push(p) if hub.get("push") else None,
    }
    return {name: work[name] for name in stages}


def stage_distribute(p: Pipeline) -> None:
    from .distribute import main

    section = p.recipe["distribute"]

    def work(changed):
        main(*step_args("distribute", section, {"output_dir": str(p.data_dir), "overwrite": True,
                                                "push_to_hub": False}, "distribute"))

    settings = {"distribute": section, "input": input_signature(section.get("dataset")),
                "embedding_model": input_signature(section.get("embedding_model"))}
    p.stage("distribute", settings, lambda: (p.data_dir / "stats.json").is_file(), work)


def _train_overrides(p: Pipeline, cluster: str, overwrite: bool = False) -> dict:
    evaluate = p.recipe.get("evaluate") or {}
    overrides = {"dataset": str(p.data_dir), "cluster": cluster, "overwrite": overwrite, "push_to_hub": False,
                 "output_dir": str(trained_dir(p, cluster).parent)}
    if "held_out" in evaluate:
        overrides["held_out"] = evaluate["held_out"]
    return overrides


def trained_dir(p: Pipeline, cluster: str) -> Path:
    """`dtm-hf train` writes OUTPUT_DIR/<cluster>/: sub-models under submodels/, the baseline at baseline/all/."""
    return (p.baseline_dir if cluster == "all" else p.submodels_dir) / cluster


def trained_models(p: Pipeline) -> dict[str, Path]:
    """The trained models by name: the baseline (when the recipe trained one) and every cluster's sub-model."""
    baseline = {"baseline": trained_dir(p, "all")} if (trained_dir(p, "all") / MARKER).is_file() else {}
    return {**baseline, **{c: trained_dir(p, c) for c in p.clusters()}}


def stage_train(p: Pipeline) -> None:
    from .train import main

    section = dict(p.recipe["train"])
    baseline = section.get("baseline", False)
    accelerate_config = p.recipe.get("accelerate_config")
    settings = {"train": section, "accelerate_config": accelerate_config,
                "held_out": (p.recipe.get("evaluate") or {}).get("held_out"),
                "base_model": input_signature(section.get("model_name_or_path"))}

    def targets():
        return p.clusters() + (["all"] if baseline else [])

    def complete():
        return all((trained_dir(p, c) / MARKER).is_file() for c in targets())

    def work(changed):
        for cluster in targets():
            overrides = {**_train_overrides(p, cluster, overwrite=changed), "baseline": False}
            if accelerate_config:
                recipe_file = p.run_dir / f"train_{cluster}.yaml"
                recipe_file.write_text(yaml.safe_dump({**section, **overrides}))
                accelerate_launch(accelerate_config, recipe_file, cluster)
            else:
                main(*step_args("train", section, overrides, "train"))

    p.stage("train", settings, complete, work)


def stage_merge(p: Pipeline) -> None:
    from .merge import main

    merges = merges_of(p.recipe)

    def out(section):
        return p.merged_dir / merge_name(section)

    def work(changed):
        for section in merges:
            subs = [str(trained_dir(p, s)) for s in submodel_names(section, p.clusters())]
            main(*step_args("merge", section, {"submodels": subs, "output_dir": str(out(section)), "overwrite": True,
                                               "push_to_hub": False}, f"merge {merge_name(section)!r}"))

    p.stage("merge", merges, lambda: all((out(s) / "mergekit_config.yml").is_file() for s in merges), work)


def evaluated_models(p: Pipeline) -> list[str]:
    models = [f"base={p.recipe['train']['model_name_or_path']}"]
    models += [f"{name}={path}" for name, path in trained_models(p).items()]
    models += [f"merged_{merge_name(m)}={p.merged_dir / merge_name(m)}" for m in merges_of(p.recipe)]
    return models


def stage_evaluate(p: Pipeline) -> None:
    from .evaluate import main

    section = p.recipe["evaluate"]
    seed = p.recipe["train"].get("seed", 42)

    def work(changed):
        main(*step_args("evaluate", section, {"models": evaluated_models(p), "dataset": str(p.data_dir),
                                              "output_dir": str(p.eval_dir), "overwrite": True, "seed": seed},
                        "evaluate"))

    p.stage("evaluate", section, lambda: (p.eval_dir / "results.json").is_file(), work)


def stage_push(p: Pipeline) -> None:
    from .pipeline_push import push_run

    hub = p.recipe["hub"]
    p.stage("push", hub, lambda: (p.run_dir / "pushed.json").is_file(), lambda changed: push_run(p, hub))


def summary(p: Pipeline, seconds: float) -> str:
    lines = ["", f"Run folder: {p.run_dir}", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {status} | {secs:.1f} |" for name, status, secs in p.summary]
    made = [("data", p.data_dir), ("sub-models", p.submodels_dir), ("baseline", p.baseline_dir),
            ("merges", p.merged_dir), ("evaluation", p.eval_dir)]
    lines += ["", "Made:"] + [f"  {label:<11} {path}" for label, path in made if path.exists()]
    if (p.eval_dir / "results.md").is_file():
        lines += ["", (p.eval_dir / "results.md").read_text().strip()]
    pushed = p.run_dir / "pushed.json"
    if pushed.is_file():
        lines += ["", "On the Hub:"] + [f"  {k:<11} {v}" for k, v in json.loads(pushed.read_text()).items()]
    lines.append(f"\nTotal: {seconds:.0f} s")
    return "\n".join(lines)
