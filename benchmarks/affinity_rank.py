"""Do cheap task affinities rank groupings the way training them does? Spearman per data set.

For each data set, one shared model (equal weights) is trained while the relationship measures are
recorded (``training.relations``, as ``polytask advise`` records them: 4 records per epoch,
lookahead included). Every candidate partition of the tasks is then

* *scored* from each recorded measure with :func:`polytask.analysis.grouping.partition_score`
  (TAG's score: per task, the mean affinity onto it from the rest of its group; a task alone
  scores 0), and
* *trained*: one model per multi-task group (``polytask.auto.search.run_partition``; a singleton
  is its single-task baseline, Δm 0), its validation Δm% against the single-task baselines of the
  same seed (``Σ_g |g|·Δm_g / T``), for each seed.

The agreement is Spearman's ρ between the score and -Δm (higher score should mean lower Δm, i.e.
better), over the partitions, with n and the p-value (``scipy.stats.spearmanr``). The test split is
never read. Candidates: Census (3 tasks) all 5 partitions; Tox21 and QM8 the grouping search's top
partitions under each measure, a few random partitions (seeded), all-shared and separate.

    python benchmarks/affinity_rank.py run --datasets census tox21 qm8 --seeds 0 1 --out /tmp/ar
    python benchmarks/affinity_rank.py report --out /tmp/ar        # re-score saved runs

``run`` resumes: partitions already trained (``<out>/<data set>/rank.json``) are not retrained.
QM8 is the 2,000-molecule, 14-target table of ``benchmarks/advise.py`` (RDKit 2-D descriptors;
``--qm8-table`` reuses a table already built). Public API only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polytask.analysis import read_relations
from polytask.analysis.grouping import partition_score, search_affinity, search_groupings
from polytask.auto.search import HyperParams, Problem, run_partition, train_reference
from polytask.config import ExperimentConfig, parse_config
from polytask.experiment import load_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from advise import qm8_table  # a sibling benchmark script, not the package

MEASURES = ("lookahead_affinity", "lookahead_affinity_first_order", "grad_cosine")
Groups = list[list[str]]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


# ------------------------------------------------------------------------------ the data sets
def census_config(args: argparse.Namespace) -> ExperimentConfig:
    return _config("census", {"dataset": "census",
                              "options": {"max_rows": args.census_rows, "three_tasks": True}},
                   hidden=[64, 32], epochs=args.epochs, batch=128, lr=1e-3)


def tox21_config(args: argparse.Namespace) -> ExperimentConfig:
    return _config("tox21", {"dataset": "tox21", "options": {"split": "random", "features": "ecfp"}},
                   hidden=[256], epochs=args.epochs, batch=128, lr=1e-3, dropout=0.2)


def qm8_config(args: argparse.Namespace) -> ExperimentConfig:
    data_dir = Path(os.environ.get("POLYTASK_DATA", "../shared/data"))
    table = args.qm8_table or (args.out / "qm8_2000.csv")
    targets = qm8_table(table, 2000, data_dir)
    return _config("qm8", {"table": str(table), "targets": targets},
                   hidden=[256, 128], epochs=args.epochs, batch=128, lr=1e-3)


def _config(name: str, data: dict[str, Any], *, hidden: list[int], epochs: int, batch: int,
            lr: float, dropout: float | None = None) -> ExperimentConfig:
    options: dict[str, Any] = {"hidden": hidden}
    if dropout is not None:
        options["dropout"] = dropout
    return parse_config({
        "name": name,
        "data": {**data, "split_seed": 0},  # the split fixed: seeds vary the initialisation
        "model": {"architecture": "hard_sharing", "trunk": "mlp", "trunk_options": options},
        "balancers": [{"name": "equal"}],
        "baselines": {"stl": True},
        "training": {"epochs": epochs, "batch_size": batch, "lr": lr, "progress": False,
                     "tensorboard": False},
        "seeds": [0],
    })


CONFIGS: dict[str, Callable[[argparse.Namespace], ExperimentConfig]] = {
    "census": census_config, "tox21": tox21_config, "qm8": qm8_config,
}


# ------------------------------------------------------------------------------ the candidates
def key(groups: Sequence[Sequence[str]]) -> str:
    return " | ".join(sorted(",".join(sorted(g)) for g in groups))


def all_partitions(names: list[str]) -> list[Groups]:
    out: list[Groups] = []

    def grow(i: int, groups: Groups) -> None:
        if i == len(names):
            out.append([list(g) for g in groups])
            return
        for g in groups:
            g.append(names[i])
            grow(i + 1, groups)
            g.pop()
        groups.append([names[i]])
        grow(i + 1, groups)
        groups.pop()

    grow(0, [])
    return out


def random_partition(names: list[str], rng: np.random.Generator) -> Groups:
    """Tasks dealt into 2 to T/2 groups uniformly at random (no empty group)."""
    k = int(rng.integers(2, max(3, len(names) // 2 + 1)))
    while True:
        labels = rng.integers(0, k, size=len(names))
        if len(set(labels.tolist())) == k:
            return [[n for n, g in zip(names, labels, strict=True) if g == j] for j in range(k)]


def candidates(names: list[str], rel_dir: Path, top: int, n_random: int, seed: int
               ) -> list[dict[str, Any]]:
    """Every partition for T <= 4; else the search's top ones per measure, random ones, the ends."""
    if len(names) <= 4:
        return [{"groups": g, "origin": "all"} for g in all_partitions(names)]
    relations = read_relations(rel_dir)
    chosen: dict[str, dict[str, Any]] = {}

    def add(groups: Groups, origin: str) -> None:
        chosen.setdefault(key(groups), {"groups": groups, "origin": origin})

    add([list(names)], "all-shared")
    add([[n] for n in names], "separate")
    for m, count in zip(MEASURES, (top, 2, 2), strict=True):
        tasks, a = relations.affinity(m)
        found = [p for p in search_groupings(tasks, a, k=count + 4) if 1 < len(p.groups) < len(names)]
        for p in found[:count]:
            add(p.groups, f"top by {m}")
    rng = np.random.default_rng(seed)
    while sum(c["origin"] == "random" for c in chosen.values()) < n_random:
        add(random_partition(names, rng), "random")
    return list(chosen.values())


