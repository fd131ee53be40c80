"""The push stage of `dtm-hf run`: the dataset, every sub-model, the baseline and every merge, with cards
that link each other (the merge lists its sub-models and their dataset configs; the dataset lists its models)."""

import json
from pathlib import Path

from ..hub import push_folder
from ..names import ALL

HUB_URL = "https://huggingface.co"


def _model_card(folder: Path, *, datasets: list[str], base_model=None, links: str) -> str:
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md") if (folder / "README.md").is_file() else ModelCard("---\n---\n")
    card.data.datasets = datasets
    if base_model is not None:
        card.data.base_model = base_model
    card.text = card.text.rstrip() + "\n\n" + links
    return str(card)


def push_run(p) -> dict:
    from huggingface_hub import DatasetCard

    from ..merging.submodels import expand

    hub, layout = p.recipe.hub, p.layout
    namespace, prefix = hub.namespace, hub.prefix or layout.run_dir.name
    dataset_id = f"{namespace}/{prefix}-data"
    trained = layout.trained_models()
    model_ids = {name: f"{namespace}/{prefix}-{name}" for name in trained}
    merge_ids = {name: f"{namespace}/{prefix}-merged-{name}" for name in p.recipe.merges}

    def dataset_link(config: str) -> str:
        return f"config `{config}` of [{dataset_id}]({HUB_URL}/datasets/{dataset_id})"

    card = DatasetCard.load(layout.data_dir / "README.md")
    # The card's usage snippet loads the local folder it was written to; on the Hub, it loads the repo.
    card.text = card.text.replace(f'load_dataset("{layout.data_dir.expanduser().absolute()}"',
                                  f'load_dataset("{dataset_id}"')
    listed = [f"- [{i}]({HUB_URL}/{i}): trained on `{ALL if n == 'baseline' else n}`" for n, i in model_ids.items()]
    listed += [f"- [{i}]({HUB_URL}/{i}): merge ({n}) of the cluster sub-models" for n, i in merge_ids.items()]
    card.text = card.text.rstrip() + "\n\n## Models trained on this data\n\n" + "\n".join(listed) + "\n"
    push_folder(layout.data_dir, dataset_id, "dataset", hub.private, "dtm-hf run: dataset", card=str(card))

    for name, folder in trained.items():
        config = ALL if name == "baseline" else name
        links = f"## Disperse-Then-Merge run\n\nTrained on {dataset_link(config)}.\n"
        text = _model_card(folder, datasets=[dataset_id], links=links)
        push_folder(folder, model_ids[name], "model", hub.private, f"dtm-hf run: {name}", card=text)

    for name, args in p.recipe.merges.items():
        subs = [Path(ref).name for ref, _ in expand(args.submodels)]
        rows = "\n".join(f"- [{model_ids[c]}]({HUB_URL}/{model_ids[c]}), trained on {dataset_link(c)}" for c in subs)
        links = f"## Sub-models\n\n{rows}\n"
        text = _model_card(layout.merged(name), datasets=[dataset_id], base_model=[model_ids[c] for c in subs],
                           links=links)
        push_folder(layout.merged(name), merge_ids[name], "model", hub.private, f"dtm-hf run: merge {name}", card=text)

    pushed = {"dataset": dataset_id, **model_ids, **{f"merged_{n}": i for n, i in merge_ids.items()}}
    layout.pushed_file.write_text(json.dumps(pushed, indent=2) + "\n")
    return pushed
