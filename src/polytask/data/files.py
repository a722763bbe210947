"""Where the real data files live, and proof that they are the files we think they are.

Every benchmark number this library reports is only comparable if it was computed on the same
bytes. So each known file is pinned by its SHA-256 and by the public URL it was published at, and
:func:`resolve` refuses a file whose digest differs rather than silently training on something else.

Lookup order for a file ``name`` (e.g. ``"moleculenet/tox21.csv"``), the first rule that applies
decides the location; nothing else is searched behind the user's back:

1. an explicit ``path``: the file itself, or a directory holding ``<dir>/<name>`` (or
   ``<dir>/<basename>``);
2. ``$POLYTASK_DATA/<name>``;
3. the download cache ``$POLYTASK_CACHE/<name>`` (default ``~/.cache/polytask/<name>``).

A file missing at that location is downloaded from its URL when the machine is online (set
``POLYTASK_OFFLINE=1`` to forbid any network access); otherwise a :class:`DataError` names the file,
the place looked at and how to point ``POLYTASK_DATA`` at a copy.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from polytask.data.base import DataError

__all__ = [
    "KNOWN_FILES",
    "KnownFile",
    "cache_dir",
    "clear_hash_cache",
    "resolve",
    "sha256_file",
]

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0

_CHEMPROP = "https://raw.githubusercontent.com/chemprop/chemprop/b83635bcddaddcdb91d453128edec9f2be0d25cf/data"
# The data README names these two commits only by abbreviated ids (the full ids could not be
# looked up offline); the SHA-256 check, not the URL, is what guarantees the bytes, and a URL that
# stops resolving fails loudly with the file name and the POLYTASK_DATA hint.
_MNIST = "https://raw.githubusercontent.com/MohamedHesham02/MNIST_DCGAN_pytorch/5aa0ca76/DCGAN/data/MNIST/raw"
_MMOE = "https://raw.githubusercontent.com/drawbridge/keras-mmoe/2718f56e4313716fd3a86e9510bc2df0cc366238/data"
_MALSAR = "https://raw.githubusercontent.com/jiayuzhou/MALSAR/fb975159/data"
# The README gives no commit for the 200-row sample: a branch URL, guarded by the checksum.
_DEEPCTR = "https://raw.githubusercontent.com/shenweichen/DeepCTR/master/examples"


@dataclass(frozen=True)
class KnownFile:
    """A data file pinned by content: its relative name, SHA-256 and canonical download URL."""

    name: str
    sha256: str
    url: str


def _known(*files: KnownFile) -> dict[str, KnownFile]:
    return {f.name: f for f in files}


KNOWN_FILES: dict[str, KnownFile] = _known(
    KnownFile(
        "census/census-income.sample",
        "ac11c13fc2a20c533aacea569c5be86c5e15cc155cecf6451a03f1a3e23de46b",
        f"{_DEEPCTR}/census-income.sample",
    ),
    KnownFile(
        "census/census-income.test.gz",
        "5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659",
        f"{_MMOE}/census-income.test.gz",
    ),
    KnownFile(
        "mnist/t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        f"{_MNIST}/t10k-images-idx3-ubyte.gz",
    ),
    KnownFile(
        "mnist/t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        f"{_MNIST}/t10k-labels-idx1-ubyte.gz",
    ),
    KnownFile(
        "moleculenet/clintox.csv",
        "cc561402d058a0d996a9f5e5d02bc20f6652b7003525b32c3598b8da4b24e9b7",
        f"{_CHEMPROP}/clintox.csv",
    ),
    KnownFile(
        "moleculenet/qm8.csv.gz",
        "04c445ef01a22b6fbe032c10bccd4c73704c3fd96e3c96a675c1b3a7658df877",
        f"{_CHEMPROP}/qm8.csv.gz",
    ),
    KnownFile(
        "moleculenet/sider.csv",
        "71efc6ac4ca82d6545bc512509863281be0f17234afd7adaf71a71899988302e",
        f"{_CHEMPROP}/sider.csv",
    ),
    KnownFile(
        "moleculenet/tox21.csv",
        "b58cc1f683e78e3c7a1bf7116e9aac0119804018d100f7b8cdb0857941c31aca",
        f"{_CHEMPROP}/tox21.csv",
    ),
    KnownFile(
        "moleculenet/toxcast.csv.gz",
        "4b9b4366b02ce7ec7a0831d60f8c46f153c53c5e122376df887476240496abd4",
        f"{_CHEMPROP}/toxcast.csv.gz",
    ),
    KnownFile(
        "school/school.mat",
        "57fb3238fdd03a9aa17276e2ce18d9bbb5d128c3261e794fe6233b58b6909068",
        f"{_MALSAR}/school.mat",
    ),
)

# (resolved path, mtime_ns, size) -> hex digest; a file edited in place changes mtime or size.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def cache_dir() -> Path:
    """Root of polytask's on-disk cache: ``$POLYTASK_CACHE`` or ``~/.cache/polytask``."""
    env = os.environ.get("POLYTASK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polytask"


def clear_hash_cache() -> None:
    """Forget every digest computed so far in this process."""
    _HASH_CACHE.clear()


def _hash_stream(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, streamed; memoised per (path, mtime, size) for this process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    digest = _HASH_CACHE.get(key)
    if digest is None:
        digest = _hash_stream(p)
        _HASH_CACHE[key] = digest
    return digest


def _offline() -> bool:
    return os.environ.get("POLYTASK_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _location(name: str, path: str | os.PathLike[str] | None) -> tuple[Path, list[Path], str]:
    """The target path, the paths looked at, and a word on why that place was chosen."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            candidates = [p / name, p / Path(name).name]
            for c in candidates:
                if c.is_file():
                    return c, candidates, "the directory given as path"
            return candidates[0], candidates, "the directory given as path"
        return p, [p], "the path given"
    env = os.environ.get("POLYTASK_DATA")
    if env:
        p = Path(env).expanduser() / name
        return p, [p], "$POLYTASK_DATA"
    p = cache_dir() / name
    return p, [p], "the download cache"


def _download(known: KnownFile, target: Path) -> None:
    """Stream ``known.url`` into a temporary file beside ``target``, check it, then rename."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
    except OSError as err:
        raise DataError(
            f"cannot download {known.name!r}: {target.parent} is not writable ({err}); "
            f"set POLYTASK_DATA to a directory holding the file"
        ) from None
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(known.url, timeout=_TIMEOUT_S) as r:
            while chunk := r.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != known.sha256:
            raise DataError(
                f"downloaded {known.name!r} from {known.url} has sha256 {actual}, expected "
                f"{known.sha256}; the source changed or the transfer was corrupted"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DataError(
            f"data file {known.name!r} not found at {target} and downloading it from "
            f"{known.url} failed ({err}); put a copy there or set POLYTASK_DATA=/dir/holding/data "
            f"(containing {known.name})"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def resolve(
    name: str, path: str | os.PathLike[str] | None = None, *, download: bool | None = None
) -> Path:
    """Return the local path of the known data file ``name``, verified against its SHA-256.

    Args:
        name: a key of :data:`KNOWN_FILES`, e.g. ``"moleculenet/tox21.csv"``.
        path: the file itself or a directory holding it; overrides ``POLYTASK_DATA``.
        download: allow (True) or forbid (False) downloading a missing file; by default it is
            allowed unless ``POLYTASK_OFFLINE`` is set.

    Raises:
        DataError: unknown name, file missing and not downloadable, or checksum mismatch.
    """
    known = KNOWN_FILES.get(name)
    if known is None:
        raise DataError(f"unknown data file {name!r}; known files: {sorted(KNOWN_FILES)}")
    target, looked, why = _location(name, path)
    if not target.is_file():
        allowed = (not _offline()) if download is None else download
        if not allowed:
            where = ", ".join(str(p) for p in looked)
            raise DataError(
                f"data file {name!r} not found (looked in {why}: {where}) and downloads are "
                f"disabled (POLYTASK_OFFLINE or download=False); set POLYTASK_DATA to the "
                f"directory that contains {name!r}, e.g. POLYTASK_DATA=../shared/data, or pass "
                f"path=..."
            )
        _download(known, target)
    actual = sha256_file(target)
    if actual != known.sha256:
        raise DataError(
            f"checksum mismatch for {name!r} at {target}: expected sha256 {known.sha256}, "
            f"got {actual}; the file is corrupted or a different version"
        )
    return target
