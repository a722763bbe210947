"""Compression: the pruning fraction is checked and really applied, int8 is close and smaller,
and the before / after table covers every task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from polytask.cli import app
from polytask.lifecycle import compress_run, load_compressed
from polytask.lifecycle.compress import (
    check_prune_amount,
    make_permanent,
    prunable_layers,
    prune_trunk,
    quantize_int8,
    serialized_bytes,
    trunk_sparsity,
)
from polytask.models import MLP, SmallCNN, create_model
from polytask.tasks import Task

TASKS = [Task("a", "binary"), Task("b", "regression", standardize=False)]
pytestmark = pytest.mark.usefixtures("single_thread")


def mlp_model(arch: str = "hard_sharing", width: int = 40) -> torch.nn.Module:
    torch.manual_seed(0)
    x = torch.randn(4, width)
    options = {"num_experts": 2} if arch == "mmoe" else {}
    return create_model(arch, MLP(width, (64, 32)), TASKS, example_input=x, **options)


@pytest.mark.parametrize("amount", [0, 1, -0.1, 1.5, float("nan"), "half", True])
def test_a_prune_amount_outside_0_1_is_refused_naming_it(amount: object, census_run: Path) -> None:
    with pytest.raises(ValueError, match=rf"prune amount .*{amount!r}"):
        check_prune_amount(amount)
    with pytest.raises(ValueError, match="prune amount"):  # before any data is read
        compress_run(census_run, prune=amount, out=census_run / "never")  # type: ignore[arg-type]
    assert not (census_run / "never").exists()
    cli = CliRunner().invoke(app, ["compress", str(census_run), "--prune", "1.5"])
    assert cli.exit_code == 2 and "prune amount 1.5" in cli.output


@settings(max_examples=15, deadline=None)
@given(amount=st.floats(0.05, 0.95), arch=st.sampled_from(["hard_sharing", "mmoe"]))
def test_unstructured_pruning_zeroes_that_fraction_of_every_trunk_layer(
    amount: float, arch: str
) -> None:
    model = mlp_model(arch)
    heads_before = {n: p.clone() for n, p in model.heads.named_parameters()}
    layers = prune_trunk(model, amount)
    make_permanent(model)
    assert layers  # the trunk's (or every expert's) Linear layers
    for _, module in prunable_layers(model):
        n = module.weight.numel()
        zeros = int((module.weight == 0).sum())
        assert zeros == round(amount * n)  # torch's rounding of the fraction, per layer
        assert not hasattr(module, "weight_mask")  # permanent: plain weights, no masks
    expected = sum(round(amount * m.weight.numel()) for _, m in prunable_layers(model))
    total = sum(m.weight.numel() for _, m in prunable_layers(model))
    assert trunk_sparsity(model) == pytest.approx(expected / total)
    for name, p in model.heads.named_parameters():  # task heads are not the trunk
        assert torch.equal(p, heads_before[name])


def test_structured_pruning_zeroes_whole_output_channels() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28)
    model = create_model("hard_sharing", SmallCNN(channels=(8, 16), out_features=12), TASKS,
                         example_input=x)  # fmt: skip
    prune_trunk(model, 0.5, structured=True)
    make_permanent(model)
    for name, module in prunable_layers(model):
        rows = module.weight.reshape(module.weight.shape[0], -1)
        dead = int((rows == 0).all(dim=1).sum())
        assert dead == round(0.5 * rows.shape[0]), name  # whole channels, half of them
        assert int((rows == 0).sum()) == dead * rows.shape[1]  # and no scattered zeros


def test_pruned_weights_stay_zero_under_training_until_made_permanent() -> None:
    model = mlp_model()
    prune_trunk(model, 0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 40)
    for _ in range(3):
        optimizer.zero_grad()
        out = model(x)
        (out["a"].sum() + out["b"].pow(2).sum()).backward()
        optimizer.step()
    make_permanent(model)
    assert trunk_sparsity(model) == pytest.approx(0.3, abs=1e-3)


@pytest.mark.parametrize("quantizer", ["torchao", "torch"])
def test_int8_output_is_close_to_float_and_smaller_on_disk(quantizer: str) -> None:
    model = mlp_model(width=512).eval()  # large enough for weights to dominate the file
    x = torch.randn(32, 512)
    with torch.no_grad():
        expected = model(x)
    size = serialized_bytes(model)
    description = quantize_int8(model, quantizer)
    assert ("torchao" in description) == (quantizer == "torchao")
    with torch.no_grad():
        got = model(x)
    for task in ("a", "b"):
        scale = float(expected[task].abs().max())
        error = float((got[task] - expected[task]).abs().max())
        assert error <= 0.05 * scale, (task, error, scale)  # int8: about 1 % of the range
        assert error > 0  # it really is quantised
    assert serialized_bytes(model) < 0.35 * size  # int8 weights: about a quarter of float32


def test_unknown_quantizer_and_empty_recipe_are_refused(census_run: Path) -> None:
    with pytest.raises(ValueError, match="unknown quantizer 'fp4'"):
        compress_run(census_run, quantizer="fp4")
    with pytest.raises(ValueError, match="nothing to do"):
        compress_run(census_run, quantize=None)
    with pytest.raises(ValueError, match="give prune"):
        compress_run(census_run, finetune_epochs=2)


def test_compress_a_run_reports_every_task_and_reloads(census_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "compressed"
    result = compress_run(
        census_run, quantize="int8", prune=0.5, finetune_epochs=1, out=out, latency_repeats=3,
        log=lambda message: None,
    )  # fmt: skip
    names = ["income", "marital"]
    for split in ("val", "test"):
        assert list(result.before[split]) == names and list(result.after[split]) == names
        assert set(result.change(split)) == set(names)
    table = result.table()
    rows = [line.split()[0] for line in table.splitlines()[2:4]]
    assert rows == names  # one row per task, val and test columns
    assert "val before" in table and "test after" in table
    assert "model size on disk" in table and "CPU latency per batch" in table
    assert result.size_bytes["after"] == (out / "model.pt").stat().st_size
    assert result.size_bytes["after"] < result.size_bytes["before"]
    report = json.loads((out / "compress.json").read_text())
    assert report["recipe"]["prune"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert report["recipe"]["quantize"]["quantizer"] == "torchao"
    assert report["recipe"]["finetune"]["epochs"] == 1
    assert (out / "finetune" / "checkpoints" / "best.pt").is_file()
    assert set(report["primary_change"]["test"]) == set(names)
    # loadable again: the very model that was measured (same outputs, same metrics)
    model = load_compressed(out)
    width = result.recipe["inputs"]["inputs"][""]["shape"][0]
    x = torch.randn(5, width)
    assert result.model is not None
    with torch.no_grad():
        measured, reloaded = result.model(x), model(x)
    for name in names:
        torch.testing.assert_close(reloaded[name], measured[name], rtol=0, atol=0)
