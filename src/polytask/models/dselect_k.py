"""DSelect-k: a differentiable, sparse gate for mixtures of experts (Hazimeh et al., NeurIPS 2021).

The model is MMoE (:mod:`polytask.models.mmoe`: same experts, same gate input, same
``encode``/``decode`` split) with each task's softmax gate replaced by a DSelect-k gate.

A gate holds ``k`` *single-expert selectors*. Selector ``i`` maps the gate input to ``m`` logits
``z_i`` (``m = ⌈log2 n⌉`` for ``n`` experts); the smooth-step function

    S(t) = 0 for t <= -γ/2,   1 for t >= γ/2,   -2t³/γ³ + 3t/(2γ) + 1/2 in between

turns them into soft bits, and the probability of binary code ``l`` is
``r_i(l) = Π_j (S(z_ij) if bit j of l is 1 else 1 - S(z_ij))``: a distribution over the ``2^m``
codes that becomes exactly one-hot once every ``z_ij`` leaves ``(-γ/2, γ/2)``, at which point the
selector picks one expert and the gradient through it vanishes (the paper's sparsity mechanism).
The gate's output is ``Σ_i softmax(w)_i · r_i``: at most ``k`` experts are active once the
selectors have converged. Here ``z`` and ``w`` are linear functions of the gate input
(the paper's per-example gate); the paper's static variant is not implemented.

Choices not fixed by the paper:

* ``n`` not a power of two: code ``l`` selects expert ``l mod n``, so every code is a real expert,
  the gate weights always sum to one and a selector can never converge onto a missing expert
  (renormalising over the first ``n`` codes would give ``0/0`` there). For ``n = 2^m`` this is
  exactly the paper's gate.
* The selector logits start near zero (small initial weights, zero bias), i.e. in the middle of the
  smooth step where every expert is equally likely; with a default initialisation, large inputs
  would saturate the step from the first batch and the gate would never train.
* The entropy regulariser ``λ Σ_i H(r_i)`` that pushes selectors to a single code is computed when
  ``entropy_reg > 0`` and returned by :meth:`DSelectK.auxiliary_loss` (batch mean, summed over
  selectors and averaged over tasks). It is **not yet wired into the training loop**: the
  :class:`~polytask.balancing.engine.GradientEngine` only backpropagates the task losses, so a
  caller who wants it must add its gradient to the gates' parameters. With the default
  ``entropy_reg=0`` nothing is kept.

``gate_weights()`` returns, per task, the batch-mean gate over the ``n`` experts (sums to one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from polytask.data.batch import Inputs
from polytask.models.mmoe import GateInputKind, MMoE
from polytask.models.registry import register_architecture
from polytask.tasks import Task

__all__ = ["DSelectGate", "DSelectK", "smooth_step"]


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """Cubic smooth step: 0 below ``-γ/2``, 1 above ``γ/2``, C¹ in between."""
    half = gamma / 2
    t = t.clamp(-half, half)
    return -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5


class _SelectorLinear(nn.Linear):
    """Selector logits; initialised near zero, the middle of the smooth step (uniform codes)."""

    def __init__(self, in_features: int, out_features: int, gamma: float) -> None:
        self.gamma = gamma
        super().__init__(in_features, out_features)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.1 * self.gamma / math.sqrt(self.in_features))
        nn.init.zeros_(self.bias)


class DSelectGate(nn.Module):
    """One task's DSelect-k gate: ``k`` binary-encoded selectors mixed by softmax weights."""

    def __init__(self, in_features: int, num_experts: int, k: int, gamma: float) -> None:
        super().__init__()
        if num_experts < 2:
            raise ValueError(f"DSelect-k needs at least 2 experts, got {num_experts}")
        if k < 1:
            raise ValueError(f"DSelect-k needs k >= 1 selectors, got {k}")
        if not gamma > 0:
            raise ValueError(f"DSelect-k needs gamma > 0, got {gamma}")
        self.num_experts = num_experts
        self.k = k
        self.gamma = float(gamma)
        self.bits = max(1, math.ceil(math.log2(num_experts)))
        codes = torch.tensor(
            [[(code >> j) & 1 for j in range(self.bits)] for code in range(2**self.bits)],
            dtype=torch.float32,
        )
        fold = torch.zeros(2**self.bits, num_experts)
        fold[torch.arange(2**self.bits), torch.arange(2**self.bits) % num_experts] = 1.0
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("fold", fold, persistent=False)
        self.selectors = _SelectorLinear(in_features, k * self.bits, self.gamma)
        self.mixer = nn.Linear(in_features, k)

    def code_probabilities(self, h: Tensor) -> Tensor:
        """``[B, k, 2^m]``: each selector's distribution over binary codes."""
        z = self.selectors(h).reshape(h.shape[0], self.k, self.bits)
        s = smooth_step(z, self.gamma).unsqueeze(2)  # [B, k, 1, m]
        codes = self.codes.to(s.dtype)
        per_bit = codes * s + (1 - codes) * (1 - s)  # [B, k, 2^m, m]
        return per_bit.prod(dim=-1)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Gate weights ``[B, n]`` (rows sum to one) and the code probabilities ``[B, k, 2^m]``."""
        probs = self.code_probabilities(h)
        per_expert = probs @ self.fold.to(probs.dtype)  # [B, k, n]
        alpha = torch.softmax(self.mixer(h), dim=-1)  # [B, k]
        return torch.einsum("bk,bkn->bn", alpha, per_expert), probs


class DSelectK(MMoE):
    """MMoE with DSelect-k gates (Hazimeh et al. 2021); see the module docstring.

    Args (beyond :class:`~polytask.models.mmoe.MMoE`'s):
        k: selectors per gate (at most ``k`` experts per task once converged).
        gamma: width of the smooth step's transition.
        entropy_reg: weight ``λ`` of the entropy regulariser (see :meth:`auxiliary_loss`).
    """

    arch_name = "dselect_k"

    def __init__(
        self,
        trunk: nn.Module,
        tasks: Sequence[Task],
        *,
        num_experts: int = 4,
        k: int = 2,
        gamma: float = 1.0,
        entropy_reg: float = 0.0,
        gate_input: GateInputKind | nn.Module = "auto",
        gate_stages: int = 1,
        reinit_experts: bool = True,
        example_input: Inputs | None = None,
    ) -> None:
        if entropy_reg < 0:
            raise ValueError(f"dselect_k: entropy_reg must be >= 0, got {entropy_reg}")
        self.k = int(k)
        self.gamma = float(gamma)
        self.entropy_reg = float(entropy_reg)
        super().__init__(
            trunk,
            tasks,
            num_experts=num_experts,
            gate_input=gate_input,
            gate_stages=gate_stages,
            reinit_experts=reinit_experts,
            example_input=example_input,
        )
        self._entropy: dict[str, Tensor] = {}

    def _make_gate(self, in_features: int) -> nn.Module:
        return DSelectGate(in_features, self.num_experts, self.k, self.gamma)

    def _gate(self, task: str, gate_in: Tensor) -> Tensor:
        weights, probs = self.gates[task](gate_in)
        if self.entropy_reg > 0:
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)  # [B, k]
            self._entropy[task] = entropy.sum(dim=1).mean()
        return weights

    def auxiliary_loss(self) -> Tensor:
        """``λ ·`` mean over tasks of the selectors' entropy in the last forward (with its graph).

        Zero when ``entropy_reg == 0`` or before any forward. Not added by the training loop yet.
        """
        if not self._entropy:
            return torch.zeros(())
        total = torch.stack(list(self._entropy.values())).mean()
        return self.entropy_reg * total


@register_architecture(
    "dselect_k",
    "mixture of experts with differentiable top-k selection gates (Hazimeh et al. 2021)",
)
def dselect_k(
    trunk: nn.Module, tasks: Sequence[Task], *, example_input: Inputs | None = None, **options: object
) -> DSelectK:
    return DSelectK(trunk, tasks, example_input=example_input, **options)  # type: ignore[arg-type]
