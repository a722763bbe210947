"""Benchmarks of ``polytask advise`` and ``polytask fit --auto`` (not tests: minutes of CPU).

Two measurements (docs/relationships.md, "Grouping and advice"):

* ``advise``: ``polytask advise`` on a Census slice (three binary tasks) within a budget; then the
  recommended configuration is trained on 3 seeds and its *test* Δm% against the single-task
  baselines reported (mean ± std), beside the all-shared equal-weights model. The advice itself
  looked at validation only; the test split is read here, after the decision.

      python benchmarks/advise.py advise --max-rows 4000 --budget 4m --epochs 8 --out /tmp/adv

* ``fit-auto``: ``polytask fit TABLE --auto`` on a 2,000-molecule, 14-target QM8 table (RDKit 2-D
  descriptors as features; QM8's repeated PBE0 columns included) — wall time of the whole command
  and budget adherence.

      python benchmarks/advise.py fit-auto --rows 2000 --epochs 5 --out /tmp/fa

* ``fit-default``: ``polytask fit TABLE -t ...`` with no other option (the quick automatic
  choice, ``fit``'s default) on the same QM8 table — wall time (target < 180 s), the structure
  chosen and its validation Δm%.

      python benchmarks/advise.py fit-default --rows 2000 --out /tmp/fd

* ``budgets``: budget adherence of the full search, wall / budget for several budgets:
  ``polytask fit --auto --budget B`` on the QM8 table and ``polytask advise CONFIG --budget B`` on
  the Census slice of ``advise`` (the same advisor and clock; Census is a built-in data set).

      python benchmarks/advise.py budgets --qm8 2m 4m 8m --census 2m 4m --out /tmp/bud

All print ``uptime`` before and after: the machine is shared, timings depend on its load.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polytask.config import load_config
from polytask.experiment import run_experiment


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def polytask(*args: str) -> tuple[int, float, str]:
    """Run the ``polytask`` command line; exit code, wall seconds (start-up included), output."""
    started = time.perf_counter()
    command = [str(Path(sys.executable).with_name("polytask")), *args]
    proc = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return proc.returncode, time.perf_counter() - started, proc.stdout + proc.stderr


def test_delta_m(configs: list[str], seeds: list[int], out: Path) -> list[float]:
    """Test Δm% of a recommendation per seed: Σ_g |g| Δm_g / T over its models."""
    per_seed = {s: 0.0 for s in seeds}
    total = 0
    for path in configs:
        config = load_config(path)
        config = config.model_copy(update={
            "seeds": seeds, "baselines": config.baselines.model_copy(update={"stl": True}),
        })
        result = run_experiment(config, out / Path(path).stem, log=lambda _: None, report=False,
                                overwrite=True)
        size = len(result.tasks)
        total += size
        for r in result.runs:
            if r.kind == "mtl":
                assert r.delta_m is not None
                per_seed[r.seed] += size * r.delta_m
    return [v / total for _, v in sorted(per_seed.items())]


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):+.2f} ± {statistics.stdev(values):.2f}"


def bench_advise(args: argparse.Namespace) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "census-advise",
        # the split fixed (as the advice fixes it): seeds vary the initialisation only
        "data": {"dataset": "census", "options": {"max_rows": args.max_rows, "three_tasks": True},
                 "split_seed": 0},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [64, 32]}},
        "training": {"epochs": args.epochs, "batch_size": 128, "lr": 1e-3, "progress": False},
        "output_dir": str(out / "runs"),
    }
    import yaml

    path = out / "census.yaml"
    path.write_text(yaml.safe_dump(config))
    print(f"before: {uptime()}")
    code, wall, text = polytask("advise", str(path), "--budget", args.budget,
                                "--out", str(out / "advice"))
    print(text[-4000:])
    if code != 0:
        raise SystemExit(f"polytask advise failed ({code})")
    advice = json.loads((out / "advice" / "advice.json").read_text())
    seeds = [0, 1, 2]
    recommended = test_delta_m(advice["configs"], seeds, out / "test")
    shared = test_delta_m([str(path)], seeds, out / "test-shared")
    print(f"after: {uptime()}")
    summary = {
        "budget_s": advice["budget_s"], "advice_elapsed_s": advice["elapsed_s"],
        "advise_wall_s": wall, "structure": advice["structure"], "groups": advice["groups"],
        "hyper_parameters": advice["hyper_parameters"],
        "val_delta_m": advice["val_delta_m"], "val_delta_m_std": advice["val_delta_m_std"],
        "test_delta_m_recommended": recommended, "test_delta_m_all_shared_equal": shared,
    }
    (out / "advise_bench.json").write_text(json.dumps(summary, indent=1))
    print(f"advise: wall {wall:.0f}s for a {advice['budget_s']:.0f}s budget "
          f"({100 * wall / advice['budget_s']:.0f}%); recommended {advice['structure']} "
          f"{advice['groups']} {advice['hyper_parameters']}")
    print(f"test Δm% (3 seeds, split fixed): recommended {mean_std(recommended)}; "
          f"all-shared equal (config defaults) {mean_std(shared)}")


def qm8_table(path: Path, rows: int, data_dir: Path) -> list[str]:
    """2,000 QM8 molecules as a table: RDKit 2-D descriptors + 14 of the 16 targets."""
    from polytask.data.molecules import featurize_descriptors

    with gzip.open(data_dir / "moleculenet" / "qm8.csv.gz", "rt") as f:
        frame = pd.read_csv(f, nrows=rows)  # pandas names the repeated columns E1-PBE0.1, ...
    frame = frame.rename(columns=lambda c: c.replace(".", "_"))  # task names hold no "."
    targets = [c for c in frame.columns if c != "smiles"][:14]
    if path.exists():  # the descriptors take minutes on a loaded machine: reuse the table
        return targets
    values, names, valid = featurize_descriptors(frame["smiles"].tolist())
    keep = np.isfinite(values).all(axis=0) & (np.nanstd(values, axis=0) > 0)
    features = pd.DataFrame(values[:, keep], columns=[f"d_{n}" for n, k in zip(names, keep,
                                                                               strict=True) if k])
    table = pd.concat([features, frame[targets]], axis=1)[valid]
    table.to_csv(path, index=False)
    return targets


def bench_fit_auto(args: argparse.Namespace) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(os.environ.get("POLYTASK_DATA", "../shared/data"))
    table = out / "qm8_2000.csv"
    targets = qm8_table(table, args.rows, data_dir)
    print(f"table {table}: {args.rows} molecules, {len(targets)} targets: {targets}")
    print(f"before: {uptime()}")
    cmd = ["fit", str(table), *[x for t in targets for x in ("-t", t)], "--auto",
           *(["--budget", args.budget] if args.budget else []),  # "": fit --auto's default
           "--epochs", str(args.epochs), "--out", str(out / "auto")]
    code, wall, text = polytask(*cmd)
    print(text[-4000:])
    print(f"after: {uptime()}")
    if code != 0:
        raise SystemExit(f"polytask fit --auto failed ({code})")
    advice = json.loads((out / "auto" / "advice.json").read_text())
    budget = advice["budget_s"]
    summary = {"wall_s": wall, "budget_s": budget, "advice_elapsed_s": advice["elapsed_s"],
               "within_10_percent": wall <= 1.1 * budget, "structure": advice["structure"],
               "groups": advice["groups"], "val_delta_m": advice["val_delta_m"]}
    (out / "fit_auto_bench.json").write_text(json.dumps(summary, indent=1))
    print(f"fit --auto: wall {wall:.0f}s (process start to exit) for a {budget:.0f}s budget "
          f"({100 * wall / budget:.0f}%); advisor's own clock {advice['elapsed_s']:.0f}s; "
          f"target < 180s: {'met' if wall < 180 else 'missed'}")


def bench_fit_default(args: argparse.Namespace) -> None:
    """``polytask fit`` with defaults: the quick automatic choice, timed from process start."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(os.environ.get("POLYTASK_DATA", "../shared/data"))
    table = out / f"qm8_{args.rows}.csv"
    targets = qm8_table(table, args.rows, data_dir)
    print(f"table {table}: {args.rows} molecules, {len(targets)} targets")
    before = uptime()
    print(f"before: {before}")
    run = out / "default"
    code, wall, text = polytask("fit", str(table), *[x for t in targets for x in ("-t", t)],
                                "--out", str(run), "--overwrite")
    after = uptime()
    print(text[-4000:])
    print(f"after: {after}")
    if code != 0:
        raise SystemExit(f"polytask fit failed ({code})")
    advice = json.loads((run / "advice.json").read_text())
    summary = {"wall_s": wall, "target_s": 180.0, "met": wall < 180.0,
               "structure": advice["structure"], "groups": advice["groups"],
               "val_delta_m": advice["val_delta_m"],
               "candidates": {c["label"]: c["val_delta_m"] for c in advice["candidates"]},
               "time_per_epoch_s": advice["time_per_epoch_s"],
               "uptime_before": before, "uptime_after": after}
    (out / "fit_default_bench.json").write_text(json.dumps(summary, indent=1))
    print(f"fit (defaults): wall {wall:.0f}s (process start to exit; target < 180s: "
          f"{'met' if wall < 180 else 'missed'}); chose {advice['structure']} "
          f"{advice['groups']}, validation Δm {advice['val_delta_m']:+.2f}%")


