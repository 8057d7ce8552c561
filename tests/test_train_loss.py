"""The training loss as megatron's schedule sees it, and the soft-mask bit turned into loss weights."""
import torch

from nucleotron.data_prep import tokens as tk
from nucleotron.train.data import SoftMaskedDataset
from nucleotron.train.loss import token_loss


def test_weighted_loss_is_the_weighted_mean_and_the_report_stays_plain():
    torch.manual_seed(0)
    losses = torch.rand(2, 16, requires_grad=True)
    labels = torch.randint(5, 9, (2, 16))
    labels[0, 3] = tk.EOD
    weights = torch.ones(2, 16)
    weights[:, :5] = 0.1
    weights[1, -1] = 0.0                                     # a padded target
    total, count, sums = token_loss(losses, labels, weights, tk.EOD)
    counted = weights > 0
    assert int(count) == int(counted.sum())
    # megatron divides by count: the gradient follows sum(w * l) / sum(w)
    assert torch.allclose(total / count, (losses * weights).sum() / weights.sum())
    loss_sum, tokens, base_sum, bases = sums.tolist()
    assert tokens == counted.sum() and abs(loss_sum - losses[counted].sum().item()) < 1e-5
    base = counted & (labels != tk.EOD)
    assert bases == base.sum() and abs(base_sum - losses[base].sum().item()) < 1e-5
    plain_total, _, _ = token_loss(losses, labels, counted.float(), tk.EOD)
    assert torch.equal(plain_total, (losses * counted).sum())   # 0/1 masks: exactly the plain sum


class _Items(torch.utils.data.Dataset):
    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self):
        return 1

    def __getitem__(self, idx):
        return {"tokens": self.tokens[:-1].clone(), "labels": self.tokens[1:].clone(),
                "loss_mask": torch.ones(len(self.tokens) - 1), "position_ids": torch.arange(len(self.tokens) - 1)}


def test_soft_mask_bit_is_stripped_and_weights_the_masked_targets():
    bit = tk.SOFT_MASK_BIT
    ids = torch.tensor([tk.A, tk.C | bit, tk.G | bit, tk.N | bit, tk.T, tk.EOD, tk.A | bit])
    item = SoftMaskedDataset(_Items(ids), bit, 0.25)[0]
    assert item["tokens"].tolist() == [tk.A, tk.C, tk.G, tk.N, tk.T, tk.EOD]
    assert item["labels"].tolist() == [tk.C, tk.G, tk.N, tk.T, tk.EOD, tk.A]
    assert item["loss_mask"].tolist() == [0.25, 0.25, 0.25, 1.0, 1.0, 0.25]
    assert len(SoftMaskedDataset(_Items(ids), bit, 0.25)) == 1
    assert SoftMaskedDataset(_Items(ids), bit, 1.0)[0]["loss_mask"].tolist() == [1.0] * 6
