"""Names that come from data (task names, column names, labels) turned into safe path components.

Why: a run directory is named after a task (``stl-<task>-seed0``) or a label, and those names come
from a user's table header or config. A column called ``price/m2`` would otherwise create nested
folders, ``..`` would escape the experiment directory, and a name with spaces or accents breaks
shell scripts and some file systems. :func:`safe_name` maps every name to one portable component,
and appends a short hash of the original whenever it changed anything, so that two different
names (``a/b`` and ``a_b``) never end up in the same folder.
"""

from __future__ import annotations

import hashlib
import string

__all__ = ["safe_name"]

_KEEP = frozenset(string.ascii_letters + string.digits + "-_.")
_MAX_LENGTH = 100  # far below the usual 255-byte limit, leaving room for prefixes and suffixes


def safe_name(name: str) -> str:
    """``name`` as one path component of ASCII letters, digits and ``-_.``.

    A name made only of those characters (not starting with ``.``, at most 100 characters) is
    returned unchanged, so ordinary names keep their readable folders. Otherwise every other
    character becomes ``_``, a leading ``.`` (hidden files, ``.`` and ``..``) becomes ``_`` too, the
    result is cut to 100 characters, and ``-`` plus the first 10 hex digits of the SHA-256 of the
    original name are appended: the replaced form alone could collide (``a/b`` and ``a b`` both
    give ``a_b``), the hash keeps them apart.
    """
    kept = "".join(c if c in _KEEP else "_" for c in name)
    if kept.startswith("."):
        kept = "_" + kept[1:]
    if kept == name and 0 < len(name) <= _MAX_LENGTH:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{kept[:_MAX_LENGTH]}-{digest}"
