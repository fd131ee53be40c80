"""Output folders that appear whole or not at all, are never overwritten unless asked, and have one writer.

A step holds `output_lock(OUT)` (a lock file beside OUT) for as long as it works on OUT: a second writer gets one
line naming the holder. The output is built in a temporary folder beside it and renamed into place when complete;
temporary folders left by a killed run of the same output are removed by the next one.
"""

import contextlib
import errno
import os
import re
import shutil
import socket
import sys
import tempfile
import time
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


def check_apart(output: str | Path, inputs, may_hold: bool = False) -> None:
    """The output must not be an input, sit inside one, or (unless `may_hold`) hold one: --overwrite would replace
    it, or a later run would read the output as input. `inputs` holds (what the input is, its path) pairs, or maps
    one to the other; Hub ids and missing paths are skipped."""
    out = Path(output).expanduser().resolve()
    for what, ref in inputs.items() if isinstance(inputs, dict) else inputs:
        path = Path(ref).expanduser() if ref else None
        if path is None or not path.exists():  # unset (its own check says so), a Hub id, or not made yet
            continue
        other = path.resolve()
        relation = ("is" if out == other else "is inside" if out.is_relative_to(other) else
                    "holds" if other.is_relative_to(out) and not may_hold else None)
        if relation:
            raise DtmError(f"--output_dir {output} {relation} {what} {ref}; choose another --output_dir (an output never "
                           "replaces or mixes with its inputs)")


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock of the output `path` (a file or folder, existing or not) for the block: a lock file beside it,
    which names its holder and is removed on release."""
    import fcntl

    path = Path(path).expanduser().absolute()
    made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]  # removed again if left empty
    lock_path = path.parent / f".{path.name}.lock"
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed meanwhile by a writer of a sibling that gave up
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1024).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DtmError(f"{path} is being written by {holder}; wait for it to finish or choose another "
                           "output") from None
        try:  # the file locked must still be the one at lock_path: a holder removes it on release
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]])
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} ({command}), since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield
    except Exception as err:
        if (code := _full_disk(err, path)) is None:
            raise
        # However a library reports it, a full disk is an OSError that names the output being written
        raise OSError(code, os.strerror(code), str(path)) from err
    finally:
        lock_path.unlink(missing_ok=True)  # before the lock goes: a waiter then sees a new file and locks that
        os.close(fd)
        for folder in made:  # the parent folders made for an output that was never written
            with contextlib.suppress(OSError):
                folder.rmdir()


# How libraries that write with their own code report a full disk: safetensors' Rust ("os error 28"), torch's
# zip writer ("PytorchStreamWriter failed writing file", or an "unexpected pos" after a short write).
_WRITE_FAILURES = re.compile(r"os error (28|122)\b|No space left on device|Disk quota exceeded|PytorchStreamWriter "
                             r"failed writing|inline_container\.cc")


def _full_disk(err: Exception, path: Path) -> int | None:
    """ENOSPC or EDQUOT when `err`, raised while writing `path`, means that its disk is full; else None."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return err.errno
    if isinstance(err, OSError) or not _WRITE_FAILURES.search(str(err)):
        return None
    if "122" in str(err) or "quota" in str(err):
        return errno.EDQUOT
    if "28" in str(err) or "No space" in str(err):
        return errno.ENOSPC
    try:  # torch's writer does not say why: the disk is full if (almost) nothing is left on it
        return errno.ENOSPC if shutil.disk_usage(path.parent).free < 16 * 2**20 else None
    except OSError:
        return None


def write_atomic(path: Path, text: str) -> None:
    """Write a small file (a record, a state) whole or not at all: a temporary file beside it, renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale(final: Path) -> None:
    """The temporary folders (and the merge caches inside them) that a killed run of `final` left beside it; call
    with its lock held."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `output_dir` and move it into place only when the block succeeds. The
    caller holds `output_lock(output_dir)`."""
    final = check_output_dir(output_dir, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # a folder like any other the user makes, not mkdtemp's private 0700
    try:
        yield tmp
        check_output_dir(final, overwrite)  # again: it may have been filled while we worked
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-old-", dir=final.parent))
            final.rename(old / final.name)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