def census_config(out: Path, max_rows: int, epochs: int) -> Path:
    """The Census slice of ``bench_advise`` as a YAML config (three binary tasks, MLP 64-32)."""
    import yaml

    config = {
        "name": "census-advise",
        "data": {"dataset": "census", "options": {"max_rows": max_rows, "three_tasks": True},
                 "split_seed": 0},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [64, 32]}},
        "training": {"epochs": epochs, "batch_size": 128, "lr": 1e-3, "progress": False},
        "output_dir": str(out / "runs"),
    }
    path = out / "census.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def bench_budgets(args: argparse.Namespace) -> None:
    """Wall / budget of the full search for each budget: the 10% target (wall <= 1.1 budget)."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(os.environ.get("POLYTASK_DATA", "../shared/data"))
    table = out / f"qm8_{args.rows}.csv"
    targets = qm8_table(table, args.rows, data_dir)
    census = census_config(out, args.max_rows, args.census_epochs)
    jobs = [("qm8", b) for b in args.qm8] + [("census", b) for b in args.census]
    rows = []
    results = out / "budgets.json"
    for data, budget in jobs:
        run = out / f"{data}-{budget}"
        if data == "qm8":
            cmd = ["fit", str(table), *[x for t in targets for x in ("-t", t)], "--auto",
                   "--budget", budget, "--epochs", str(args.qm8_epochs), "--out", str(run)]
        else:
            cmd = ["advise", str(census), "--budget", budget, "--out", str(run)]
        before = uptime()
        code, wall, text = polytask(*cmd)
        after = uptime()
        (out / f"{data}-{budget}.log").write_text(text)
        row: dict[str, Any] = {"data": data, "budget": budget, "exit_code": code,
                               "wall_s": wall, "uptime_before": before, "uptime_after": after}
        if code == 0:
            advice = json.loads((run / "advice.json").read_text())
            within = wall <= 1.1 * advice["budget_s"]
            row.update(budget_s=advice["budget_s"], advice_elapsed_s=advice["elapsed_s"],
                       ratio=wall / advice["budget_s"], within_10_percent=within,
                       structure=advice["structure"], groups=advice["groups"],
                       val_delta_m=advice["val_delta_m"], trials=len(advice["trials"]),
                       warnings=advice["warnings"])
            print(f"{data} {budget}: wall {wall:.0f}s / {advice['budget_s']:.0f}s = "
                  f"{wall / advice['budget_s']:.2f} ({'within' if within else 'OVER'} 10%); "
                  f"{advice['structure']}; load{before.split('average')[-1]} ->"
                  f"{after.split('average')[-1]}", flush=True)
        else:
            row["output_tail"] = text[-2000:]
            print(f"{data} {budget}: exit {code} after {wall:.0f}s\n{text[-2000:]}", flush=True)
        rows.append(row)
        results.write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("advise")
    a.add_argument("--max-rows", type=int, default=4000)
    a.add_argument("--budget", default="4m")
    a.add_argument("--epochs", type=int, default=8)
    a.add_argument("--out", type=Path, default=Path("bench-results/advise"))
    f = sub.add_parser("fit-auto")
    f.add_argument("--rows", type=int, default=2000)
    f.add_argument("--budget", default="", help="default: fit --auto's own (2m)")
    f.add_argument("--epochs", type=int, default=10)
    f.add_argument("--out", type=Path, default=Path("bench-results/fit-auto"))
    c = sub.add_parser("advise-config")  # advise-config: see bench_advise_config
    c.add_argument("--config", type=Path, required=True, help="a suite or experiment YAML")
    c.add_argument("--budget", default="8m")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted key of the experiment config, YAML value (repeatable)")
    c.add_argument("--final", action="store_true",
                   help="run the polytask advise command, its final training in the budget "
                        "(default: the same advice through the API, without that training)")
    c.add_argument("--own-baselines", action="store_true",
                   help="also train the recommended models' baselines at their own settings")
    c.add_argument("--out", type=Path, required=True)
    d = sub.add_parser("fit-default")
    d.add_argument("--rows", type=int, default=2000)
    d.add_argument("--out", type=Path, default=Path("bench-results/fit-default"))
    b = sub.add_parser("budgets")
    b.add_argument("--qm8", nargs="*", default=["2m", "4m", "8m"])
    b.add_argument("--census", nargs="*", default=["2m", "4m"])
    b.add_argument("--rows", type=int, default=2000)
    b.add_argument("--qm8-epochs", type=int, default=5)
    b.add_argument("--max-rows", type=int, default=4000)
    b.add_argument("--census-epochs", type=int, default=8)
    b.add_argument("--out", type=Path, default=Path("bench-results/budgets"))
    args = parser.parse_args()
    if args.what == "advise-config":
        return bench_advise_config(args)
    if args.what == "fit-default":
        return bench_fit_default(args)
    if args.what == "budgets":
        return bench_budgets(args)
    bench_advise(args) if args.what == "advise" else bench_fit_auto(args)


#
# ``advise-config``: ``polytask advise`` on any suite or experiment config, then the recommended
# configuration(s) and the config as given (all-shared, equal weights) trained on several seeds
# with their single-task baselines; test metrics are read only here, after the advice decided.
#
#     python benchmarks/advise.py advise-config --config benchmarks/qm8.yaml --budget 8m \
#         --override training.epochs=8 --out /tmp/adv-qm8
#
# A suite file (``datasets:`` ...) stands for its first (data set, architecture) pair; the split is
# fixed (``data.split_seed``, 0 unless the config sets it, as the advice fixes it): seeds vary the
# initialisation only. Test Δm% per seed is against the single-task baselines of the config as
# given (what the advice compared on validation; one reference for the recommendation and the
# all-shared model alike). ``--own-baselines`` adds Δm% as ``polytask train`` reports each
# recommended model (against baselines trained again with that model's own settings; a one-task
# model counts 0), summed as Σ_g |g| Δm_g / T: the ``advise`` sub-command's figure.


def advise_experiment(path: Path, overrides: list[str], out: Path) -> dict[str, Any]:
    """The experiment mapping advised on: a suite's first pair or the config, then overrides.

    Why a mapping: the overrides reach any dotted key (``training.epochs``,
    ``model.trunk_options.hidden``) before the whole is validated once, by ``parse_config``.
    """
    import yaml

    raw = yaml.safe_load(path.read_text())
    if isinstance(raw, dict) and "datasets" in raw:
        from polytask_bench.suite import load_suite

        suite = load_suite(path)
        if len(suite.datasets) > 1 or len(suite.architectures) > 1:
            print(f"{path}: a suite of {len(suite.datasets)} data set(s) x "
                  f"{len(suite.architectures)} architecture(s); advising on the first pair "
                  f"({suite.datasets[0].display}, {suite.architectures[0].display})")
        config = suite.experiment(suite.datasets[0], suite.architectures[0])
    else:
        config = load_config(path)
    data: dict[str, Any] = config.model_dump(mode="json")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--override expects KEY=VALUE, got {item!r}")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"--override {key}: {part!r} is not a mapping in {path}")
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    # the config as given, as the advice starts from it: equal weights, one seed, a fixed split
    data["balancers"] = [{"name": "equal"}]
    data["seeds"] = [0]
    data["baselines"] = {**data.get("baselines", {}), "stl": True}
    if data["data"].get("split_seed") is None:
        data["data"]["split_seed"] = 0
    data["output_dir"] = str(out / "runs")
    return data


def train_seeds(path: Path, seeds: list[int], out: Path, stl: bool | None = None) -> Any:
    """``polytask train`` of ``path`` on ``seeds``; ``stl``: its baselines setting replaced."""
    config = load_config(path)
    config = config.model_copy(update={"seeds": seeds})
    if stl is not None:
        config = config.model_copy(
            update={"baselines": config.baselines.model_copy(update={"stl": stl})})
    return run_experiment(config, out, log=lambda _: None, report=False, overwrite=True)


def per_seed_metrics(results: list[Any], seeds: list[int]) -> tuple[dict, dict, dict]:
    """Test metrics by seed and task of the multi-task runs and of the baselines, and the
    ``polytask train`` Δm sum (Σ_g |g| Δm_g) by seed."""
    mtl: dict[int, dict[str, dict[str, float]]] = {s: {} for s in seeds}
    stl: dict[int, dict[str, dict[str, float]]] = {s: {} for s in seeds}
    own: dict[int, float] = dict.fromkeys(seeds, 0.0)
    for result in results:
        for r in result.runs:
            target = mtl if r.kind == "mtl" else stl
            for task, metrics in r.test.items():
                if task in target[r.seed]:
                    raise SystemExit(f"task {task!r} has two {r.kind} runs on seed {r.seed}")
                target[r.seed][task] = dict(metrics)
            if r.kind == "mtl" and r.delta_m is not None:
                own[r.seed] += len(r.test) * r.delta_m
    return mtl, stl, own


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else float("nan")}


def bench_advise_config(args: argparse.Namespace) -> None:
    import yaml

    from polytask.config import parse_config
    from polytask.evaluation import delta_m, mean_primary

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    seeds: list[int] = list(args.seeds)
    base_path = out / "base.yaml"
    base_path.write_text(parse_config(advise_experiment(args.config, args.override, out),
                                      str(args.config)).to_yaml())
    print(f"base config (all-shared, equal weights): {base_path}")
    print(f"before: {uptime()}")
    started = time.perf_counter()
    if args.final:  # the command itself, its final training included
        code, wall, text = polytask("advise", str(base_path), "--budget", args.budget,
                                    "--out", str(out / "advice"))
        (out / "advise.log").write_text(text)
        print(text[-4000:])
        if code != 0:
            raise SystemExit(f"polytask advise failed ({code}) on {base_path}; see "
                             f"{out / 'advise.log'}")
    else:  # the same search and decision; the seeds below replace its one final training
        from polytask.auto import advise, parse_budget

        result = advise(base_path, parse_budget(args.budget), out=out / "advice", final=False)
        wall = time.perf_counter() - started
        print(result.format())
    advice = json.loads((out / "advice" / "advice.json").read_text())
    print(f"after advice: {uptime()}")

    base = train_seeds(base_path, seeds, out / "test-shared")
    tasks = base.tasks
    names = [t.name for t in tasks]
    shared_mtl, stl, _ = per_seed_metrics([base], seeds)
    base_dump = yaml.safe_load(base_path.read_text())
    rec_results: list[Any] = []
    reused = ""
    hp = advice["hyper_parameters"]
    base_hp = (hp["balancer"] == "equal" and hp["width"] == 1.0
               and hp["lr"] == base_dump["training"]["lr"]
               and hp["weight_decay"] == base_dump["training"]["weight_decay"])
    if advice["structure"] == "separate" and base_hp:
        reused = "single-task baselines"  # separate models at the config's settings: the STL
    for path in [] if reused else advice["configs"]:
        dump = yaml.safe_load(Path(path).read_text())
        same = all(dump.get(k) == base_dump.get(k) for k in ("data", "model", "training",
                                                             "balancers"))
        if len(advice["configs"]) == 1 and same:
            reused = "config as given"  # the recommendation is the all-shared model: trained above
            rec_results = [base]
            break
        # its own baselines (other settings: trained again) only with --own-baselines
        rec_results.append(train_seeds(Path(path), seeds, out / "test" / Path(path).stem,
                                       stl=None if args.own_baselines else False))
    rec_mtl, _, rec_own = per_seed_metrics(rec_results, seeds)
    if reused == "single-task baselines":
        rec_mtl = stl
    elapsed = time.perf_counter() - started
    print(f"after: {uptime()}")

    for what, table in (("recommendation", rec_mtl), ("all-shared", shared_mtl), ("STL", stl)):
        for s in seeds:
            missing = [n for n in names if n not in table[s]]
            if missing:
                raise SystemExit(f"{what}, seed {s}: no test metrics for task(s) {missing}")
    dm_rec = [delta_m(rec_mtl[s], stl[s], tasks) for s in seeds]
    dm_shared = [delta_m(shared_mtl[s], stl[s], tasks) for s in seeds]
    dm_rec_own = ([rec_own[s] / len(names) for s in seeds]
                  if args.own_baselines or reused else None)
    per_task = {
        t.name: {
            "metric": t.primary,
            "higher_is_better": t.primary_higher_is_better,
            **{what: mean_sd([table[s][t.name][t.primary] for s in seeds])
               for what, table in (("recommended", rec_mtl), ("all_shared", shared_mtl),
                                   ("stl", stl))},
        }
        for t in tasks
    }
    mean_metric = {what: mean_sd([mean_primary(table[s], tasks) for s in seeds])
                   for what, table in (("recommended", rec_mtl), ("all_shared", shared_mtl),
                                       ("stl", stl))}
    summary = {
        "config": str(args.config), "overrides": args.override, "budget": args.budget,
        "seeds": seeds, "split_seed": base_dump["data"].get("split_seed"),
        "epochs": base_dump["training"]["epochs"],
        "budget_s": advice["budget_s"], "advice_elapsed_s": advice["elapsed_s"],
        "advise_wall_s": wall, "total_wall_s": elapsed,
        "structure": advice["structure"], "groups": advice["groups"],
        "hyper_parameters": advice["hyper_parameters"], "notes": advice["notes"],
        "warnings": advice["warnings"],
        "val_delta_m": advice["val_delta_m"], "val_delta_m_std": advice["val_delta_m_std"],
        "val_delta_m_per_seed": advice["val_delta_m_per_seed"],
        "recommendation_reused": reused or None,
        "test_delta_m_recommended": dm_rec,
        "test_delta_m_recommended_own_baselines": dm_rec_own,
        "test_delta_m_all_shared_equal": dm_shared,
        "test_per_task": per_task, "test_mean_primary": mean_metric,
    }
    (out / "advise_config_bench.json").write_text(json.dumps(summary, indent=1))

    def ms(d: dict[str, float], fmt: str = ".4f") -> str:
        return f"{d['mean']:{fmt}} ± {d['std']:{fmt}}"

    print(f"{args.config} ({base_dump['training']['epochs']} epochs, split_seed "
          f"{base_dump['data'].get('split_seed')}, seeds {seeds}); advice wall {wall:.0f}s for "
          f"a {advice['budget_s']:.0f}s budget; whole benchmark {elapsed:.0f}s")
    print(f"recommended: {advice['structure']} {advice['groups']} {hp}")
    val_std = advice["val_delta_m_std"]
    print(f"validation Δm%: {advice['val_delta_m']:+.2f}"
          + ("" if val_std is None else f" ± {val_std:.2f}")
          + f" (seeds {sorted(advice['val_delta_m_per_seed'])})")
    print(f"test Δm% vs the config's STL, per seed {[round(v, 2) for v in dm_rec]}: recommended "
          f"{mean_std(dm_rec)}; all-shared equal {mean_std(dm_shared)} "
          f"(per seed {[round(v, 2) for v in dm_shared]})")
    if reused:
        print(f"the recommendation is the {reused}: not trained again")
    if dm_rec_own is not None:
        print(f"test Δm% as polytask train reports the recommended model(s): "
              f"{mean_std(dm_rec_own)}")
    print(f"{'task':<14} {'metric':<10} {'recommended':>18} {'all-shared':>18} {'STL':>18}")
    for name, row in per_task.items():
        print(f"{name:<14} {row['metric']:<10} {ms(row['recommended']):>18} "
              f"{ms(row['all_shared']):>18} {ms(row['stl']):>18}")
    print(f"{'mean primary':<25} {ms(mean_metric['recommended']):>18} "
          f"{ms(mean_metric['all_shared']):>18} {ms(mean_metric['stl']):>18}"
          "  (signed: higher is better)")


if __name__ == "__main__":
    main()
