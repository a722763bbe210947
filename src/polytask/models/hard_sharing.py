"""Registration of hard parameter sharing and the built-in trunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from polytask.models.base import HardSharing
from polytask.models.registry import register_architecture, register_trunk
from polytask.models.trunks import MLP, SmallCNN
from polytask.tasks import Task


@register_architecture("hard_sharing", "one shared trunk + one head per task (Caruana 1997)")
def hard_sharing(
    trunk: nn.Module, tasks: Sequence[Task], *, example_input: Tensor | None = None, **options: Any
) -> HardSharing:
    return HardSharing(trunk, tasks, example_input=example_input, **options)


register_trunk("mlp", "fully connected trunk for tables (stages = hidden layers)")(MLP)
register_trunk("small_cnn", "LeNet-style CNN for 1x28x28 images (MultiMNIST)")(SmallCNN)
