"""What a stage ran with, by content: local inputs are identified by a digest of their bytes, so a touched or
copied identical file re-runs nothing, and a re-run says what changed.

Digests are cached by path, size and modification time in the run folder (`.digests.json`): a 50 GB dataset is
read once, and again only after its size or time changes; a stage's outputs are identified the same way, so a
stage that reproduces identical outputs stops the cascade.
"""

import hashlib
import json
from pathlib import Path

from ..data.repo import sha256_file
from ..outputs import write_atomic


class Digests:
    """sha256 of files, cached by (size, mtime) in `cache_file`."""

    def __init__(self, cache_file: Path):
        self.cache_file = cache_file
        try:
            self.cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            self.cache = {}

    def file(self, path: Path) -> str:
        stat = path.stat()
        key = str(path.resolve())
        cached = self.cache.get(key)
        if cached and cached[:2] == [stat.st_size, stat.st_mtime_ns]:
            return cached[2]
        digest = sha256_file(path)
        self.cache[key] = [stat.st_size, stat.st_mtime_ns, digest]
        return digest

    def signature(self, ref: str | Path | None, skip: tuple[str, ...] = ()) -> str | None:
        """A local file's or folder's content digest (folder files named in `skip`, and hidden ones, left out);
        anything else (a Hub id) stands for itself."""
        if ref is None:
            return None
        path = Path(ref).expanduser()
        if not path.exists():
            return str(ref)
        if path.is_file():
            return self.file(path)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name not in skip
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        listing = [(p.relative_to(path).as_posix(), self.file(p)) for p in files]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()

    def save(self) -> None:
        if self.cache_file.parent.is_dir():
            write_atomic(self.cache_file, json.dumps(self.cache))


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two stages' settings, one `key: old -> new` each (`content changed` for inputs)."""
    before, after = _flatten(old), _flatten(new)

    def show(values, key):
        return json.dumps(values[key], default=str) if key in values else "(unset)"

    found = []
    for key in sorted(set(before) | set(after)):
        if show(before, key) == show(after, key):
            continue
        if key.startswith("inputs."):
            what = "added" if key not in before else "removed" if key not in after else "content changed"
            found.append(f"{key.removeprefix('inputs.')}: {what}")
        else:
            found.append(f"{key}: {show(before, key)} -> {show(after, key)}")
    return found
