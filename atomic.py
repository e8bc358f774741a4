"""Write a directory completely or not at all.

Output is built in a hidden temporary sibling and renamed into place only on
success, so an interrupted or failed run never leaves a partial OUT behind.
SIGTERM is turned into an exception so the temporary directory is removed too;
a SIGKILL can leave only the hidden ``.OUT.partial-PID-*`` sibling, which the next
run into the same OUT removes once process PID is gone (a live writer's is kept,
so two runs into one OUT never delete each other's work; the last to finish wins).
The output gets the permissions the umask allows, like any directory the user makes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator

from planforge.errors import OutputExistsError, OutputWriteError

PARTIAL_MARK = ".partial-"


class Terminated(BaseException):
    """Raised in place of SIGTERM while an atomic write is in progress."""


# What a failed write means to the user, and what to do about it.
_WRITE_ERRNOS = {
    errno.ENOSPC: "free space on that disk, or choose another -o.",
    errno.EDQUOT: "free space within your quota, or choose another -o.",
    errno.EACCES: "choose an -o you may write to.",
    errno.EPERM: "choose an -o you may write to.",
    errno.EROFS: "that file system is read-only; choose another -o.",
}


def _raise_terminated(signum, frame):
    raise Terminated(f"terminated by signal {signum}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_stale_partials(out: Path) -> None:
    """Removes the temporary siblings of writers that died; a live writer's stay."""
    for stale in out.parent.glob(f".{out.name}{PARTIAL_MARK}*"):
        owner = stale.name[len(f".{out.name}{PARTIAL_MARK}"):].split("-", 1)[0]
        if not owner.isdigit() or not _alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _move_into_place(tmp: Path, out: Path) -> None:
    """tmp becomes out; an existing out goes aside first. Retries when another writer finishes meanwhile."""
    for _ in range(3):
        old = out.with_name(f".{out.name}{PARTIAL_MARK}{os.getpid()}-old")
        try:
            if out.exists():
                out.rename(old)
            tmp.rename(out)
        except OSError:
            continue  # another run put its out in place between our two renames: set it aside and retry
        finally:
            if old.exists():
                shutil.rmtree(old, ignore_errors=True)
        return
    raise OutputExistsError(f"{out} kept being replaced by another planforge run writing to it; run one at a time.")


MANIFEST_FILE = "planforge.json"  # the mark of a planforge output directory (constants.MANIFEST_FILE)


def refuse_existing(out: Path, force: bool) -> None:
    """Fails at once when ``out`` exists and may not be replaced, before a command does any work.

    ``--force`` replaces only what planforge wrote: a directory holding a planforge.json, or an empty
    one; never a file, never the working directory or a directory above it.
    """
    out = Path(out).absolute()
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise OutputExistsError(f"{out} already exists. Choose another -o, or pass --force to replace it.")
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise OutputExistsError(f"-o {out} is the working directory or one above it; --force would delete it. "
                                "Choose a new directory for the output.")
    if not out.is_dir() or out.is_symlink():
        raise OutputExistsError(f"{out} exists and is not a directory; --force replaces only planforge outputs. "
                                "Choose another -o.")
    if not (out / MANIFEST_FILE).is_file() and any(out.iterdir()):
        raise OutputExistsError(f"{out} is not a planforge output (no {MANIFEST_FILE}); --force replaces only "
                                "planforge outputs. Choose another -o, or empty it yourself.")


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yields an empty temporary directory that becomes ``out`` when the block succeeds."""
    out = Path(out).absolute()
    refuse_existing(out, force)
    tmp = None
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if _in_main_thread() else None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_MARK}{os.getpid()}-", dir=out.parent))
        tmp.chmod(_umask_mode())  # mkdtemp makes it 0700
        yield tmp
        _move_into_place(tmp, out)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise OutputWriteError(f"cannot write {out}: {os.strerror(exc.errno)}. Nothing was written; "
                               f"{_WRITE_ERRNOS[exc.errno]}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
