"""The push stage of `dtm-hf run`: the dataset, every sub-model, the baseline and every merge, with cards
that link each other (the merge lists its sub-models and their dataset configs; the dataset lists its models)."""

import json
from pathlib import Path

from ..hub import push_folder
from ..names import ALL, BASELINE, MARKER, cluster_name
from ..outputs import write_atomic
from ..training.card import card as submodel_card

HUB_URL = "https://huggingface.co"


def _merged_card(folder: Path, *, datasets: list[str], submodels: list[str], links: str) -> str:
    """The merge's card, its metadata pointing at the pushed sub-models and data."""
    from huggingface_hub import ModelCard

    merged = ModelCard.load(folder / "README.md")
    merged.data.datasets, merged.data.base_model, merged.data.base_model_relation = datasets, submodels, "merge"
    merged.text = merged.text.rstrip() + "\n\n" + links
    return str(merged)


def repo_ids(recipe, run_dir: Path, trained: list[str]) -> tuple[str, dict[str, str], dict[str, str]]:
    """The Hub repos of a run: its dataset's, each trained model's and each merge's."""
    namespace, prefix = recipe.hub.namespace, recipe.hub.prefix or run_dir.name
    return (f"{namespace}/{prefix}-data", {name: f"{namespace}/{prefix}-{name}" for name in trained},
            {name: f"{namespace}/{prefix}-merged-{name}" for name in recipe.merges})


def check_repo_ids(recipe, run_dir: Path) -> None:
    """Every repo the push stage will make must be a valid Hub id, known before any stage runs."""
    from ..errors import DtmError
    from ..hub import hub_id_problem, require_push_target

    require_push_target(True, recipe.hub.namespace, "hub.namespace")  # and the token, before hours of training
    k = recipe.distribute.n_clusters if recipe.distribute and recipe.distribute.n_clusters else 1
    dataset_id, model_ids, merge_ids = repo_ids(recipe, run_dir, [BASELINE, cluster_name(k - 1)])
    for repo in [dataset_id, *model_ids.values(), *merge_ids.values()]:
        if problem := hub_id_problem(repo):
            raise DtmError(f"the push stage would create the Hub repo {repo!r}, which is not a valid repo id "
                           f"({problem}); set hub.prefix (default: the run folder's name) or hub.namespace")


def push_run(p) -> dict:
    from huggingface_hub import DatasetCard

    from ..merging.submodels import expand

    hub, layout = p.recipe.hub, p.layout
    trained = layout.trained_models()
    dataset_id, model_ids, merge_ids = repo_ids(p.recipe, layout.run_dir, list(trained))

    def dataset_link(config: str) -> str:
        return f"config `{config}` of [{dataset_id}]({HUB_URL}/datasets/{dataset_id})"

    card = DatasetCard.load(layout.data_dir / "README.md")
    # The card's usage snippet loads the local folder it was written to; on the Hub, it loads the repo.
    card.text = card.text.replace(f'load_dataset("{layout.data_dir.expanduser().absolute()}"',
                                  f'load_dataset("{dataset_id}"')
    listed = [f"- [{i}]({HUB_URL}/{i}): trained on `{ALL if n == 'baseline' else n}`" for n, i in model_ids.items()]
    listed += [f"- [{i}]({HUB_URL}/{i}): merge ({n}) of the cluster sub-models" for n, i in merge_ids.items()]
    card.text = card.text.rstrip() + "\n\n## Models trained on this data\n\n" + "\n".join(listed) + "\n"
    retry = "the same dtm-hf run command with --stages push"
    push_folder(layout.data_dir, dataset_id, "dataset", hub.private, "dtm-hf run: dataset", card=str(card),
                retry=retry)

    for name, folder in trained.items():
        config = ALL if name == BASELINE else name
        marker = {**json.loads((folder / MARKER).read_text()), "hub_model_id": model_ids[name]}
        text = submodel_card(folder, marker, dataset_id=dataset_id).rstrip()
        text += f"\n\n## Disperse-Then-Merge run\n\nTrained on {dataset_link(config)}.\n"
        push_folder(folder, model_ids[name], "model", hub.private, f"dtm-hf run: {name}", card=text, retry=retry)

    for name, args in p.recipe.merges.items():
        subs = [Path(ref).name for ref, _ in expand(args.submodels)]
        rows = "\n".join(f"- [{model_ids[c]}]({HUB_URL}/{model_ids[c]}), trained on {dataset_link(c)}" for c in subs)
        links = f"## Sub-models\n\n{rows}\n"
        text = _merged_card(layout.merged(name), datasets=[dataset_id], submodels=[model_ids[c] for c in subs],
                            links=links)
        push_folder(layout.merged(name), merge_ids[name], "model", hub.private, f"dtm-hf run: merge {name}",
                    card=text, retry=retry)

    pushed = {"dataset": dataset_id, **model_ids, **{f"merged_{n}": i for n, i in merge_ids.items()}}
    write_atomic(layout.pushed_file, json.dumps(pushed, indent=2) + "\n")
    return pushed
