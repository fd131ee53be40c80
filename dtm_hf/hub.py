"""Hugging Face Hub helpers shared by the steps: token checks and folder uploads."""

from pathlib import Path

from .errors import DtmError


def require_push_target(push_to_hub: bool, repo_id: str | None, flag: str) -> None:
    """Fail before any work when a push is asked for without a repo id or without a token."""
    if not push_to_hub:
        return
    if not repo_id:
        raise DtmError(f"--push_to_hub needs {flag} (for example {flag} my-org/my-repo)")
    from huggingface_hub import get_token

    if not get_token():
        raise DtmError("--push_to_hub needs a Hub token: run `hf auth login` or set HF_TOKEN")


def push_folder(folder: str | Path, repo_id: str, repo_type: str, private: bool, message: str) -> str:
    """Create the repo if needed and upload the folder in one commit; returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, commit_message=message)
    return str(url)


def push_folder_with_card(folder: str | Path, repo_id: str, repo_type: str, private: bool, card: str,
                          message: str) -> str:
    """Upload a folder in one commit with `card` as its README.md, leaving the local folder untouched."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    folder = Path(folder)
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                  for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != "README.md"]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type)
    return str(url)
