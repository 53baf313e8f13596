"""Writing files so that a crash or an interrupt never leaves a half-written one."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from mubench.errors import UserError


def mubench_home() -> Path:
    """``$MUBENCH_HOME``, by default ``~/.cache/mubench``: original models and preprocessed data."""
    return Path(os.environ.get("MUBENCH_HOME", Path.home() / ".cache" / "mubench")).expanduser()


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written there, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mubench-write-check"):
            pass
    except OSError as e:
        raise UserError(f"output folder {folder} is not writable: {e.strerror or e}") from None
