"""The merge step's inputs: LoRA sub-models written by `dtm-hf train` (or Hub repos of them) and their base.

A sub-model is a folder with a PEFT LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`), the
tokenizer and, when `dtm-hf train` wrote it, the marker `dtm_train.json` (cluster, dataset, config, base, ...).
A training output root stands for all its clusters, `cluster_0` ... in order; its baseline `all` is left out.
Everything here runs before any merge work: JSON files and safetensors headers, and the adapters' tensors (small)
to check that they are finite.
"""

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DtmError, first_line
from ..hub import download, hub_id_problem
from ..names import ALL as BASELINE  # the training root's sub-model trained on every row: a baseline, never merged
from ..names import MARKER as TRAIN_MARKER

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
logger = logging.getLogger(__name__)
PEFT_PREFIX = "base_model.model."
BASE_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


@dataclass
class SubModel:
    ref: str  # what the merge YAML names: an absolute folder or a Hub repo id
    path: Path  # the local folder (a Hub repo's snapshot)
    adapter_config: dict
    marker: dict | None
    card_datasets: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return (self.marker or {}).get("cluster") or Path(self.ref).name

    @property
    def recorded_base(self) -> str:
        return self.adapter_config.get("base_model_name_or_path") or ""

    @property
    def rank(self) -> int:
        return int(self.adapter_config["r"])

    @property
    def alpha(self) -> float:
        return float(self.adapter_config.get("lora_alpha", self.rank))

    @property
    def scale(self) -> float:
        """PEFT's scaling of B @ A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (self.rank**0.5 if self.adapter_config.get("use_rslora") else self.rank)

    @property
    def target_modules(self) -> list[str]:
        targets = self.adapter_config.get("target_modules") or []
        return sorted([targets] if isinstance(targets, str) else targets)

    @property
    def modules_to_save(self) -> list[str]:
        return sorted(self.adapter_config.get("modules_to_save") or [])

    @property
    def datasets(self) -> list[tuple[str, str | None]]:
        """(dataset, config) pairs it was trained on, from the marker, else from the adapter's card."""
        if self.marker and self.marker.get("dataset"):
            return [(self.marker["dataset"], self.marker.get("dataset_config"))]
        return [(name, None) for name in self.card_datasets]

    def lora_modules(self) -> dict[str, tuple[str, str]]:
        """Base weight name -> (lora_A key, lora_B key) in the adapter's safetensors file."""
        keys = safetensors_shapes(self.path / ADAPTER_WEIGHTS)
        modules = {}
        for key in keys:
            if key.endswith(".lora_A.weight"):
                stem = key[: -len(".lora_A.weight")]
                weight = stem.removeprefix(PEFT_PREFIX) + ".weight"
                modules[weight] = (key, stem + ".lora_B.weight")
        return modules


    def load_tensors(self) -> tuple[dict, dict]:
        """The adapter's weights as ({base weight: (A, B)}, {base weight: saved module weight}), as stored."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(self.path / ADAPTER_WEIGHTS)
        except SafetensorError as err:
            raise _unreadable(self.path / ADAPTER_WEIGHTS, err) from err
        modules = self.lora_modules()
        lora_keys = {key for pair in modules.values() for key in pair}
        loras = {weight: (tensors[a], tensors[b]) for weight, (a, b) in modules.items()}
        return loras, {key.removeprefix(PEFT_PREFIX): t for key, t in tensors.items() if key not in lora_keys}


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`; a broken one is one line naming the file and where it breaks."""
    try:
        value = json.loads(path.read_text())
    except ValueError as err:
        where = f" at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise DtmError(f"{path} ({what}) is not valid JSON{where}: {getattr(err, 'msg', err)}; restore or re-save "
                       "it") from err
    if not isinstance(value, dict):
        raise DtmError(f"{path} ({what}) must be a JSON object, not a {type(value).__name__}")
    return value


