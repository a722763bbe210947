"""Known data files: pinned checksums, the lookup order, downloads and refusing wrong bytes."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from polytask.data import files
from polytask.data.base import DataError
from polytask.data.files import KNOWN_FILES, KnownFile, resolve, sha256_file

NAME = "moleculenet/clintox.csv"


def test_registry_matches_shared_sha256sums(data_dir: Path) -> None:
    sums = {}
    for line in (data_dir / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert sums == {name: known.sha256 for name, known in KNOWN_FILES.items()}
    for known in KNOWN_FILES.values():
        assert known.url.startswith("https://raw.githubusercontent.com/")
        assert known.url.endswith(Path(known.name).name)


def test_resolve_from_polytask_data(data_dir: Path) -> None:
    assert resolve(NAME) == data_dir / NAME


def test_resolve_explicit_file_or_directory(data_dir: Path) -> None:
    assert resolve(NAME, data_dir / NAME) == data_dir / NAME
    assert resolve(NAME, data_dir) == data_dir / NAME
    # a directory holding the file under its base name also works
    assert resolve(NAME, data_dir / "moleculenet") == data_dir / NAME


def test_sha256_mismatch_names_expected_and_actual(data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "clintox.csv"
    shutil.copyfile(data_dir / NAME, copy)
    raw = bytearray(copy.read_bytes())
    raw[100] ^= 0x01
    copy.write_bytes(bytes(raw))
    actual = hashlib.sha256(bytes(raw)).hexdigest()
    with pytest.raises(DataError, match="checksum mismatch") as err:
        resolve(NAME, copy)
    assert KNOWN_FILES[NAME].sha256 in str(err.value)
    assert actual in str(err.value)
    assert NAME in str(err.value)


def test_missing_file_offline_says_where_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYTASK_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        resolve(NAME, tmp_path)
    msg = str(err.value)
    assert NAME in msg and str(tmp_path) in msg and "POLYTASK_DATA" in msg

    monkeypatch.delenv("POLYTASK_DATA", raising=False)
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="download cache") as err:
        resolve(NAME)
    assert str(tmp_path / "cache" / NAME) in str(err.value)


def test_unknown_name_lists_known_files() -> None:
    with pytest.raises(DataError, match=r"moleculenet/tox21\.csv"):
        resolve("nope/nothing.csv")


def _fake_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes) -> Path:
    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    known = KnownFile("test/x.bin", hashlib.sha256(b"payload").hexdigest(), source.as_uri())
    monkeypatch.setitem(KNOWN_FILES, known.name, known)
    monkeypatch.delenv("POLYTASK_DATA", raising=False)
    monkeypatch.delenv("POLYTASK_OFFLINE", raising=False)
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "test"


def test_download_into_cache_is_verified_and_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _fake_known(tmp_path, monkeypatch, b"payload")
    got = resolve("test/x.bin")
    assert got == folder / "x.bin"
    assert got.read_bytes() == b"payload"
    assert os.listdir(folder) == ["x.bin"]  # no temporary file left behind


def test_download_with_wrong_bytes_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _fake_known(tmp_path, monkeypatch, b"tampered")
    with pytest.raises(DataError, match="expected"):
        resolve("test/x.bin")
    assert os.listdir(folder) == []
    with pytest.raises(DataError, match="downloads are disabled"):
        resolve("test/x.bin", download=False)


def test_digest_is_cached_per_path_mtime_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"abc")
    calls: list[Path] = []
    real = files._hash_stream

    def counting(p: Path) -> str:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(files, "_hash_stream", counting)
    files.clear_hash_cache()
    expected = hashlib.sha256(b"abc").hexdigest()
    assert sha256_file(target) == expected
    assert sha256_file(target) == expected
    assert len(calls) == 1
    target.write_bytes(b"abcd")  # new size: must be rehashed
    assert sha256_file(target) == hashlib.sha256(b"abcd").hexdigest()
    assert len(calls) == 2