# ------------------------------------------------------------------------------ training
def train_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "rank.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    config = CONFIGS[name](args)
    splits = load_data(config, 0)
    problem = Problem(config, splits, out, log=lambda _: None)
    names = problem.names
    hp = HyperParams("equal", config.training.lr, config.training.weight_decay, 1.0)
    state.update({"data set": name, "tasks": names, "epochs": config.training.epochs,
                  "model": config.model_list[0].trunk_options, "train_rows": len(splits.train),
                  "batch_size": config.training.batch_size})
    state.setdefault("uptime", []).append(uptime())
    state.setdefault("seconds", {})

    def save() -> None:
        state_path.write_text(json.dumps(state, indent=1))

    for seed in args.seeds:
        started = time.perf_counter()
        baselines, shared = train_reference(problem, seed, relations=seed == args.seeds[0])
        state["seconds"][f"reference seed {seed}"] = time.perf_counter() - started
        if seed == args.seeds[0]:
            state["relations_dir"] = str(shared.run_dir)
            if "candidates" not in state:
                state["candidates"] = candidates(names, shared.run_dir, args.top, args.random,
                                                 args.random_seed)
        for c in state["candidates"]:
            c.setdefault("delta_m", {})
            if str(seed) in c["delta_m"]:
                continue
            groups = c["groups"]
            if len(groups) == 1:
                c["delta_m"][str(seed)] = shared.delta_m
            elif len(groups) == len(names):
                c["delta_m"][str(seed)] = 0.0
            else:
                t0 = time.perf_counter()
                dm, _ = run_partition(problem, groups, seed, hp, baselines,
                                      out / "partitions" / f"p{state['candidates'].index(c)}")
                c["delta_m"][str(seed)] = dm
                state["seconds"][f"{key(groups)} seed {seed}"] = time.perf_counter() - t0
            print(f"{name} seed {seed}: {key(groups)}: val Δm {c['delta_m'][str(seed)]:+.3f}%",
                  flush=True)
            save()
    state["uptime"].append(uptime())
    save()
    return state


