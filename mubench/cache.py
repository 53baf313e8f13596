"""Cached artefacts under ``$MUBENCH_HOME`` that verify themselves: original models, preprocessed data, references.

An entry is a folder of files and a manifest (a JSON sidecar) that records the
SHA-256 of each file, the identity the entry was made for, and its own SHA-256
(so that an edit anywhere in it shows). The folder is built
under a temporary name and renamed into place, manifest included, so an entry is
either whole or absent; a file lock beside it lets one process build it while the
others wait, then read it. Reading checks the manifest, the identity and every
file's hash; any mismatch is a :class:`CacheError` that says what is wrong and how
to fix it, never a silently used artefact.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from mubench.errors import UserError
from mubench.files import atomic_folder, clean_stale, read_json, sha256_file, write_json

log = logging.getLogger("mubench")

FORMAT = "mubench-cache/1"


def canonical_sha256(manifest: dict) -> str:
    """The SHA-256 of a manifest's canonical JSON, leaving out the key that records it."""
    rest = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


class CacheError(UserError):
    """A cached entry that fails verification: unreadable, made for something else, or edited."""


class CacheEntry:
    """One cached artefact: ``folder`` holding files and the ``manifest`` that commits and describes them.

    ``identity`` is everything the artefact depends on; ``what`` names it in messages
    and ``fix`` says how a user rebuilds it.
    """

    def __init__(self, folder: Path, identity: dict, what: str, fix: str, manifest: str = "manifest.json"):
        self.folder, self.what, self.fix, self.manifest = Path(folder), what, fix, manifest
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))  # as its manifest will read back

    @classmethod
    def under(cls, parent: Path, identity: dict, what: str, fix: str, manifest: str = "manifest.json", prefix: str = "") -> CacheEntry:
        """The entry for ``identity`` in ``parent``, its folder named ``<prefix><16 hex digits of the identity's hash>``."""
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cls(Path(parent) / f"{prefix}{key}", identity, what, fix, manifest)

    @contextlib.contextmanager
    def locked(self):
        """Hold the entry's lock: the one process that builds it; the others wait, then read what it made."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.folder.with_name(f".{self.folder.name}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("%s: another process is building it; waiting", self.what)
            lock.acquire()
        try:
            clean_stale(self.folder.parent, owned=self.folder.name)
            yield self
        finally:
            lock.release()

    def _error(self, problem: str) -> CacheError:
        return CacheError(f"{self.what} at {self.folder}: {problem}; {self.fix}")

    def read(self) -> dict | None:
        """The verified manifest, or None when no entry was committed. Call with the lock held."""
        manifest_path = self.folder / self.manifest
        if not manifest_path.exists():
            return None
        try:
            manifest = read_json(manifest_path, "cache manifest")
        except UserError as e:
            raise self._error(f"its manifest is unreadable ({str(e).removeprefix(f'{manifest_path}: ')})") from None
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise self._error(f"{self.manifest} is not a {FORMAT} manifest")
        if manifest.get("identity") != self.identity:
            theirs = manifest.get("identity") if isinstance(manifest.get("identity"), dict) else {}
            differ = sorted(k for k in set(self.identity) | set(theirs) if self.identity.get(k) != theirs.get(k))
            raise self._error(f"its manifest was made for another {', '.join(differ) or 'identity'}")
        if manifest.get("manifest_sha256") != canonical_sha256(manifest):
            raise self._error(f"{self.manifest} was edited (it no longer matches its own manifest_sha256)")
        for name, digest in manifest["files"].items():
            path = self.folder / str(name)
            if not path.is_file() or not path.resolve().is_relative_to(self.folder.resolve()):
                raise self._error(f"{name} is missing")
            if sha256_file(path) != digest:
                raise self._error(f"{name} does not match the SHA-256 in its manifest (edited or corrupted)")
        return manifest

    def read_or_discard(self) -> dict | None:
        """:meth:`read`, but an entry that fails verification is reported in one warning line and treated as absent.

        For artefacts that are safe to rebuild (preprocessed data, cached evaluations).
        """
        try:
            return self.read()
        except CacheError as e:
            log.warning("%s; rebuilding it", str(e).rsplit(";", 1)[0])
            return None

    def commit(self, build: Callable[[Path], dict]) -> dict:
        """Build the entry with ``build(folder)`` (it writes the files, returns extra manifest fields) and commit it.

        Replaces a committed entry as one unit. Call with the lock held.
        """
        with atomic_folder(self.folder) as tmp:
            extra = build(tmp)
            files = {path.name: sha256_file(path) for path in sorted(tmp.iterdir()) if path.is_file()}
            manifest = {**extra, "format": FORMAT, "identity": self.identity, "files": files}
            manifest["manifest_sha256"] = canonical_sha256(manifest)
            write_json(tmp / self.manifest, manifest)
        return manifest
