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

from polytask.data.batch import Inputs, batch_len, slice_inputs
from polytask.models.features import FeatureSpec, infer_feature_spec
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

    def encode(self, x: Inputs) -> Tensor:
        raise NotImplementedError

    def decode(self, rep: Tensor, x: Inputs) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, x: Inputs) -> dict[str, Tensor]:
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


def infer_out_features(trunk: nn.Module, example_input: Inputs) -> int:
    """Width of the trunk's flattened output, by one forward pass on an example batch."""
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        out = trunk(slice_inputs(example_input, slice(0, 2)))
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
        trunk: any module mapping a batch of inputs (a tensor, or a dict of named tensors) to one
            feature tensor: a vector ``[B, D]``, a feature map ``[B, C, H, W]`` or a token
            sequence ``[B, L, D]`` (:mod:`polytask.models.features`).
        tasks: the tasks; each gets the head that reads the trunk's features for its layout
            (:func:`polytask.models.heads.make_task_head`: linear on vectors, pooled on maps and
            sequences, an upsampling decoder for dense targets on maps).
        out_features: the trunk's output width, for a trunk of vectors that does not declare its
            ``feature_spec``; otherwise read from ``trunk.feature_spec``, ``trunk.out_features``
            or one forward pass on ``example_input``.
        head: the kind of task head (YAML: ``model.options: {head: ...}``):

            * ``"linear"`` (default): each task's own head (above; a task may bring a factory);
            * ``"shared_offset"``: one linear map from the trunk's features to the output, shared
              by all tasks, plus a per-task bias (:class:`TaskOffset`);
            * ``"shared_affine"``: the same shared map, plus a per-task scale and bias.

            The shared kinds are for many small tasks of one quantity (School): they need vector
            features, every task with the same output width and no head factory of its own. The
            shared map is part of :meth:`encode` (it serves every task), so the representation
            handed to :meth:`decode` is the shared prediction and decode stays task-specific only.
    """

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        out_features: int | None = None,
        example_input: Inputs | None = None,
        head: str = "linear",
    ) -> None:
        from polytask.models.heads import check_head_output, make_task_head

        super().__init__()
        if not tasks:
            raise ValueError("a multi-task model needs at least one task")
        if head not in HEAD_KINDS:
            raise ValueError(f"unknown head {head!r}; expected one of {list(HEAD_KINDS)}")
        self.tasks = list(tasks)
        self.trunk = trunk
        self.head_kind = head
        if out_features is not None:
            spec = FeatureSpec("vector", int(out_features))
        else:
            spec = infer_feature_spec(trunk, example_input)
        self.feature_spec = spec
        self.out_features = spec.channels
        self.shared_head: nn.Linear | None = None
        if head == "linear":
            self.heads = nn.ModuleDict({t.name: make_task_head(t, spec) for t in self.tasks})
            if example_input is not None and spec.kind != "vector":
                features = _probe(trunk, example_input)
                spec.check(features, f"trunk {type(trunk).__name__}")
                for t in self.tasks:
                    check_head_output(t, self.heads[t.name], features)
            return
        if spec.kind != "vector":
            raise ValueError(
                f"head {head!r} needs vector features [B, D]; the trunk gives {spec.describe()}"
            )
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

    def encode(self, x: Inputs) -> Tensor:
        rep = self.trunk(x)
        if self.feature_spec.kind == "vector":
            rep = rep.reshape(rep.shape[0], -1)
        return rep if self.shared_head is None else self.shared_head(rep)

    def decode(self, rep: Tensor, x: Inputs) -> dict[str, Tensor]:
        return {name: head(rep) for name, head in self.heads.items()}

    def shared_modules(self) -> list[nn.Module]:
        return [self.trunk] if self.shared_head is None else [self.trunk, self.shared_head]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]]

    def named_heads(self) -> Iterator[tuple[str, nn.Module]]:
        yield from self.heads.items()


@torch.no_grad()
def _probe(trunk: nn.Module, example_input: Inputs) -> Tensor:
    was_training = trunk.training
    trunk.eval()
    try:
        return trunk(slice_inputs(example_input, slice(0, min(2, batch_len(example_input)))))
    finally:
        trunk.train(was_training)