# ------------------------------------------------------------------------------ scoring
def score(state: dict[str, Any]) -> dict[str, Any]:
    """Spearman(score, -Δm) per measure over the partitions trained on every seed."""
    from scipy.stats import spearmanr

    relations = read_relations(state["relations_dir"])
    names = state["tasks"]
    seeds = sorted({s for c in state["candidates"] for s in c["delta_m"]})
    done = [c for c in state["candidates"] if all(s in c["delta_m"] for s in seeds)]
    dm = np.array([np.mean([c["delta_m"][s] for s in seeds]) for c in done])
    # the ends (all-shared, separate) are where sharing's capacity cost, which no affinity
    # measures, weighs most: the agreement is also given over the grouped partitions alone
    grouped = np.array([1 < len(c["groups"]) < len(names) for c in done])
    out: dict[str, Any] = {"n": len(done), "n_grouped": int(grouped.sum()), "seeds": seeds,
                           "measures": {}}
    for m in MEASURES:
        for window, (tasks, a) in (("all epochs", relations.affinity(m)),
                                   ("second half", search_affinity(relations, m))):
            if tasks != names:
                raise SystemExit(f"{state['relations_dir']}: tasks {tasks}, the run had {names}")
            s = np.array([partition_score(names, a, c["groups"]) for c in done])
            rho, p = spearmanr(s, -dm)
            entry: dict[str, Any] = {"rho": float(rho), "p": float(p), "scores": s.tolist()}
            if grouped.sum() >= 4:  # fewer: a rank correlation that says nothing
                rho_g, p_g = spearmanr(s[grouped], -dm[grouped])
                entry.update({"rho_grouped": float(rho_g), "p_grouped": float(p_g)})
            out["measures"][f"{m} ({window})"] = entry
    out["partitions"] = [{"groups": key(c["groups"]), "origin": c["origin"],
                          "delta_m_mean": float(d),
                          "delta_m_std": float(np.std([c["delta_m"][s] for s in seeds], ddof=1))
                          if len(seeds) > 1 else None}
                         for c, d in zip(done, dm, strict=True)]
    return out


def report(out: Path, datasets: Sequence[str]) -> None:
    rows = []
    for name in datasets:
        path = out / name / "rank.json"
        if not path.exists():
            print(f"{name}: no {path}")
            continue
        state = json.loads(path.read_text())
        result = score(state)
        (out / name / "spearman.json").write_text(json.dumps(result, indent=1))
        print(f"\n{name}: {len(state['tasks'])} tasks, {result['n']} partitions, seeds "
              f"{result['seeds']}, {state['epochs']} epochs, MLP {state['model']}, "
              f"{state['train_rows']} training rows; load {state['uptime']}")
        for p in sorted(result["partitions"], key=lambda p: p["delta_m_mean"]):
            std = p["delta_m_std"]
            print(f"  val Δm {p['delta_m_mean']:+7.3f}% ± {std if std is None else f'{std:.3f}'}"
                  f"  ({p['origin']}) {p['groups']}")
        for m, r in result["measures"].items():
            grouped = (f"{r['rho_grouped']:+.2f} (p {r['p_grouped']:.2f}, n {result['n_grouped']})"
                       if "rho_grouped" in r else "—")
            rows.append(f"| {name} | {result['n']} | {m} | {r['rho']:+.2f} | {r['p']:.3f} | "
                        f"{grouped} |")
    print("\n| data set | partitions | measure | Spearman ρ(score, -Δm) | p | ρ, grouped only |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--census-rows", type=int, default=10000)
    parser.add_argument("--top", type=int, default=4,
                        help="partitions from the exact lookahead's search (2 each from the others)")
    parser.add_argument("--random", type=int, default=3, help="random partitions")
    parser.add_argument("--random-seed", type=int, default=0)
    parser.add_argument("--qm8-table", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-results/affinity-rank"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.command == "run":
        print(f"before: {uptime()}", flush=True)
        for name in args.datasets:
            train_dataset(name, args)
        print(f"after: {uptime()}", flush=True)
    report(args.out, args.datasets)


if __name__ == "__main__":
    main()
