"""Writing files so that a crash, a kill -9 or an interrupt never leaves a half-written one to be read.

Every write goes to a temporary name beside its target (``.<name>.<host>-<pid>-<random>.tmp``),
is flushed to disk (fsync) and renamed into place; a temporary file whose process is
dead is removed by the next write in its folder. Files take the user's umask, as any
file they create would.

``MUBENCH_FAULT=[PATTERN:]POINT`` kills the process (SIGKILL) at a write point, for tests
that prove a crash there is harmless: ``written`` (the temporary copy is complete, not yet
synced), ``synced`` (synced, not yet renamed), ``displaced`` (a folder being replaced was
moved aside, the new one not yet in place), ``renamed`` (in place, the folder not yet
synced); ``PATTERN`` matches the target's file name (shell-style).
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import tempfile
from pathlib import Path

from mubench.errors import UserError, key_path

MAX_JSON_BYTES = 64 * 2**20  # a result or a sidecar is a few KB; anything this large is not one
MAX_JSON_DEPTH = 32


def mubench_home() -> Path:
    """``$MUBENCH_HOME``, by default ``~/.cache/mubench``: original models, preprocessed data, references."""
    return Path(os.environ.get("MUBENCH_HOME", Path.home() / ".cache" / "mubench")).expanduser()


def fault(point: str, target: Path) -> None:
    """Die here (SIGKILL) if ``MUBENCH_FAULT`` names this write point for ``target``: fault injection for tests."""
    wanted = os.environ.get("MUBENCH_FAULT")
    if not wanted:
        return
    pattern, _, name = wanted.rpartition(":")
    if name == point and fnmatch.fnmatch(target.name, pattern or "*"):
        os.kill(os.getpid(), signal.SIGKILL)


@functools.cache
def _owner() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_")


def temporary_name(target: Path) -> Path:
    """A fresh temporary path beside ``target`` that names this host and process."""
    return target.with_name(f".{target.name}.{_owner()}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove(path: Path) -> None:
    """Remove a file or a folder, whichever ``path`` is; nothing if it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(folder: Path, owned: str | None = None) -> None:
    """Remove temporary files in ``folder`` left by dead processes of this host.

    With ``owned`` (an entry name whose lock the caller holds) every temporary copy of
    that entry goes, whoever made it: only the lock holder writes one.
    """
    if not folder.is_dir():
        return
    for path in folder.glob(".*.tmp"):
        if owned is not None and path.name.startswith(f".{owned}."):
            remove(path)
            continue
        tag = path.name[:-len(".tmp")].rsplit(".", 1)[-1]
        host, _, rest = tag.partition("-")
        pid = rest.split("-")[0]
        if host == _owner() and pid.isdigit() and not _alive(int(pid)):
            remove(path)


@functools.cache
def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle(path: Path) -> None:
    """Give a file (or a folder and everything in it) the user's umask and fsync it, before it is renamed into place.

    Libraries that write files (safetensors, datasets) may create them 0600; what
    mubench keeps takes the mode any file the user creates would.
    """
    folders = [p for p in path.rglob("*") if p.is_dir()] + [path] if path.is_dir() else []
    for file in [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]:
        os.chmod(file, 0o666 & ~umask())
        _fsync(file)
    for folder in folders:
        os.chmod(folder, 0o777 & ~umask())
        _fsync(folder)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; if the block succeeds, sync it and rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    tmp = temporary_name(path)
    tmp.touch()
    try:
        yield tmp
        fault("written", path)
        settle(tmp)
        fault("synced", path)
        os.replace(tmp, path)
        fault("renamed", path)
        _fsync(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: Path):
    """Yield a fresh temporary folder beside ``path``; if the block succeeds, it replaces ``path`` as one unit.

    A folder already at ``path`` is moved aside first and removed after; a crash in
    between leaves ``path`` absent (never a mix of old and new files). Callers hold
    the entry's lock (:mod:`mubench.cache`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.mkdir()
    old = None
    try:
        yield tmp
        fault("written", path)
        settle(tmp)
        fault("synced", path)
        if path.exists():
            old = temporary_name(path)
            os.replace(path, old)
            fault("displaced", path)
        os.replace(tmp, path)
        fault("renamed", path)
        _fsync(path.parent)
    finally:
        remove(tmp)
        if old is not None:
            remove(old)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically; NaN and Infinity are refused."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def first_problem(data, depth: int = 0, path: tuple = ()) -> tuple[tuple, str] | None:
    """The key path and kind of the first non-finite number in ``data``, or of nesting deeper than the cap; None if neither."""
    if depth > MAX_JSON_DEPTH:
        return path, f"nested more than {MAX_JSON_DEPTH} levels deep"
    if isinstance(data, float) and not math.isfinite(data):
        return path, f"{data} is not a finite number"
    children = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in children:
        found = first_problem(value, depth + 1, path + (key,))
        if found:
            return found
    return None


def read_json(path: Path, what: str = "JSON file") -> dict:
    """A JSON object from ``path``, read defensively: size and nesting capped, UTF-8 only, every number finite.

    Every problem is a one-line :class:`UserError` that names the file (and the key).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise UserError(f"{path}: {size} bytes is too large for a {what} (at most {MAX_JSON_BYTES})")
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply for a {what} (at most {MAX_JSON_DEPTH} levels)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object for a {what}, got {type(data).__name__}")
    problem = first_problem(data)
    if problem:
        raise UserError(f"{path}: {key_path(problem[0])}: {problem[1]}")
    return data


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written there, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mubench-write-check"):
            pass
    except OSError as e:
        raise UserError(f"output folder {folder} is not writable: {e.strerror or e}") from None
