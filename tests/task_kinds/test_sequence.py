"""Token labels must align with the tokens; padding positions count for nothing.

Why both the data and the loss check: the data sees the token ids, so it can name the sample and
the padding position a label sits on; the loss sees any trunk's output, so it catches a trunk whose
positions are not the ids' (a task's own head on a trunk that prepends a CLS position). The
built-in transformer's CLS is skipped by the token head: labels are one per token id.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from polytask import MultiTaskLearner
from polytask.data.base import DataError, MultiTaskData
from polytask.data.batch import BatchError, MultiTaskCollate
from polytask.data.loader import DatasetData
from polytask.data.tokens import SmilesTokenizer, smiles_tokens
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


def test_loss_names_the_sample_and_both_lengths() -> None:
    task = _tags()
    labels = torch.full((2, 6), -1)
    labels[1, 5] = 2  # only sample 1 has a label the output cannot hold
    # one label more than the output: the message also says what a leading CLS label was for
    with pytest.raises(
        LabelError, match=r"sample 1 has 6 label positions but .* 5 token positions.*must drop it"
    ):
        task.sample_losses(torch.zeros(2, 5, 3), labels)
    # one output position more than the labels: a head that did not skip a CLS position
    with pytest.raises(LabelError, match=r"4 label positions .* 5 token positions.*summary_positions"):
        task.sample_losses(torch.zeros(2, 5, 3), LABELS[:, :4])


def _transformer(max_len: int = 5) -> torch.nn.Module:
    return create_trunk("transformer", vocab_size=10, width=8, depth=1, heads=2, max_len=max_len)


def test_the_transformer_gives_token_tasks_one_position_per_token() -> None:
    task = _tags()
    torch.manual_seed(0)
    trunk = _transformer()
    model = create_model("hard_sharing", trunk, [task], example_input=IDS).eval()
    assert trunk(IDS).shape == (2, 6, 8)  # the trunk keeps its CLS position (pooled tasks read it)
    with torch.no_grad():
        out = model(IDS)["tags"]
    assert out.shape == (2, 5, 3)  # the token head skips it: one position per token id
    per, count = task.sample_losses(out, LABELS)  # the labels as written for the tokens
    assert count == 5 and torch.isfinite(per).all()
    shifted = torch.cat([torch.full((2, 1), -1), LABELS], dim=1)  # the old leading CLS label
    with pytest.raises(LabelError, match=r"sample 0 has 6 label positions but .* 5 token"):
        task.sample_losses(out, shifted)


def test_labels_with_a_leading_cls_label_name_task_sample_and_both_lengths() -> None:
    task = _tags()
    shifted = torch.cat([torch.full((2, 1), -1), LABELS], dim=1)
    problem = token_alignment_problem(task, IDS, shifted, rows=[40, 41])
    assert problem is not None
    assert "task 'tags'" in problem and "sample 40 has 6 labels for 5 token ids" in problem
    assert "CLS" in problem and "drop it" in problem
    with pytest.raises(DataError, match=r"task 'tags'.*sample 0 has 6 labels for 5 token ids"):
        MultiTaskData(IDS, {"tags": shifted}, [task]).validate("train")
    # labels one shorter than the ids are misaligned too, but no CLS is blamed for it
    short = token_alignment_problem(task, IDS, LABELS[:, :4], rows=[7, 8])
    assert short is not None and "CLS" not in short


# Atom tags of real SMILES: 0 an aliphatic atom, 1 an aromatic atom, 2 a ring-closure label,
# 3 a bond or branch; bracket atoms and padding unlabelled (-1).
def _atom_tag(token: str) -> int:
    if token.startswith("["):
        return -1
    if token in ("Cl", "Br") or token in "BCNOPSFI":
        return 0
    if token in "bcnops":
        return 1
    return 2 if token[0].isdigit() or token.startswith("%") else 3


TOX21 = Path(os.environ.get("POLYTASK_DATA", "")) / "moleculenet" / "tox21.csv"


@pytest.mark.skipif(not TOX21.is_file(), reason=f"{TOX21} not found (set POLYTASK_DATA)")
def test_smiles_atom_tags_of_length_l_train_on_the_transformer(tmp_path: Path) -> None:
    """Labels ``[N, L]`` for ids ``[N, L]``, as tokenised: no padding trick, and they learn."""
    smiles = pd.read_csv(TOX21, usecols=["smiles"], nrows=200)["smiles"].tolist()
    length = 32
    tokenizer = SmilesTokenizer(max_len=length).fit(smiles)
    with pytest.warns(UserWarning, match="truncated"):
        ids = tokenizer.encode(smiles)
    labels = torch.full(ids.shape, -1, dtype=torch.long)
    for i, s in enumerate(smiles):
        tags = [_atom_tag(t) for t in smiles_tokens(s)[:length]]
        labels[i, : len(tags)] = torch.tensor(tags)
    assert labels.shape == ids.shape
    task = Task("atoms", "token_classification", num_classes=4)
    learner = MultiTaskLearner(
        [task], trunk="transformer", epochs=3, batch_size=32, lr=3e-3, baselines=False,
        device="cpu", out_dir=tmp_path, seed=0,
        trunk_options={"vocab_size": tokenizer.vocab_size, "width": 32, "depth": 1, "heads": 4,
                       "max_len": length},
    ).fit(ids.numpy(), {"atoms": labels.numpy()})
    labelled = labels[labels >= 0]
    majority = float(torch.bincount(labelled).max()) / len(labelled)
    accuracy = learner.results_["test"]["atoms"]["accuracy"]
    assert accuracy > majority + 0.2, (accuracy, majority)  # learned from each token, not the prior
    predicted = learner.predict(ids[:4].numpy())["atoms"]
    assert predicted.shape == (4, length)  # one prediction per token id