def _unreadable(path: Path, err: Exception) -> DtmError:
    return DtmError(f"{path} is not a readable safetensors file ({first_line(err)}); it is truncated or corrupted: "
                    "restore, re-save or retrain it")


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the file's header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {name: f.get_slice(name).get_shape() for name in f.keys()}
    except SafetensorError as err:
        raise _unreadable(path, err) from err


def check_finite(sub: "SubModel") -> None:
    """Every tensor of the adapter holds finite numbers: a NaN or inf (a diverged training) would spread to every
    merged weight it touches."""
    import torch
    from safetensors import SafetensorError, safe_open

    path = sub.path / ADAPTER_WEIGHTS
    try:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise DtmError(f"sub-model {sub.ref}: tensor {name} has {bad} non-finite value(s) (NaN or inf), "
                                   "as after a diverged training; retrain it or leave it out")
    except SafetensorError as err:
        raise _unreadable(path, err) from err


def model_shapes(folder: Path) -> dict[str, list[int]]:
    """Weight name -> shape of a safetensors model folder, sharded or not."""
    index = folder / "model.safetensors.index.json"
    weight_map = read_json(index, "the base model's shard index").get("weight_map") if index.is_file() else None
    if index.is_file() and not isinstance(weight_map, dict):
        raise DtmError(f"{index} has no weight_map; restore or re-save the base model")
    files = sorted(set(weight_map.values())) if weight_map else (
        ["model.safetensors"] if (folder / "model.safetensors").is_file() else [])
    if not files:
        raise DtmError(f"the base model {folder} has no model.safetensors (or index); safetensors weights only")
    if (folder / "config.json").is_file():
        read_json(folder / "config.json", "the base model's config")
    shapes = {}
    for name in files:
        shapes.update(safetensors_shapes(folder / name))
    return shapes


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def expand(refs: list[str]) -> list[tuple[str, Path]]:
    """(ref, local folder) per sub-model: folders as given, a training root as its clusters, Hub ids fetched."""
    found = []
    for ref in refs:
        path = Path(ref).expanduser()
        if path.is_dir():
            path = path.absolute()
            if (path / ADAPTER_CONFIG).is_file() or (path / TRAIN_MARKER).is_file():
                found.append((str(path), path))
                continue
            found += [(str(p), p) for p in _root_clusters(path)]
        elif path.exists():
            raise DtmError(f"sub-model {ref} is a file; pass a sub-model folder, a training output root or a Hub id")
        elif hub_id_problem(ref) is None:
            found.append((ref, download(ref, "sub-model")))
        else:
            raise DtmError(f"sub-model {ref} does not exist; pass a sub-model folder, a training output root or a "
                           "Hub repo id")
    return found


def _root_clusters(root: Path) -> list[Path]:
    """A training output root's sub-models: the folders `dtm-hf train` completed for single clusters, in order. The
    all-data baseline is left out; so are unions (mergekit reads `+` as model+adapter) and unfinished or foreign
    folders, each with a note."""
    clusters = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key):
        if folder.name == BASELINE:
            continue
        if not (folder / TRAIN_MARKER).is_file():
            if (folder / ADAPTER_CONFIG).is_file():
                logger.info(f"Skipping {folder.name} in {root}: no {TRAIN_MARKER}, so `dtm-hf train` did not complete "
                            "it; pass it on its own to merge it anyway")
            continue
        if "+" in folder.name:
            logger.info(f"Skipping {folder.name} in {root}: a union of clusters, which mergekit cannot name "
                        "(it reads '+' as model+adapter); rename it and pass it on its own to merge it")
            continue
        clusters.append(folder)
    if not clusters:
        raise DtmError(f"{root} is neither a sub-model folder (no {ADAPTER_CONFIG}) nor a training output root (no "
                       f"folder with {TRAIN_MARKER} in it); pass folders written by `dtm-hf train`")
    return clusters


