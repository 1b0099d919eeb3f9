"""Square's skipped queries: an L∞ proposal that changes no pixel, or that a sample already rejected
at its current point, is not sent to the model, and the search is unchanged by it (same points as a
search that asks the model about every proposal)."""
from __future__ import annotations

import torch
from torch import nn

from advlab.attacks import Square
from advlab.attacks.square import RejectedProposals
from test_attacks import batch, batch4d, cnn, digits  # noqa: F401  (module-scoped fixtures)


class _AskEveryProposal(Square):
    """The search before query skipping: the model judges every proposal."""

    def _judge(self, fwd, cand, y, margin, ask):
        return super()._judge(fwd, cand, y, margin, None)


class _CountingSamples(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.samples = model, 0

    def forward(self, x):
        self.samples += x.shape[0]
        return self.model(x)


def test_skipped_queries_leave_the_search_unchanged(cnn, batch4d):
    x, y = batch4d
    with torch.no_grad():
        x, y = x[cnn(x).argmax(1) == y], y[cnn(x).argmax(1) == y]
    ours, every = _CountingSamples(cnn), _CountingSamples(cnn)
    # small ε: most points survive all 400 queries, and late single-pixel proposals repeat
    a = Square(0.03, n_queries=400, seed=5)(ours, x, y)
    b = _AskEveryProposal(0.03, n_queries=400, seed=5)(every, x, y)
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= 0.03 + 1e-6 and 0 <= a.min() and a.max() <= 1
    with torch.no_grad():
        survivors = int((cnn(a).argmax(1) == y).sum())
    assert survivors >= len(y) // 2  # the regime where Square spends its whole budget
    assert every.samples >= survivors * 400  # every query of every survivor is a model query
    assert ours.samples < 0.75 * every.samples, (ours.samples, every.samples)


def test_rejected_proposals_are_forgotten_when_a_sample_moves():
    memo = RejectedProposals(2, 1, 4, 4, "cpu")
    cur = torch.zeros(2, 1, 4, 4)
    cand = cur.clone()
    cand[:, :, 1, 2] = 1.0
    key = ((1, 1), torch.tensor([1, 1]), torch.tensor([2, 2]), torch.tensor([[True], [True]]))
    assert memo.unknown(key, cand, cur).tolist() == [True, True]
    assert memo.unknown(key, cur, cur).tolist() == [False, False]  # changes no pixel
    memo.record(key, torch.tensor([False, True]))  # sample 0 rejects, sample 1 accepts (moves)
    assert memo.unknown(key, cand, cur).tolist() == [False, True]
    other = ((1, 1), torch.tensor([1, 1]), torch.tensor([2, 2]), torch.tensor([[False], [False]]))
    assert memo.unknown(other, cand, cur).tolist() == [True, True]  # the other sign: not tried
    bigger = ((2, 2),) + key[1:]
    assert memo.unknown(bigger, cand, cur).tolist() == [True, True]  # new window size: all forgotten
    memo.record(bigger, torch.tensor([False, False]))
    memo.keep(torch.tensor([False, True]))  # sample 0 breaks: only sample 1's rejections are left
    last = ((2, 2), torch.tensor([1]), torch.tensor([2]), torch.tensor([[True]]))
    assert memo.table.shape[0] == 1 and memo.unknown(last, cand[1:], cur[1:]).tolist() == [False]
