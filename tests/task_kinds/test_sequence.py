"""Token labels must align with the tokens; padding positions count for nothing.

Why both the data and the loss check: the data sees the token ids, so it can name the sample and
the padding position a label sits on; the loss sees any trunk's output, so it catches a trunk whose
positions are not the ids' (the built-in transformer prepends a CLS token).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from polytask.data.base import DataError, MultiTaskData
from polytask.data.batch import BatchError, MultiTaskCollate
from polytask.data.loader import DatasetData
from polytask.models import create_model, create_trunk
from polytask.task_kinds import LabelError
from polytask.task_kinds.sequence import token_alignment_problem
from polytask.tasks import Task


def _tags(**options: object) -> Task:
    return Task("tags", "token_classification", num_classes=3, options=options or None)


IDS = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])  # pad id 0 at the end
LABELS = torch.tensor([[0, 2, 1, -1, -1], [1, 1, -1, -1, -1]])


def test_aligned_labels_pass_and_padding_is_ignored_by_loss_and_metrics() -> None:
    task = _tags()
    assert token_alignment_problem(task, IDS, LABELS) is None
    torch.manual_seed(0)
    out = torch.randn(2, 5, 3)
    per, count = task.sample_losses(out, LABELS)
    assert count == 5  # labelled tokens only
    changed = out.clone()
    changed[0, 3:] = 100.0  # outputs at padded positions change...
    changed[1, 2:] = -100.0
    assert torch.equal(task.sample_losses(changed, LABELS)[0], per)  # ...the loss does not
    metrics = task.make_metrics()
    assert task.update_metrics(metrics, changed, LABELS) == 5
    expected = (changed.argmax(-1)[LABELS != -1] == LABELS[LABELS != -1]).float().mean()
    assert float(metrics.compute()["accuracy"]) == pytest.approx(float(expected))


def test_a_label_on_a_padding_position_names_the_task_sample_and_position() -> None:
    labels = LABELS.clone()
    labels[1, 3] = 2  # the second sample has 2 tokens but a label at position 3
    problem = token_alignment_problem(_tags(), IDS, labels, rows=[40, 41])
    assert problem is not None
    assert "task 'tags'" in problem and "sample 41" in problem and "position 3" in problem
    assert "2 real tokens" in problem
    assert token_alignment_problem(_tags(pad_id=None), IDS, labels) is None  # check turned off


def test_labels_of_another_length_name_both_lengths() -> None:
    problem = token_alignment_problem(_tags(), IDS, LABELS[:, :4], rows=[7, 8])
    assert problem is not None and "sample 7 has 4 labels for 5 token ids" in problem


class _Tokens(Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.ids[i], {"tags": self.labels[i]}


def test_collate_and_in_memory_validation_refuse_misaligned_items() -> None:
    labels = LABELS.clone()
    labels[0, 4] = 1
    with pytest.raises(BatchError, match=r"task 'tags'.*sample 1 has label 1 at position 4"):
        MultiTaskCollate([_tags()])([(IDS[0], {"tags": labels[0]})], [1])
    with pytest.raises(DataError, match=r"data: task 'tags'.*sample 0 has label 1 at position 4"):
        DatasetData(_Tokens(IDS, labels), [_tags()], name="data").validate("train")
    with pytest.raises(DataError, match=r"task 'tags'.*sample 0 has label 1 at position 4"):
        MultiTaskData(IDS, {"tags": labels}, [_tags()]).validate("train")
    assert len(MultiTaskData(IDS, {"tags": LABELS}, [_tags()]).validate("train")) == 2


def test_loss_names_the_sample_and_both_lengths_and_the_cls_position() -> None:
    task = _tags()
    labels = torch.full((2, 6), -1)
    labels[1, 5] = 2  # only sample 1 has a label the output cannot hold
    with pytest.raises(LabelError, match=r"sample 1 has 6 label positions but .* 5 token positions"):
        task.sample_losses(torch.zeros(2, 5, 3), labels)
    # the built-in transformer prepends a CLS token: L + 1 positions, and the message says so
    trunk = create_trunk("transformer", vocab_size=10, width=8, depth=1, heads=2, max_len=5)
    model = create_model("hard_sharing", trunk, [task], example_input=IDS)
    out = model(IDS)["tags"]
    assert out.shape == (2, 6, 3)
    with pytest.raises(LabelError, match=r"one position more .* CLS at position 0.*leading ignore_index"):
        task.sample_losses(out, LABELS)
    shifted = torch.cat([torch.full((2, 1), -1), LABELS], dim=1)  # the documented remedy
    per, count = task.sample_losses(out, shifted)
    assert count == 5 and torch.isfinite(per).all()