def read(ref: str, path: Path) -> SubModel:
    """Load a sub-model's metadata, checking that it is a usable LoRA adapter."""
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise DtmError(f"sub-model {ref} has no {ADAPTER_CONFIG}; is its training finished?")
    if not (path / ADAPTER_WEIGHTS).is_file():
        other = " (only adapter_model.bin: safetensors only, re-save it)" if (path / "adapter_model.bin").exists() else ""
        raise DtmError(f"sub-model {ref} has no {ADAPTER_WEIGHTS}{other}; is its training finished?")
    config = read_json(config_file, f"the adapter config of sub-model {ref}")
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
        raise DtmError(f"sub-model {ref} is a {kind} adapter; dtm-hf merge takes plain LoRA adapters")
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not (isinstance(rank, int) and rank >= 1 and isinstance(alpha, int | float) and not isinstance(alpha, bool)):
        raise DtmError(f"{config_file} needs a positive integer `r` and a number `lora_alpha` (got r={rank!r}, "
                       f"lora_alpha={alpha!r}); restore it or retrain the sub-model")
    marker_file = path / TRAIN_MARKER
    marker = read_json(marker_file, f"the training record of sub-model {ref}") if marker_file.is_file() else None
    card_datasets = []
    if marker is None and (path / "README.md").is_file():
        import yaml
        from huggingface_hub import ModelCard

        try:
            datasets = ModelCard.load(path / "README.md").data.to_dict().get("datasets") or []
        except (ValueError, yaml.YAMLError) as err:
            logger.warning(f"{path / 'README.md'}: unreadable card metadata ({first_line(err)}); no datasets taken")
            datasets = []
        card_datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    return SubModel(ref=ref, path=path, adapter_config=config, marker=marker, card_datasets=card_datasets)


def resolve_base(base_model: str | None, submodels: list[SubModel]) -> tuple[str, Path]:
    """(ref for the YAML, local folder) of the base: --base_model, else the one recorded in the adapters."""
    recorded = sorted({s.recorded_base for s in submodels})
    if base_model is None:
        if len(recorded) != 1 or not recorded[0]:
            listing = "; ".join(f"{s.ref}: {s.recorded_base or 'none'}" for s in submodels)
            raise DtmError(f"the sub-models record different bases ({listing}); merge sub-models of one base, or "
                           "pass --base_model if they are copies of the same model")
        base_model = recorded[0]
    path = Path(base_model).expanduser()
    if path.is_dir():
        return str(path.absolute()), path.absolute()
    if hub_id_problem(base_model) is not None:
        raise DtmError(f"the base model {base_model} does not exist; pass --base_model PATH_OR_HUB_ID")
    return base_model, download(base_model, "base model", BASE_PATTERNS)


def check_against_base(submodels: list[SubModel], base_shapes: dict[str, list[int]]) -> None:
    """Every LoRA module must sit on a base weight of matching shape (catches adapters of another base)."""
    for sub in submodels:
        shapes = safetensors_shapes(sub.path / ADAPTER_WEIGHTS)
        for weight, (key_a, key_b) in sub.lora_modules().items():
            expected = base_shapes.get(weight)
            got = [shapes[key_b][0], shapes[key_a][1]]
            if expected is None or list(expected) != got:
                raise DtmError(f"sub-model {sub.ref} does not fit the base model: {weight} is "
                               f"{expected or 'missing'} in the base but {got} in the adapter; the sub-models must be "
                               "trained on --base_model")


def check_same_adapters(submodels: list[SubModel], what: str) -> None:
    """Methods that combine A and B matrices themselves need equal ranks, scales and target modules."""
    for attr in ("rank", "alpha", "scale", "target_modules", "modules_to_save"):
        values = {s.ref: getattr(s, attr) for s in submodels}
        if len({json.dumps(v) for v in values.values()}) > 1:
            listing = "; ".join(f"{ref}: {v}" for ref, v in values.items())
            raise DtmError(f"{what} needs sub-models with the same {attr.replace('_', ' ')}, got {listing}")
