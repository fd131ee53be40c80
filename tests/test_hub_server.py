"""The real Hugging Face clients against the local Hub server (tests/hub_server.py, started in conftest.py)."""

import itertools
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

_names = itertools.count()


def new_repo_id(stem: str) -> str:
    """A repo name no other test uses: the server lives for the whole session."""
    return f"tester/{stem}-{next(_names)}"


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def assert_same_tensors(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_upload_folder_round_trip(hub_server, tmp_path):
    files = {"README.md": b"---\nlicense: mit\n---\n# Card\n", "config.json": b'{"a": 1}\n',
             "weights/part.bin": bytes(range(256)) * 40, "nested/deeper/notes.txt": b"hello\n"}
    for path, content in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)
    api = HfApi()
    repo_id = new_repo_id("folder")
    url = api.create_repo(repo_id, private=True)
    assert url.repo_id == repo_id
    api.create_repo(repo_id, exist_ok=True)  # a 409 the client swallows

    commit = api.upload_folder(folder_path=tmp_path, repo_id=repo_id, commit_message="add files")
    api.upload_file(path_or_fileobj=b"extra", path_in_repo="extra.txt", repo_id=repo_id)

    expected = {**files, "extra.txt": b"extra"}
    stored = hub_server.repo_files(repo_id)
    assert {path: stored[path] for path in expected} == expected
    assert set(api.list_repo_files(repo_id)) == set(stored) == {*expected, ".gitattributes"}

    info = api.model_info(repo_id)
    assert info.private and info.card_data["license"] == "mit"
    assert info.sha != commit.oid  # upload_file committed after upload_folder
    assert {s.rfilename for s in info.siblings} == set(stored)
    assert [f.path for f in api.list_repo_tree(repo_id, path_in_repo="nested/deeper")] == ["nested/deeper/notes.txt"]
    lfs_entry = next(iter(api.get_paths_info(repo_id, ["weights/part.bin"])))
    assert lfs_entry.lfs is not None and lfs_entry.lfs.size == len(files["weights/part.bin"])

    with open(hf_hub_download(repo_id, "weights/part.bin"), "rb") as f:
        assert f.read() == files["weights/part.bin"]
    snapshot = snapshot_download(repo_id, revision=commit.oid)  # a past commit: no extra.txt yet
    assert (Path(snapshot) / "nested/deeper/notes.txt").read_bytes() == b"hello\n"
    assert not (Path(snapshot) / "extra.txt").exists()
    assert ModelCard.load(repo_id).data.license == "mit"


def test_dataset_configs_push_and_load(hub_server):
    from datasets import Dataset, DatasetDict, load_dataset

    repo_id = new_repo_id("dataset")
    rows_a = {"text": ["alpha", "beta", "gamma"], "label": [0, 1, 0]}
    rows_b = {"messages": [[{"role": "user", "content": "hi"}]], "source": ["b"]}
    DatasetDict({"train": Dataset.from_dict(rows_a), "test": Dataset.from_dict(rows_a)}).push_to_hub(
        repo_id, config_name="cfg_a", private=True)
    DatasetDict({"train": Dataset.from_dict(rows_b)}).push_to_hub(repo_id, config_name="cfg_b")

    assert hub_server.repo_exists(repo_id, "dataset") and not hub_server.repo_exists(repo_id, "model")
    card = hub_server.repo_files(repo_id, "dataset")["README.md"].decode()
    assert "config_name: cfg_a" in card and "config_name: cfg_b" in card
    assert HfApi().dataset_info(repo_id).card_data["configs"][0]["config_name"] == "cfg_a"

    assert load_dataset(repo_id, "cfg_a")["train"].to_dict() == rows_a
    loaded_b = load_dataset(repo_id, "cfg_b")
    assert list(loaded_b) == ["train"] and loaded_b["train"].to_dict() == rows_b


def test_model_and_lora_adapter_round_trip(hub_server, tiny_llama):
    from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dtm_hf.demo.tiny_model import build_tokenizer

    repo_id = new_repo_id("llama")
    tiny_llama.push_to_hub(repo_id)
    tokenizer = build_tokenizer(["hello world", "a tiny tokenizer for the hub test"], vocab_size=300)
    tokenizer.push_to_hub(repo_id)
    assert "model.safetensors" in hub_server.repo_files(repo_id)

    loaded = AutoModelForCausalLM.from_pretrained(repo_id)
    assert_same_tensors(loaded.state_dict(), tiny_llama.state_dict())
    assert AutoTokenizer.from_pretrained(repo_id)("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]

    lora = get_peft_model(loaded, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B starts at zero: make the adapter non-trivial so a bad load cannot pass
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_()
    adapter_id = new_repo_id("lora")
    lora.push_to_hub(adapter_id)

    base = AutoModelForCausalLM.from_pretrained(repo_id)
    reloaded = PeftModel.from_pretrained(base, adapter_id)
    assert_same_tensors(get_peft_model_state_dict(reloaded), get_peft_model_state_dict(lora))


def test_missing_file_and_repo_raise_the_clients_errors(hub_server):
    repo_id = new_repo_id("errors")
    HfApi().create_repo(repo_id)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "no-such-file.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/no-such-repo", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info(repo_id)  # it is a model repo


def test_range_reads_deletions_and_stale_parent_commit(hub_server):
    api = HfApi()
    repo_id = new_repo_id("edits")
    api.create_repo(repo_id, repo_type="dataset")
    blob = os.urandom(50_000)
    first = api.upload_file(path_or_fileobj=blob, path_in_repo="d/blob.bin", repo_id=repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="d/sub/x.txt", repo_id=repo_id, repo_type="dataset")

    with HfFileSystem().open(f"datasets/{repo_id}/d/blob.bin", "rb", block_size=1024) as f:  # Range requests
        f.seek(20_000)
        assert f.read(100) == blob[20_000:20_100]

    with pytest.raises(HfHubHTTPError) as err:  # main moved on since `first`
        api.create_commit(repo_id, [CommitOperationAdd("late.txt", b"late")], commit_message="late",
                          repo_type="dataset", parent_commit=first.oid)
    assert err.value.response.status_code == 412

    api.delete_folder("d/sub", repo_id=repo_id, repo_type="dataset")
    api.delete_file("d/blob.bin", repo_id=repo_id, repo_type="dataset")
    assert list(hub_server.repo_files(repo_id, "dataset")) == [".gitattributes"]
