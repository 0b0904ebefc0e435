"""Where the benchmark datasets live and how to fetch them: the data directory, the accepted
layouts inside it, and checksum-verified downloads.

Data directory: :func:`resolve_data_dir` (argument, else ``$GLOCALK_DATA``, else the user
cache ``$XDG_CACHE_HOME/glocalk`` or ``~/.cache/glocalk``). Downloads are verified with sha256
before they are kept (written to a unique ``.part`` file and renamed into place), and from zips
only the needed files are extracted, never by the member's own path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from glocalk.data.matrix import RatingMatrix
from glocalk.errors import DataError
from glocalk.store import write_atomic

__all__ = ["ENV_DATA", "ENV_DOWNLOAD_BASE", "DatasetInfo", "download", "find_dir", "resolve_data_dir", "sha256_file"]

log = logging.getLogger(__name__)

ENV_DATA = "GLOCALK_DATA"
ENV_DOWNLOAD_BASE = "GLOCALK_DOWNLOAD_BASE"


@dataclass(frozen=True)
class DatasetInfo:
    """Where a benchmark dataset lives and how to get it.

    Attributes:
        name: the dataset's name (``load_dataset`` / ``--dataset``).
        folder: its folder inside the data directory (the layout of the project's shared data).
        files: the files the loader needs, all in one folder.
        url: the canonical download (a zip, or the file itself).
        sha256: sha256 of the download.
        md5: the md5 the publisher lists for the download, for reference (not used: sha256 is).
        archive_dir: the folder inside the zip holding ``files`` (also accepted as a layout
            in the data directory, as extracting the zip there produces it); None for a plain file.
        file_sha256: sha256 of individual files where known; extracted files are checked against it.
        alt_dirs: further folder names accepted inside the data directory.
        loader: reads the folder holding ``files`` into a RatingMatrix.
    """

    name: str
    folder: str
    files: tuple[str, ...]
    url: str
    sha256: str
    loader: Callable[[Path], RatingMatrix]
    md5: str | None = None
    archive_dir: str | None = None
    file_sha256: Mapping[str, str] = field(default_factory=dict)
    alt_dirs: tuple[str, ...] = ()

    def candidate_dirs(self, data_dir: Path) -> list[Path]:
        """The folders searched for ``files``, in order (duplicates removed)."""
        subs = [self.folder]
        if self.archive_dir:
            subs += [f"{self.folder}/{self.archive_dir}", self.archive_dir]
        subs += list(self.alt_dirs) + ["."]
        out: list[Path] = []
        for s in subs:
            p = data_dir if s == "." else data_dir / s
            if p not in out:
                out.append(p)
        return out


def _default_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "glocalk"


def _resolve(data_dir: str | Path | None) -> tuple[Path, str]:
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "the data_dir argument (--data-dir)"
    env = os.environ.get(ENV_DATA, "")
    if env:
        return Path(env).expanduser(), f"${ENV_DATA}"
    return _default_cache(), "the default cache (neither --data-dir nor $GLOCALK_DATA was given)"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$GLOCALK_DATA``, else the user cache.

    The cache is ``$XDG_CACHE_HOME/glocalk`` when that variable is set (and absolute), else
    ``~/.cache/glocalk``. The folder need not exist.
    """
    return _resolve(data_dir)[0]


def find_dir(info: DatasetInfo, data_dir: str | Path | None = None) -> Path:
    """The folder inside the data directory that holds all of ``info``'s files.

    Raises DataError naming every folder searched, the files expected there and how to fix it.
    """
    root, source = _resolve(data_dir)
    dirs = info.candidate_dirs(root)
    for d in dirs:
        if all((d / f).is_file() for f in info.files):
            return d
    raise DataError(_missing_message(info, root, source, dirs))


def _missing_message(info: DatasetInfo, root: Path, source: str, dirs: list[Path]) -> str:
    lines = [f"dataset {info.name!r} not found: expected {', '.join(info.files)} in one of these folders:"]
    for d in dirs:
        partial = [f for f in info.files if (d / f).is_file()]
        note = f"  (has {', '.join(partial)} but not the rest)" if partial else ""
        lines.append(f"  {d}{note}")
    lines.append(f"The data directory {root} comes from {source}.")
    lines.append(
        "To fix: pass --data-dir DIR (Python: data_dir=DIR) or set GLOCALK_DATA=DIR to a folder holding "
        f"{info.folder}/{' and '.join(info.files)}; or add --download (Python: download=True) to fetch "
        f"{info.url} (sha256-checked) into {root / info.folder}."
    )
    return "\n".join(lines)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _mirror_url(url: str, base_url: str | None) -> str:
    """Replace the scheme and host of ``url`` by ``base_url`` (which may carry a path prefix)."""
    if not base_url:
        return url
    path = urllib.parse.urlsplit(url).path
    return base_url.rstrip("/") + path


def _write_verified(dest: Path, chunks, expected: str | None, what: str) -> None:
    """Stream ``chunks`` into a temporary sibling of ``dest``; rename it onto ``dest`` only if the sha256 matches.

    store.write_atomic's unique temporary name keeps concurrent downloads from clobbering each
    other, and its rename is atomic, so ``dest`` is either absent or complete and verified.
    """
    def fill(tmp: Path) -> None:
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for block in chunks:
                out.write(block)
                h.update(block)
        actual = h.hexdigest()
        if expected is not None and actual != expected:
            raise DataError(f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}; "
                            "the file was discarded (a changed or truncated download?)")

    write_atomic(dest, fill)


