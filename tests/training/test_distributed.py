"""torch.distributed training (gloo, 2 CPU processes): every balancer, every engine mode.

Process start-up (importing torch, torchjd, cvxpy...) costs far more than the training itself, so
ONE pair of worker processes runs every (balancer, engine mode, distributed mode) combination: 3
SGD steps of a tiny hard-sharing MLP on 3 tasks with missing labels, rank ``r`` taking rows
``r*B:(r+1)*B`` of each global batch. The workers are this very file run as a script; the tests
read what they saved and compare it with single-process runs done here, on the global batch:

* both ranks always end with bit-identical parameters (exact and cheap mode);
* exact mode equals the single-process run within 1e-5 (jacobian mode for every method,
  representation mode for every Gramian method);
* the (mode, balancer) combinations the engine refuses under DDP raise ``EngineError``;
* cheap mode: a Gramian method gives the same update in gramian and jacobian engine modes, and
  a direction computed on the representation is never averaged across ranks (it is per sample).

Plus ``polytask train CONFIG --nproc 2`` end to end, checked against a single-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from polytask.balancing import (
    Balancer,
    Combination,
    EngineError,
    GradientEngine,
    Needs,
    StepInfo,
    available,
    create_balancer,
)
from polytask.balancing.engine import Communicator
from polytask.models import create_model, create_trunk
from polytask.tasks import Task

B = 4  # rows per rank
WORLD = 2
STEPS = 3
LR = 0.1
ATOL = 1e-5
WORKER_TIMEOUT_S = 240


# ---------------------------------------------------------------------------------- test balancers
class SumDirection(Balancer):
    """Jacobian balancer returning a direction: the sum of the rows (equal weighting)."""

    family = "gradient"
    needs = Needs(gradients="jacobian")
    reference = "test only"

    def combine(self, step: StepInfo) -> Combination:
        assert step.jacobian is not None
        return Combination(weights=step.present.double(), direction=step.jacobian.sum(dim=0))


class RandomProjection(Balancer):
    """Jacobian balancer returning a direction built with the step's generator (PCGrad-like)."""

    family = "gradient"
    needs = Needs(gradients="jacobian")
    reference = "test only"

    def combine(self, step: StepInfo) -> Combination:
        assert step.jacobian is not None
        rows = step.jacobian.clone()
        order = torch.randperm(rows.shape[0], generator=step.generator)
        for i in order.tolist():
            for j in order.tolist():
                dot = rows[i] @ step.jacobian[j]
                if i != j and dot < 0:
                    rows[i] = rows[i] - dot / step.jacobian[j].square().sum() * step.jacobian[j]
        return Combination(weights=step.present.double(), direction=rows.sum(dim=0))


class InverseNorm(Balancer):
    """Gramian balancer: weights proportional to 1 / ||g_i||, summing to the number of tasks."""

    family = "gradient"
    needs = Needs(gradients="gramian")
    reference = "test only"

    def combine(self, step: StepInfo) -> Combination:
        assert step.gramian is not None
        inv = step.gramian.double().diagonal().clamp(min=1e-12).rsqrt()
        w = inv / inv.sum() * inv.numel()
        full = torch.zeros(self.num_tasks, dtype=torch.float64)
        full[step.present] = w
        return Combination(weights=full)


LOCAL: dict[str, type[Balancer]] = {
    "test:sum_direction": SumDirection,
    "test:random_projection": RandomProjection,
    "test:inverse_norm": InverseNorm,
}
METHODS: list[str] = sorted(available()) + sorted(LOCAL)


def need_of(method: str) -> str:
    if method in LOCAL:
        return LOCAL[method].needs.gradients
    return available()[method].gradients


# ---------------------------------------------------------------------------------- the problem
def make_tasks() -> list[Task]:
    return [
        Task("bin", "binary"),
        Task("cls", "multiclass", num_classes=3),
        Task("reg", "regression"),
    ]


