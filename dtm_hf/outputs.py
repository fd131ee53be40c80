"""Output folders that appear whole or not at all, and are never overwritten unless asked."""

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DtmError


def check_output_dir(output_dir: str | Path, overwrite: bool) -> Path:
    """Fail early, before any work, when `output_dir` holds something and `overwrite` is off."""
    path = Path(output_dir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise DtmError(f"output path {path} exists and is a file; choose another --output_dir")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DtmError(f"output folder {path} is not empty; pass --overwrite to replace it or choose another")
    return path


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `output_dir` and move it into place only when the block succeeds."""
    final = check_output_dir(output_dir, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            final.rename(old / final.name)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
