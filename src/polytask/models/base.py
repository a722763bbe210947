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

__all__ = ["HEAD_KINDS", "HardSharing", "MultiTaskModel", "TaskOffset", "infer_out_features"]

HEAD_KINDS = ("linear", "shared_offset", "shared_affine")


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


class TaskOffset(nn.Module):
    """A task's low-capacity head on a shared prediction: ``scale * shared + bias`` per output.

    Why: with many small tasks (School: 139 schools, ~66 training students each) a full linear head
    per task overfits; sharing the output map and letting each task learn only an offset (a
    per-school intercept, as in a random-intercept model) or an offset and a scale keeps the
    per-task parameters to one or two numbers per output.
    """

    def __init__(self, width: int, scale: bool = False) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width))
        self.scale = nn.Parameter(torch.ones(width)) if scale else None

    def forward(self, shared: Tensor) -> Tensor:
        return (shared if self.scale is None else shared * self.scale) + self.bias


class HardSharing(MultiTaskModel):
    """One shared trunk, one head per task (Caruana 1997): the baseline every method builds on.

    Args:
        trunk: any module mapping a batch of inputs to a batch of features.
        tasks: the tasks; each builds its own head from the trunk's output width.
        out_features: the trunk's output width; read from ``trunk.out_features`` or inferred from
            ``example_input`` when omitted.
        head: the kind of task head (YAML: ``model.options: {head: ...}``):

            * ``"linear"`` (default): each task's own head (:meth:`Task.make_head`, a linear layer
              unless the task brings a factory);
            * ``"shared_offset"``: one linear map from the trunk's features to the output, shared
              by all tasks, plus a per-task bias (:class:`TaskOffset`);
            * ``"shared_affine"``: the same shared map, plus a per-task scale and bias.

            The shared kinds are for many small tasks of one quantity (School): they need every
            task to have the same output width and no head factory of its own. The shared map is
            part of :meth:`encode` (it serves every task), so the representation handed to
            :meth:`decode` is the shared prediction and decode stays task-specific only.
    """

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        out_features: int | None = None,
        example_input: Tensor | None = None,
        head: str = "linear",
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a multi-task model needs at least one task")
        if head not in HEAD_KINDS:
            raise ValueError(f"unknown head {head!r}; expected one of {list(HEAD_KINDS)}")
        self.tasks = list(tasks)
        self.trunk = trunk
        self.head_kind = head
        width = out_features or getattr(trunk, "out_features", None)
        if width is None:
            if example_input is None:
                raise ValueError(
                    "cannot tell the trunk's output width: give out_features, an example_input, or "
                    "a trunk with an `out_features` attribute"
                )
            width = infer_out_features(trunk, example_input)
        self.out_features = int(width)
        self.shared_head: nn.Linear | None = None
        if head == "linear":
            self.heads = nn.ModuleDict({t.name: t.make_head(self.out_features) for t in self.tasks})
            return
        dims = {t.output_dim for t in self.tasks}
        if len(dims) != 1:
            raise ValueError(f"head {head!r} needs one output width for all tasks, got {dims}")
        own = [t.name for t in self.tasks if t.head is not None]
        if own:
            raise ValueError(
                f"head {head!r} replaces the tasks' heads; tasks {own} bring their own"
            )
        dim = dims.pop()
        self.shared_head = nn.Linear(self.out_features, dim)
        scale = head == "shared_affine"
        self.heads = nn.ModuleDict({t.name: TaskOffset(dim, scale=scale) for t in self.tasks})

    def encode(self, x: Tensor) -> Tensor:
        rep = self.trunk(x)
        rep = rep.reshape(rep.shape[0], -1)
        return rep if self.shared_head is None else self.shared_head(rep)

    def decode(self, rep: Tensor, x: Tensor) -> dict[str, Tensor]:
        return {name: head(rep) for name, head in self.heads.items()}

    def shared_modules(self) -> list[nn.Module]:
        return [self.trunk] if self.shared_head is None else [self.trunk, self.shared_head]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]]

    def named_heads(self) -> Iterator[tuple[str, nn.Module]]:
        yield from self.heads.items()