def make_data() -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """STEPS global batches of WORLD*B rows with missing labels chosen to hit every case."""
    g = torch.Generator().manual_seed(123)
    n = WORLD * B
    batches = []
    for step in range(STEPS):
        x = torch.randn(n, 6, generator=g)
        y = {
            "bin": torch.randint(0, 2, (n,), generator=g).float(),
            "cls": torch.randint(0, 3, (n,), generator=g),
            "reg": torch.randn(n, generator=g),
        }
        y["bin"][1] = float("nan")
        if step == 0:  # rank 1 has no regression label: present globally, absent locally
            y["reg"][B:] = float("nan")
            y["cls"][2] = -1
        if step == 1:  # the multiclass task is absent from the whole batch
            y["cls"][:] = -1
            y["bin"][:B] = float("nan")
        if step == 2:  # rank 1 has no label at all
            y["bin"][B:] = float("nan")
            y["cls"][B:] = -1
            y["reg"][B:] = float("nan")
        batches.append((x, y))
    return batches


def make_model_and_balancer(method: str) -> tuple[Any, Balancer]:
    torch.manual_seed(0)
    tasks = make_tasks()
    model = create_model("hard_sharing", create_trunk("mlp", in_features=6, hidden=(8,)), tasks)
    names = [t.name for t in tasks]
    balancer = LOCAL[method](names) if method in LOCAL else create_balancer(method, names)
    return model, balancer


def combos(method: str) -> Iterator[tuple[str, str]]:
    """(engine mode, distributed mode) pairs tried under DDP for ``method``."""
    need = need_of(method)
    yield ("jacobian", "exact")
    yield ("jacobian", "cheap")
    yield ("gramian", "exact")  # refused for every gradient method
    yield ("representation", "exact")  # refused for loss-based and Jacobian methods
    if need != "none":
        yield ("gramian", "cheap")  # refused for Jacobian methods (whatever the distribution)
        yield ("representation", "cheap")


def source_of(method: str) -> str:
    if method in LOCAL:
        return LOCAL[method].needs.source
    return available()[method].source


def expected_refusal(method: str, mode: str, dist_mode: str) -> bool:
    need = need_of(method)
    if mode == "representation" and need == "none":
        return True
    if mode == "gramian" and need == "jacobian":
        return True
    if dist_mode == "exact" and need != "none" and source_of(method) == "mode":
        # (a representation-Gramian method sums the ranks' Gramians exactly in every mode)
        return mode == "gramian" or (mode == "representation" and need == "jacobian")
    return False


