"""Hugging Face Hub helpers shared by the steps: repo ids, token checks, downloads and folder uploads."""

from pathlib import Path

from .errors import DtmError, first_line


def hub_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` is not a valid Hub repo id (huggingface_hub's own rule), or None when it is one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return first_line(err)
    return None


def is_hub_id(ref: str) -> bool:
    """A reference that names a Hub repo rather than a local path: no such local path, and a valid repo id."""
    return not Path(ref).expanduser().exists() and hub_id_problem(ref) is None


def display_ref(ref: str) -> str:
    """How a card names an input: a Hub id as it is, a local path by its folder or file name (a card travels to
    the Hub, where the paths of the machine that wrote it mean nothing)."""
    path = Path(ref).expanduser()
    if path.exists():
        return path.resolve().name
    return ref if hub_id_problem(ref) is None else path.name


def local_or_hub(ref: str, what: str, flag: str) -> tuple[str, bool]:
    """(absolute folder, True) for a local folder, (repo id, False) for a Hub id; anything else is one error line
    naming `what` and `flag`."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path.absolute()), True
    if path.exists():
        raise DtmError(f"{what} {ref} is a file; pass a folder or a Hub repo id with {flag}")
    if hub_id_problem(ref) is not None:
        raise DtmError(f"{what} {ref} does not exist: it is neither a local folder nor a Hub repo id; check {flag}")
    return ref, False


def require_push_target(push_to_hub: bool, repo_id: str | None, flag: str, placeholder: str | None = None,
                        token: str | None = None) -> None:
    """Fail before any work when a push is asked for without a valid repo id or without a token (`token`, else the
    environment's or the login's). `placeholder` (such as `{cluster}`) may appear in the id; it is checked with a
    sample value in its place."""
    if not push_to_hub:
        return
    if not repo_id:
        raise DtmError(f"--push_to_hub needs {flag} (for example {flag} my-org/my-repo)")
    problem = hub_id_problem(repo_id.replace(placeholder, "x") if placeholder else repo_id)
    if problem:
        raise DtmError(f"{flag} {repo_id!r} is not a valid Hub repo id: {problem}")
    from huggingface_hub import get_token

    if not (token or get_token()):
        raise DtmError("--push_to_hub needs a Hub token: run `hf auth login` or set HF_TOKEN")


# Keys whose values are secrets (TRL's `hub_token`, and the names other tools use for the same).
SECRET_KEYS = {"hub_token", "token", "hf_token", "use_auth_token", "api_key"}


def redact(values):
    """`values` (a recipe, a section) with every secret's value replaced: never on disk."""
    if isinstance(values, dict):
        return {k: "<redacted>" if str(k).lower() in SECRET_KEYS and v else redact(v) for k, v in values.items()}
    if isinstance(values, list):
        return [redact(v) for v in values]
    return values


def download(repo_id: str, what: str, allow_patterns: list[str] | None = None, repo_type: str | None = None) -> Path:
    """A Hub repo's snapshot; a failure says which input could not be fetched."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, repo_type=repo_type))
    except Exception as err:  # noqa: BLE001 - any Hub failure means this input is unusable; say which and why
        raise DtmError(f"cannot fetch the {what} {repo_id!r} from the Hub ({first_line(err)}); check the id, the "
                       "network and HF_TOKEN, or pass a local folder") from err


def push_folder(folder: str | Path, repo_id: str, repo_type: str, private: bool, message: str,
                card: str | None = None, token: str | None = None, retry: str | None = None) -> str:
    """Create the repo if needed and upload the folder in one commit, with `card` as its README.md when given
    (the local folder is left untouched); returns the repo URL. A failure is one line: what failed, that the local
    output is complete, and how to retry the upload alone (`retry`, else `hf upload`)."""
    try:
        return _push(Path(folder), repo_id, repo_type, private, message, card, token)
    except (OSError, ValueError, RuntimeError, *_transport_errors()) as err:
        # HTTP errors (HfHubHTTPError is an OSError), refused ids, failed LFS uploads (a RuntimeError), no connection
        retry = retry or (f"`hf upload {repo_id} {folder} .{' --repo-type dataset' if repo_type == 'dataset' else ''}"
                          f"{' --private' if private else ''}`")
        reason = first_line(err)
        cause = first_line(err.__cause__) if err.__cause__ is not None else reason
        if cause not in reason:  # "Error while uploading 'x' to the Hub." says what; its cause says why
            reason = f"{reason.rstrip('.')}: {cause}"
        raise DtmError(f"the upload of {folder} to the Hub repo {repo_id} failed ({reason}); the local output is "
                       f"complete; retry the upload alone with {retry}") from err


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's errors for a Hub that cannot be reached (huggingface_hub's client raises them as they are)."""
    try:
        import httpx2
    except ImportError:
        return ()
    return (httpx2.HTTPError,)


def _push(folder: Path, repo_id: str, repo_type: str, private: bool, message: str, card: str | None,
          token: str | None) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    # Hidden files (locks, half-written temporaries) stay local.
    files = [p for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                  for p in files if card is None or p.relative_to(folder).as_posix() != "README.md"]
    if card is not None:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type)
    return str(url)


PAPER = "[Disperse-Then-Merge](https://aclanthology.org/2024.findings-acl.175/) (Fu et al., Findings of ACL 2024)"


def card_text(data, body: str) -> str:
    """A card's text: `data` (ModelCardData or DatasetCardData) as its YAML front matter, then `body`.
    Not `from_template`: a body may hold a chat template, whose braces Jinja would expand."""
    return f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"
