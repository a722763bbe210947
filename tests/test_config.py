"""Experiment configs: typos and wrong types fail with the key's path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from polytask.config import ConfigError, load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {dataset: multimnist}\ntraining: {epocs: 3}\n")
    with pytest.raises(ConfigError, match=r"training\.epocs: unknown key"):
        load_config(path)


def test_wrong_type_is_named_with_its_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {dataset: multimnist}\ntraining: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"training\.lr"):
        load_config(path)


def test_data_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of 'dataset' or 'table'"):
        load_config(_write(tmp_path, "data: {}\n"))


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid_and_open_with_their_command(example: Path) -> None:
    """Each example opens with the command that runs it and parses with that command's loader."""
    first = example.read_text().splitlines()[0]
    match = re.match(r"# polytask (\w+) .*examples/" + re.escape(example.name), first)
    assert match, f"{example.name} does not open with its command: {first}"
    command = match.group(1)
    if command in ("train", "extend"):  # extend's task file is an experiment config
        load_config(example)
    elif command == "federated":
        from polytask.federated import load_federated_config

        load_federated_config(example)
    elif command == "meta":
        from polytask.lifecycle.meta import load_meta_config

        load_meta_config(example)
    else:
        raise AssertionError(f"{example.name}: no loader known for 'polytask {command}'")


def test_every_config_field_is_described_in_help() -> None:
    """Why: help(TrainingConfig) is where a Python user looks first; each key must say what it
    means there (the docstring's Fields section is built from the descriptions)."""
    import polytask.config as cfg

    classes = [
        cfg.ExperimentConfig, cfg.DataConfig, cfg.SourceConfig, cfg.ModelConfig,
        cfg.BalancerConfig, cfg.SamplingConfig, cfg.TrainingConfig, cfg.BaselineConfig,
    ]
    for cls in classes:
        for name, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{name} has no description"
            assert f"    {name} (" in (cls.__doc__ or ""), f"{cls.__name__}.{name} not in help()"
    assert "lr (default: 0.001): learning rate" in (cfg.TrainingConfig.__doc__ or "")