def train(
    method: str,
    mode: str,
    dist_mode: str,
    comm: Communicator,
    batches: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> dict[str, Any]:
    """3 SGD steps; the final parameters and balancer state, or why there are none."""
    model, balancer = make_model_and_balancer(method)
    try:
        engine = GradientEngine(
            model, make_tasks(), balancer, mode=mode, communicator=comm, dist_mode=dist_mode,
            seed=7,
        )  # fmt: skip
    except EngineError as err:
        return {"status": "refused", "message": str(err)}
    params = [p for p in model.parameters() if p.requires_grad]
    params += [p for p in balancer.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR)
    weights = []
    try:
        for step, (x, y) in enumerate(batches):
            lo, hi = comm.rank * B, (comm.rank + 1) * B
            if comm.world_size == 1:
                lo, hi = 0, x.shape[0]
            xs, ys = x[lo:hi], {k: v[lo:hi] for k, v in y.items()}
            optimizer.zero_grad(set_to_none=True)
            out = engine.backward(xs, ys, step, 0)
            if out is None:
                continue
            optimizer.step()
            engine.after_step(xs, ys)
            weights.append(out.weights.detach().double().cpu())
    except Exception as err:  # recorded: both ranks must fail alike (and like one process)
        return {"status": "error", "message": f"{type(err).__name__}: {err}"}
    return {
        "status": "ok",
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "balancer": {
            k: v.detach().clone() for k, v in balancer.state_dict().items() if torch.is_tensor(v)
        },
        "weights": torch.stack(weights),
    }


# ---------------------------------------------------------------------------------- the worker
def worker(rank: int, out_dir: Path) -> None:
    from polytask.training.distributed import init_from_env

    torch.set_num_threads(1)
    comm = init_from_env("gloo")
    assert comm.world_size == WORLD and comm.rank == rank
    batches = make_data()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    model, _ = make_model_and_balancer("equal")
    results["init"] = {k: v.clone() for k, v in model.state_dict().items()}
    for method in METHODS:
        started = time.perf_counter()
        for mode, dist_mode in combos(method):
            results[f"{method}|{mode}|{dist_mode}"] = train(method, mode, dist_mode, comm, batches)
        timings[method] = time.perf_counter() - started
    results["timings"] = timings
    torch.save(results, out_dir / f"rank{rank}.pt")
    import torch.distributed as dist

    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """Run the two workers once; each rank's saved results."""
    out_dir = tmp_path_factory.mktemp("ddp")
    port = _free_port()
    procs = []
    started = time.perf_counter()
    for rank in range(WORLD):
        env = dict(os.environ)
        env.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
            WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
        )  # fmt: skip
        cmd = [sys.executable, __file__, str(rank), str(out_dir)]
        pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        procs.append(subprocess.Popen(cmd, env=env, **pipe))  # type: ignore[call-overload]
    logs = []
    try:
        for p in procs:
            stdout, _ = p.communicate(timeout=WORKER_TIMEOUT_S)
            logs.append(stdout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if any(codes):
        pytest.fail(f"DDP workers exited with {codes}:\n" + "\n----\n".join(logs))
    results = {r: torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)}
    results[0]["wall_s"] = time.perf_counter() - started
    return results