def _fetch(url: str, dest: Path, expected: str) -> None:
    def chunks():
        req = urllib.request.Request(url, headers={"User-Agent": "glocalk"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            while block := resp.read(1 << 20):
                yield block

    log.info("downloading %s -> %s", url, dest)
    try:
        _write_verified(dest, chunks(), expected, url)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"download of {url} failed: {reason}. Download it by hand and place it in "
                        f"{dest.parent} (or pass --data-dir to a folder that has it).") from None


def _extract(info: DatasetInfo, archive: Path, target: Path) -> None:
    """Extract only ``info.files`` from the zip into ``target``, checking known member sha256s."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            for fname in info.files:
                wanted = f"{info.archive_dir}/{fname}" if info.archive_dir else fname
                # By basename when the expected path is absent (a repacked zip); the member's own
                # path is never used for writing, so a hostile name cannot escape ``target``.
                member = wanted if wanted in names else next(
                    (n for n in names if n.rsplit("/", 1)[-1] == fname), None)
                if member is None:
                    raise DataError(f"{archive}: the archive has no {wanted} "
                                    f"(members: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''})")

                def chunks(member: str = member):
                    with zf.open(member) as src:
                        while block := src.read(1 << 20):
                            yield block

                _write_verified(target / fname, chunks(), info.file_sha256.get(fname), f"{archive}:{member}")
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a valid zip archive: {e}") from None


def download(info: DatasetInfo, data_dir: str | Path | None = None, base_url: str | None = None) -> Path:
    """Download (if needed) ``info``'s canonical file into ``<data_dir>/<folder>/``; return that folder.

    Verified by sha256 before it is kept; from zips only the needed files are extracted (and
    checked where their sha256 is known) and the zip is then removed. ``base_url`` (else
    ``$GLOCALK_DOWNLOAD_BASE``) replaces the ``scheme://host`` of the canonical URL, keeping its
    path, e.g. for a mirror or a local test server.
    """
    root = resolve_data_dir(data_dir)
    target = root / info.folder
    if all((target / f).is_file() for f in info.files):
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {target} for the download: {e}; pass a writable --data-dir") from None
    url = _mirror_url(info.url, base_url or os.environ.get(ENV_DOWNLOAD_BASE))
    fname = url.rsplit("/", 1)[-1]
    if fname.endswith(".zip"):
        archive = target / fname
        # A verified zip left by an interrupted extraction is reused instead of downloaded again.
        if not (archive.is_file() and sha256_file(archive) == info.sha256):
            _fetch(url, archive, info.sha256)
        _extract(info, archive, target)
        archive.unlink(missing_ok=True)
    else:
        _fetch(url, target / info.files[0], info.sha256)
    return target
