"""The multi-task model contract, and hard parameter sharing.

A multi-task model is split in two halves so that the gradient engine can work at either level:

* ``encode(x)`` computes the *shared representation*: everything whose parameters serve several
  tasks happens here;
* ``decode(rep, x)`` maps the representation to one output per task, using task-specific
  parameters only (it also receives ``x`` so that a gate may read the input).

``forward(x) = decode(encode(x), x)``. The balancers that work on gradients of the representation
(MGDA-UB style) rely on that split: a model for which it does not hold (Cross-stitch, MTAN: tasks
exchange features inside the trunk) sets ``supports_representation_grad = False`` and the engine
refuses the combination with an error instead of silently updating only part of the network.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from polytask.tasks import Task

__all__ = ["HardSharing", "MultiTaskModel", "infer_out_features"]


class MultiTaskModel(nn.Module):
    """Base class of every architecture: ``encode`` / ``decode`` plus parameter ownership.

    Subclasses set ``self.tasks`` (ordered) and implement ``encode``, ``decode``,
    ``shared_modules`` and ``task_modules``. Parameter lists are derived from the modules, so there
    is one source of truth for which parameter belongs to whom.
    """

    supports_representation_grad: bool = True
    tasks: list[Task]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, rep: Tensor, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x), x)

    def shared_modules(self) -> list[nn.Module]:
        """Modules whose parameters serve several tasks; none is a child of another."""
        raise NotImplementedError

    def task_modules(self, task: str) -> list[nn.Module]:
        """Modules whose parameters serve ``task`` only."""
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.shared_modules() for p in m.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for m in self.task_modules(task) for p in m.parameters() if p.requires_grad]

    def check_ownership(self) -> None:
        """Every trainable parameter is shared or belongs to exactly one task."""
        owner: dict[int, str] = {id(p): "shared" for p in self.shared_parameters()}
        for name in self.task_names:
            for p in self.task_parameters(name):
                if id(p) in owner:
                    raise ValueError(
                        f"{type(self).__name__}: a parameter is claimed by both {owner[id(p)]!r} "
                        f"and task {name!r}"
                    )
                owner[id(p)] = name
        for pname, p in self.named_parameters():
            if p.requires_grad and id(p) not in owner:
                raise ValueError(
                    f"{type(self).__name__}: parameter {pname!r} is neither shared nor owned by a "
                    "task; the engine would never update it"
                )

    def gate_weights(self) -> dict[str, Tensor] | None:
        """Mixture models return, per task, the batch-mean gate weight of each expert."""
        return None


def infer_out_features(trunk: nn.Module, example_input: Tensor) -> int:
    """Width of the trunk's flattened output, by one forward pass on an example batch."""
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        out = trunk(example_input[:2])
    trunk.train(was_training)
    return int(out.reshape(out.shape[0], -1).shape[1])


class HardSharing(MultiTaskModel):
    """One shared trunk, one head per task (Caruana 1997): the baseline every method builds on.

    Args:
        trunk: any module mapping a batch of inputs to a batch of features.
        tasks: the tasks; each builds its own head from the trunk's output width.
        out_features: the trunk's output width; read from ``trunk.out_features`` or inferred from
            ``example_input`` when omitted.
    """

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        out_features: int | None = None,
        example_input: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a multi-task model needs at least one task")
        self.tasks = list(tasks)
        self.trunk = trunk
        width = out_features or getattr(trunk, "out_features", None)
        if width is None:
            if example_input is None:
                raise ValueError(
                    "cannot tell the trunk's output width: give out_features, an example_input, or "
                    "a trunk with an `out_features` attribute"
                )
            width = infer_out_features(trunk, example_input)
        self.out_features = int(width)
        self.heads = nn.ModuleDict({t.name: t.make_head(self.out_features) for t in self.tasks})

    def encode(self, x: Tensor) -> Tensor:
        rep = self.trunk(x)
        return rep.reshape(rep.shape[0], -1)

    def decode(self, rep: Tensor, x: Tensor) -> dict[str, Tensor]:
        return {name: head(rep) for name, head in self.heads.items()}

    def shared_modules(self) -> list[nn.Module]:
        return [self.trunk]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]]

    def named_heads(self) -> Iterator[tuple[str, nn.Module]]:
        yield from self.heads.items()