@pytest.fixture(scope="module")
def single() -> dict[str, dict[str, Any]]:
    """Single-process runs on the global batch, for the exact-mode comparisons."""
    batches = make_data()
    out = {}
    for method in METHODS:
        need = need_of(method)
        modes = ["jacobian"] + (["representation"] if need == "gramian" else [])
        modes += ["gramian"] if need == "gramian" else []
        for mode in modes:
            out[f"{method}|{mode}"] = train(method, mode, "exact", Communicator(), batches)
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(
        ((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel()),
        default=0.0,
    )


# ---------------------------------------------------------------------------------- the tests
def test_every_rank_initialises_the_same_model(ddp: dict[int, dict[str, Any]]) -> None:
    model, _ = make_model_and_balancer("equal")
    for rank in range(WORLD):
        assert _max_diff(ddp[rank]["init"], model.state_dict()) == 0.0


def test_engine_rejects_ranks_with_different_models() -> None:
    class FakeRank1(Communicator):
        """Rank 1 of 2 whose peer (rank 0) holds other values: sums add the peer's values."""

        rank, world_size = 1, 2

        def sum(self, t: torch.Tensor) -> torch.Tensor:
            return t + 0.5  # rank 0 contributed something non-zero

    model, balancer = make_model_and_balancer("equal")
    with pytest.raises(EngineError, match="same seed"):
        GradientEngine(model, make_tasks(), balancer, communicator=FakeRank1())


@pytest.mark.parametrize("method", METHODS)
def test_refused_combinations_raise_engine_error(
    ddp: dict[int, dict[str, Any]], method: str
) -> None:
    for mode, dist_mode in combos(method):
        for rank in range(WORLD):
            res = ddp[rank][f"{method}|{mode}|{dist_mode}"]
            refused = res["status"] == "refused"
            assert refused == expected_refusal(method, mode, dist_mode), (
                method, mode, dist_mode, res.get("message"),
            )  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_ranks_end_with_identical_parameters(ddp: dict[int, dict[str, Any]], method: str) -> None:
    ran = 0
    for mode, dist_mode in combos(method):
        key = f"{method}|{mode}|{dist_mode}"
        r0, r1 = ddp[0][key], ddp[1][key]
        assert r0["status"] == r1["status"], (key, r0.get("message"), r1.get("message"))
        if r0["status"] != "ok":
            continue
        ran += 1
        for name, value in r0["model"].items():
            assert torch.equal(value, r1["model"][name]), (key, name)
        assert torch.equal(r0["weights"], r1["weights"]), key
        if dist_mode == "exact":  # same inputs everywhere: the balancers' states agree too
            for name, value in r0["balancer"].items():
                other = r1["balancer"][name]
                assert torch.allclose(value, other, rtol=0, atol=0, equal_nan=True), (key, name)
    assert ran >= 2, f"{method}: {[ddp[0][f'{method}|{m}|{d}'] for m, d in combos(method)]}"


@pytest.mark.parametrize("method", METHODS)
def test_exact_mode_equals_single_process_on_the_global_batch(
    ddp: dict[int, dict[str, Any]], single: dict[str, dict[str, Any]], method: str
) -> None:
    modes = ["jacobian"] + (["representation"] if need_of(method) == "gramian" else [])
    for mode in modes:
        dist_res, ref = ddp[0][f"{method}|{mode}|exact"], single[f"{method}|{mode}"]
        assert dist_res["status"] == ref["status"], (
            mode,
            dist_res.get("message"),
            ref.get("message"),
        )
        if ref["status"] != "ok":
            continue
        diff = _max_diff(dist_res["model"], ref["model"])
        assert diff <= ATOL, f"{method} ({mode}): max |DDP - single| = {diff:.2e}"
        diff_b = _max_diff(dist_res["balancer"], ref["balancer"]) if ref["balancer"] else 0.0
        assert not diff_b > ATOL, f"{method} ({mode}) balancer state differs by {diff_b:.2e}"
        assert torch.allclose(dist_res["weights"], ref["weights"], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize(
    "method", [*[m for m in METHODS if need_of(m) == "gramian"][:1], "test:inverse_norm", "mgda_ub"]
)
def test_representation_mode_exact_equals_single_process(
    ddp: dict[int, dict[str, Any]], single: dict[str, dict[str, Any]], method: str
) -> None:
    if method not in METHODS:
        pytest.skip(f"{method} is not registered")
    dist_res = ddp[0][f"{method}|representation|exact"]
    ref = single[f"{method}|representation"]
    assert dist_res["status"] == ref["status"] == "ok", (
        dist_res.get("message"),
        ref.get("message"),
    )
    assert _max_diff(dist_res["model"], ref["model"]) <= ATOL
    on_parameters = single[f"{method}|jacobian"]["model"]
    if source_of(method) == "representation":
        # MGDA-UB takes its weights from the representation in every mode: the same update
        assert _max_diff(ref["model"], on_parameters) <= ATOL
        for mode in ("jacobian", "gramian"):
            exact = ddp[0][f"{method}|{mode}|exact"]
            assert exact["status"] == "ok", exact.get("message")
            assert _max_diff(exact["model"], ref["model"]) <= ATOL, mode
    else:
        # the representation-level update really differs from the parameter-level one
        assert _max_diff(ref["model"], on_parameters) > 1e-4


@pytest.mark.parametrize("method", [m for m in METHODS if need_of(m) == "gramian"])
def test_cheap_mode_gramian_and_jacobian_engines_agree(
    ddp: dict[int, dict[str, Any]], method: str
) -> None:
    """Both see each rank's own Gramian (never the sum of the ranks' Gramians)."""
    a, b = ddp[0][f"{method}|gramian|cheap"], ddp[0][f"{method}|jacobian|cheap"]
    assert a["status"] == b["status"], (a.get("message"), b.get("message"))
    if a["status"] == "ok":
        assert _max_diff(a["model"], b["model"]) <= ATOL


def test_cheap_mode_representation_direction_is_not_averaged_across_ranks(
    ddp: dict[int, dict[str, Any]],
) -> None:
    """Equal weighting three ways under cheap DDP: the same mean of the ranks' local gradients."""
    equal = ddp[0]["equal|jacobian|cheap"]["model"]
    on_params = ddp[0]["test:sum_direction|jacobian|cheap"]["model"]
    on_representation = ddp[0]["test:sum_direction|representation|cheap"]["model"]
    assert _max_diff(equal, on_params) <= ATOL
    assert _max_diff(equal, on_representation) <= ATOL


def test_report_timings(ddp: dict[int, dict[str, Any]]) -> None:
    timings = ddp[0]["timings"]
    slowest = sorted(timings.items(), key=lambda kv: -kv[1])[:5]
    print(f"\nDDP workers: {ddp[0]['wall_s']:.1f} s wall; slowest methods: {slowest}")
    assert set(timings) == set(METHODS)


# ---------------------------------------------------------------------------------- end to end
def _write_table(path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    n = 200
    x = torch.randn(n, 4, generator=g)
    lines = ["f0,f1,f2,f3,y_bin,y_reg"]
    for i in range(n):
        yb = "" if i % 7 == 0 else str(int(x[i, 0] + 0.3 * x[i, 1] > 0))
        yr = "" if i % 5 == 0 else f"{float(x[i, 2] - x[i, 3]):.5f}"
        lines.append(",".join(f"{float(v):.5f}" for v in x[i]) + f",{yb},{yr}")
    path.write_text("\n".join(lines) + "\n")


def _config(table: Path, batch_size: int, stl: bool) -> dict[str, Any]:
    return {
        "name": "ddp",
        "data": {"table": str(table), "targets": ["y_bin", "y_reg"],
                 "kinds": {"y_bin": "binary", "y_reg": "regression"}},
        "model": {"trunk": "mlp", "trunk_options": {"hidden": [8]}},
        "balancers": [{"name": "equal"}, {"name": "uncertainty"}],
        "training": {"epochs": 2, "batch_size": batch_size, "lr": 0.01, "device": "cpu",
                     "progress": False, "tensorboard": False},
        "baselines": {"stl": stl},
        "seeds": [0],
    }  # fmt: skip


@pytest.mark.slow
def test_cli_train_with_two_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from typer.testing import CliRunner

    from polytask.cli import app
    from polytask.config import parse_config
    from polytask.experiment import run_experiment

    table = tmp_path / "table.csv"
    _write_table(table)
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(_config(table, batch_size=16, stl=True)))
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    scratch_before = set(Path(tempfile.gettempdir()).glob("polytask-rank*"))
    out = tmp_path / "out"
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["train", str(config_path), "--nproc", "2", "--out", str(out)])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert {r["label"] for r in summary["rows"]} == {
        "stl:y_bin",
        "stl:y_reg",
        "equal",
        "uncertainty",
    }
    for run in ("equal-seed0", "uncertainty-seed0"):
        results = json.loads((out / run / "results.json").read_text())
        assert results["epochs"] == 2 and results["delta_m"] is not None
        assert (out / run / "checkpoints" / "last.pt").exists()
    assert (out / "report.html").exists()
    assert set(Path(tempfile.gettempdir()).glob("polytask-rank*")) == scratch_before  # cleaned up
    assert len(list((tmp_path / "cache" / "stl").iterdir())) == 2  # written once, by rank 0
    # exact DDP with batch_size 16 per rank == one process with batch size 32 (160 training rows)
    reference = run_experiment(
        parse_config(_config(table, batch_size=32, stl=False)),
        tmp_path / "single",
        log=lambda m: None,
    )
    for run in ("equal-seed0", "uncertainty-seed0"):
        ddp_state = torch.load(out / run / "checkpoints" / "last.pt", weights_only=False)["model"]
        ref_state = torch.load(
            reference.out_dir / run / "checkpoints" / "last.pt", weights_only=False
        )
        assert _max_diff(ddp_state, ref_state["model"]) <= ATOL, run
    print(f"\npolytask train --nproc 2: {elapsed:.1f} s")


if __name__ == "__main__":  # a DDP worker: python test_distributed.py RANK OUT_DIR
    worker(int(sys.argv[1]), Path(sys.argv[2]))
