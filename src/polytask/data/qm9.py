"""QM9 (130,831 small organic molecules, DFT properties) from the ``qm9pack`` package's data files.

Why QM9: it is the standard many-target *regression* benchmark for molecules (every label present,
targets on wildly different scales), the counterpart to the missing-label classification sets in
:mod:`polytask.data.molecules`. Inputs are the same ECFP4 bits and/or RDKit 2-D descriptors as
there, computed by the same functions and cached the same way; a graph network trunk (on the
3-D geometries the package also holds) is not part of this loader.

Where the data comes from: ``pip install 'polytask[qm9]'`` installs ``qm9pack==1.0.3``, a ~100 MB
wheel that depends only on numpy and pandas (it does not pull torch; no ``--no-deps`` needed).
It ships the data as plain CSV files inside the package, ``qm9pack/data/qm9_part{1,2,3}.csv``
(43,610 + 43,611 + 43,610 rows, one row per molecule, 25 columns including SMILES, the 3-D
geometry, Mulliken charges and frequencies as strings) plus ``qm9_polarizability.csv`` (the
polarizability tensor). Its API, ``qm9pack.get_data()``, parses all four files in full (every
geometry string) and merges them, and ``import qm9pack`` itself fails on current setuptools
(it imports the removed ``pkg_resources``). So this loader never imports ``qm9pack``: it finds the
installed package with :func:`importlib.util.find_spec` (which does not execute it) and reads only
the ``Index``, ``SMILES`` and target columns of the three part files, checked against their
pinned SHA-256 (about a second for all 130,831 molecules).

Targets (names as in the QM9 literature; the package's columns and units, kept unconverted):

====== ============================== =============  ===========================================
name   qm9pack column                 unit           meaning
====== ============================== =============  ===========================================
mu     Dipole_debye                   debye          dipole moment
alpha  Polarizability_bohr3           bohr^3         isotropic polarizability
homo   HOMO_au                        hartree        HOMO energy
lumo   LUMO_au                        hartree        LUMO energy
gap    HOMO_LUMO_gap_au               hartree        LUMO - HOMO
r2     R2_bohr2                       bohr^2         electronic spatial extent
zpve   ZPVE_au                        hartree        zero-point vibrational energy
U0     InternalEnergy_0K_au           hartree        internal energy at 0 K
U      InternalEnergy_298K_au         hartree        internal energy at 298.15 K
H      Enthalphy_298K_au              hartree        enthalpy at 298.15 K (package's spelling)
G      GibbsFreeEnergy_298K_au        hartree        free energy at 298.15 K
Cv     Heatcapacity_Cv_cal_mol_K      cal/(mol K)    heat capacity at 298.15 K
====== ============================== =============  ===========================================

The default is the 11 targets above Cv; the literature's 12th, Cv,
is present in the package and kept by ``targets=[..., "Cv"]`` or ``targets="all"``. Names are
matched case-insensitively, and the package's column names are accepted too. Energies are in
hartree (1 Ha = 27.2114 eV), so an MAE of 0.004 on ``gap`` is ~0.11 eV. Targets are float32: the
total energies (~-400 Ha) keep ~3e-5 Ha (~1 meV) of resolution, far below any model's error.

``subset=n`` draws ``n`` molecules with a seeded permutation *before* featurizing, so a
5,000-molecule run featurizes 5,000 SMILES, not 130,831. The subset is drawn with ``subset_seed``
(default: ``seed``, the split seed). ``row_ids`` are QM9's own molecule numbers (``Index``,
1..133,885 with 3,054 gaps: ``dsgdb9nsd_000001.xyz`` is 1), so they identify a molecule whatever
the subset. SMILES rdkit cannot parse are skipped, counted in ``Splits.info["skipped"]`` (their QM9
numbers) and reported with one warning; none of the pinned package's 130,831 SMILES fails with
rdkit 2026.09.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polytask.data import files
from polytask.data.base import DataError, MultiTaskData, Splits, random_split
from polytask.data.molecules import (
    FEATURES,
    _add_descriptors,
    _check_fractions,
    _fingerprints,
    _rdkit,
    _rdkit_version,
    warn_skipped,
)
from polytask.tasks import Task

__all__ = [
    "QM9_DEFAULT_TARGETS",
    "QM9_PACKAGE_FILES",
    "QM9_TARGETS",
    "QM9_TOTAL",
    "QM9Target",
    "load_qm9",
    "qm9_data_dir",
]


@dataclasses.dataclass(frozen=True)
class QM9Target:
    """A QM9 property: the ``qm9pack`` column holding it and its unit there."""

    column: str
    unit: str


QM9_TARGETS: dict[str, QM9Target] = {
    "mu": QM9Target("Dipole_debye", "debye"),
    "alpha": QM9Target("Polarizability_bohr3", "bohr^3"),
    "homo": QM9Target("HOMO_au", "hartree"),
    "lumo": QM9Target("LUMO_au", "hartree"),
    "gap": QM9Target("HOMO_LUMO_gap_au", "hartree"),
    "r2": QM9Target("R2_bohr2", "bohr^2"),
    "zpve": QM9Target("ZPVE_au", "hartree"),
    "U0": QM9Target("InternalEnergy_0K_au", "hartree"),
    "U": QM9Target("InternalEnergy_298K_au", "hartree"),
    "H": QM9Target("Enthalphy_298K_au", "hartree"),
    "G": QM9Target("GibbsFreeEnergy_298K_au", "hartree"),
    "Cv": QM9Target("Heatcapacity_Cv_cal_mol_K", "cal/(mol K)"),
}

#: The 11 standard targets (all but Cv), the default.
QM9_DEFAULT_TARGETS: tuple[str, ...] = tuple(t for t in QM9_TARGETS if t != "Cv")

#: Molecules in QM9 (133,885 numbered, 3,054 whose DFT optimisation failed are absent).
QM9_TOTAL = 130_831

#: The data files of ``qm9pack==1.0.3``, in order, with their SHA-256.
QM9_PACKAGE_FILES: dict[str, str] = {
    "qm9_part1.csv": "19f0a5d595462d52cd82eef3370f3e9eb55a1f52cb14985657200349568deff3",
    "qm9_part2.csv": "2bca113fdc0b28a13563c80ed9b240e934f3da6c64c64fe74ddb4f0f36036e61",
    "qm9_part3.csv": "9c5efb5733d2af149db8d95d36ff198b4ffed12d9f7b344220a1e5877d5c6a43",
}

_CACHE_FORMAT = 1
# The package's parsed columns (~15 MB) by digest, so repeated loads in one process (several
# seeds, subsets, tests) parse the 225 MB of CSV once; read-only once stored.
_TABLES: dict[str, pd.DataFrame] = {}
_MIN_SUBSET = 10  # 8 / 1 / 1 at the default fractions: no empty split


def qm9_data_dir() -> Path:
    """The installed ``qm9pack`` package's ``data`` folder, found without importing the package.

    Why not ``import qm9pack``: its ``__init__`` imports ``pkg_resources``, which setuptools no
    longer ships, and nothing in it is needed to read the CSV files.
    """
    spec = importlib.util.find_spec("qm9pack")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(
            "QM9 needs the qm9pack data package: pip install 'polytask[qm9]' "
            "(or pass path= to a copy of its data folder or a QM9 CSV)"
        )
    return Path(locations[0]) / "data"


def _resolve_targets(targets: str | Sequence[str] | None) -> list[str]:
    """Canonical target names, in the order asked; unknown names are refused by name."""
    if targets is None:
        return list(QM9_DEFAULT_TARGETS)
    if isinstance(targets, str):
        if targets == "all":
            return list(QM9_TARGETS)
        targets = [targets]
    lookup = {name.lower(): name for name in QM9_TARGETS}
    lookup.update({spec.column.lower(): name for name, spec in QM9_TARGETS.items()})
    out: list[str] = []
    for t in targets:
        name = lookup.get(str(t).lower())
        if name is None:
            raise DataError(
                f"unknown QM9 target {t!r}; available: {', '.join(QM9_TARGETS)} "
                "(or the qm9pack column names, or 'all')"
            )
        if name in out:
            raise DataError(f"QM9 target {t!r} is asked for twice")
        out.append(name)
    if not out:
        raise DataError("targets must name at least one QM9 target")
    return out


def _read(path: str | os.PathLike[str] | None) -> tuple[pd.DataFrame, str, str]:
    """The ``Index``, ``SMILES`` and target columns of all molecules, the source and its digest.

    ``path`` is a folder holding the package's three part files (the package's own ``data``
    folder when ``None``; their digests must match the pinned ones), or one CSV file (optionally
    gzipped) with the package's column names, e.g. ``qm9pack.get_data()`` written out; that file's
    own digest becomes the cache key.
    """
    columns = ["SMILES", *(spec.column for spec in QM9_TARGETS.values())]
    folder = qm9_data_dir() if path is None else Path(path).expanduser()
    if folder.is_dir():
        digests: list[str] = []
        for name, pinned in QM9_PACKAGE_FILES.items():
            file = folder / name
            if not file.is_file():
                raise DataError(f"QM9: {file} not found; expected qm9pack 1.0.3's data files there")
            digest = files.sha256_file(file)
            if digest != pinned:
                raise DataError(
                    f"QM9: {file} has SHA-256 {digest}, not qm9pack 1.0.3's {pinned}; "
                    "refusing to train on different data"
                )
            digests.append(digest)
        sha = hashlib.sha256(",".join(digests).encode()).hexdigest()
        table = _TABLES.get(sha)
        if table is None:
            parts = [_read_csv(folder / name, ["Index", *columns]) for name in QM9_PACKAGE_FILES]
            table = _TABLES[sha] = pd.concat(parts, ignore_index=True)
        return table, str(folder), sha
    if not folder.is_file():
        raise DataError(f"QM9: {folder} is neither a folder of qm9pack data files nor a CSV file")
    header = _read_csv(folder, None, nrows=0).columns
    table = _read_csv(folder, [c for c in ["Index", *columns] if c in header])
    if "Index" not in table.columns:
        table.insert(0, "Index", np.arange(1, len(table) + 1))
    return table, str(folder), files.sha256_file(folder)


def _read_csv(file: Path, usecols: list[str] | None, nrows: int | None = None) -> pd.DataFrame:
    try:
        return pd.read_csv(file, usecols=usecols, nrows=nrows)
    except ValueError as err:  # pandas names the missing usecols
        raise DataError(f"QM9: cannot read {file}: {err}") from None
    except OSError as err:
        raise DataError(f"QM9: cannot read {file}: {err}") from None


def _check_subset(subset: object, total: int) -> int | None:
    if subset is None:
        return None
    if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)):
        raise DataError(f"subset must be a whole number of molecules or None, got {subset!r}")
    if not _MIN_SUBSET <= int(subset) <= total:
        raise DataError(f"subset must be between {_MIN_SUBSET} and {total} molecules, got {subset}")
    return int(subset)


def load_qm9(
    path: str | os.PathLike[str] | None = None,
    subset: int | None = None,
    seed: int = 0,
    features: str = "ecfp+rdkit2d",
    targets: str | Sequence[str] | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    radius: int = 2,
    n_bits: int = 2048,
    subset_seed: int | None = None,
) -> Splits:
    """QM9 regression targets from SMILES features, random split, targets standardized on train.

    Args:
        path: a folder with qm9pack 1.0.3's ``qm9_part{1,2,3}.csv`` or one QM9 CSV with the same
            column names; by default the installed ``qm9pack`` package's data (no import of it).
        subset: use a random ``subset`` of the 130,831 molecules (at least 10), drawn before
            featurizing, so small subsets load in seconds; ``None`` keeps all.
        seed: split seed (and subset seed unless ``subset_seed`` is given).
        features: ``"ecfp+rdkit2d"`` (default), ``"ecfp"`` or ``"rdkit2d"``; see
            :func:`polytask.data.molecules.load_smiles_csv`.
        targets: target names (see the module docstring), ``"all"`` for the 12 with Cv, or
            ``None`` for the 11 standard ones.
        fractions: train / validation / test fractions of the (parsable) molecules.
        radius, n_bits: Morgan fingerprint settings (ECFP4 = radius 2).
        subset_seed: seed of the subset draw; fix it to keep one subset across split seeds.
    """
    if features not in FEATURES:
        raise DataError(f"features must be one of {list(FEATURES)}, got {features!r}")
    _check_fractions(fractions)
    names = _resolve_targets(targets)
    if subset is not None:
        _check_subset(subset, QM9_TOTAL)  # before reading 225 MB for a bad argument
    _rdkit()  # fail early if the chem extra is missing
    table, source, sha = _read(path)
    n_subset = _check_subset(subset, len(table))
    draw_seed = seed if subset_seed is None else subset_seed
    if n_subset is None:
        rows = np.arange(len(table))
    else:
        perm = torch.randperm(len(table), generator=torch.Generator().manual_seed(draw_seed))
        rows = np.sort(perm[:n_subset].numpy())
    qm9_ids = table["Index"].to_numpy(dtype=np.int64)[rows]
    smiles = table["SMILES"].iloc[rows].tolist()
    labels: dict[str, np.ndarray] = {}
    for name in names:
        column = QM9_TARGETS[name].column
        values = pd.to_numeric(table[column].iloc[rows], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(
                f"QM9: target {name!r} ({column}) is missing or not finite for molecule "
                f"{int(qm9_ids[np.flatnonzero(bad)[0]])} ({int(bad.sum())} in all)"
            )
        labels[name] = values.astype(np.float32)

    # The cache key names the subset's molecules, so two subsets never share an entry.
    settings: dict[str, object] = {
        "format": _CACHE_FORMAT,
        "dataset": "qm9",
        "rdkit": _rdkit_version(),
        "rows": len(rows),
        "molecules": hashlib.sha256(qm9_ids.tobytes()).hexdigest(),
    }
    bits, valid = _fingerprints(smiles, sha, settings, radius, n_bits)
    skipped = qm9_ids[~valid].tolist()
    warn_skipped("qm9", skipped, "QM9 numbers")
    keep = np.flatnonzero(valid)
    if keep.size < _MIN_SUBSET:
        raise DataError(f"QM9: only {keep.size} parsable molecule(s) in the selection")
    # row_ids are positions in ``smiles`` while the descriptors are added (they index the
    # descriptor array); they become QM9 molecule numbers afterwards.
    data = MultiTaskData(
        inputs=torch.from_numpy(bits[keep].astype(np.float32)),
        targets={name: torch.from_numpy(labels[name][keep]) for name in names},
        tasks=[Task(name, "regression") for name in names],
        name="qm9",
        row_ids=torch.from_numpy(keep.astype(np.int64)),
    )
    splits = random_split(data, fractions, seed)
    featurizer: dict[str, object] = {"kind": "morgan", "radius": radius, "n_bits": n_bits}
    if features != "ecfp":
        featurizer = _add_descriptors(splits, smiles, sha, settings, features, featurizer)
    ids = torch.from_numpy(qm9_ids)
    for part in ("train", "val", "test"):
        split_data: MultiTaskData = getattr(splits, part)
        assert split_data.row_ids is not None
        setattr(splits, part, dataclasses.replace(split_data, row_ids=ids[split_data.row_ids]))
    splits.info.update(
        {
            "dataset": "qm9",
            "file": source,
            "sha256": sha,
            "featurizer": featurizer,
            "targets": {n: f"{QM9_TARGETS[n].column} [{QM9_TARGETS[n].unit}]" for n in names},
            "subset": {
                "size": len(rows),
                "of": len(table),
                "seed": None if n_subset is None else draw_seed,
            },
            "skipped": {"count": len(skipped), "rows": skipped},
        }
    )
    return splits.validate().fit_target_scalers()
