"""Gumbel-softmax product quantizer of wav2vec 2.0 (fairseq `GumbelVectorQuantizer`) and its diversity loss.

A frame's features (C) are projected to G x V logits; each of the G groups picks one of its V codebook entries
(Gumbel-softmax with a straight-through hard choice while training, argmax in eval); the codevector is the
concatenation of the G chosen entries, (G * vq_dim / G) = vq_dim.

Differences from fairseq, none of which changes the computation:
  * the temperature is a buffer, `temp`, so it is saved in the state dict and a resumed run continues with
    the annealed value; fairseq keeps it as a Python float that the trainer resets through set_num_updates.
  * the Gumbel-softmax is written out (F.gumbel_softmax takes a Python float temperature; a tensor one avoids
    a device sync). It is the same hard straight-through estimator.
  * perplexities skip rows with weight 0 (padding); fairseq averages over every row it is given.
  * the chosen entries are gathered by a batched matmul instead of a (rows, G*V, width) product and sum.
"""
from __future__ import annotations

import torch
from torch import nn


def perplexity(probs: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over groups of exp(entropy of the average distribution): probs (N, G, V), weight (N,) -> 0-dim.

    G * V when every entry of every group is used equally often, G when each group always picks one entry.
    """
    if weight is None:
        avg = probs.mean(0)
    else:
        w = weight.to(probs.dtype)[:, None, None]
        avg = (probs * w).sum(0) / w.sum().clamp_min(1)
    return torch.exp(-torch.sum(avg * torch.log(avg + 1e-7), dim=-1)).sum()


def one_hot_argmax(x: torch.Tensor) -> torch.Tensor:
    """One-hot of the argmax over the last dim, in x's dtype (scatter rather than F.one_hot, which checks the
    index values and so cannot run on the meta device)."""
    return torch.zeros_like(x).scatter_(-1, x.argmax(-1, keepdim=True), 1.0)


def diversity_loss(prob_perplexity: torch.Tensor, num_vars: int) -> torch.Tensor:
    """(G*V - perplexity) / (G*V): 0 when the softmax probabilities average to uniform codebook use."""
    return (num_vars - prob_perplexity) / num_vars


class GumbelVectorQuantizer(nn.Module):
    def __init__(self, dim: int, num_vars: int, groups: int, vq_dim: int, temp: tuple[float, float, float]):
        super().__init__()
        if vq_dim % groups:
            raise ValueError(f"codevector width {vq_dim} must be divisible by the {groups} groups")
        self.groups, self.num_vars = groups, num_vars
        self.max_temp, self.min_temp, self.temp_decay = temp
        # codebook: G * V entries of width vq_dim / G, uniform init (fairseq)
        self.vars = nn.Parameter(torch.empty(1, groups * num_vars, vq_dim // groups).uniform_())
        self.weight_proj = nn.Linear(dim, groups * num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0, std=1)
        nn.init.zeros_(self.weight_proj.bias)
        self.register_buffer("temp", torch.tensor(float(self.max_temp)))

    def set_num_updates(self, num_updates: int) -> float:
        """Anneal: temp = max(max_temp * decay^updates, min_temp). Returns the new temperature."""
        temp = max(self.max_temp * self.temp_decay**num_updates, self.min_temp)
        self.temp.fill_(temp)
        return temp

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, N, C) -> codevectors (B, N, vq_dim), perplexities over the rows with weight (B, N) > 0."""
        B, N, _ = x.shape
        logits = self.weight_proj(x).float().reshape(B * N, self.groups, self.num_vars)  # (BN, G, V)
        w = None if weight is None else weight.reshape(-1)
        hard = one_hot_argmax(logits)  # (BN, G, V)
        out = {
            "code_perplexity": perplexity(hard, w).detach(),  # of the hard choices, for logging
            "prob_perplexity": perplexity(logits.softmax(-1), w),  # of the soft probabilities: the diversity loss
        }
        if self.training:
            # hard Gumbel-softmax: forward uses the one-hot choice, backward the soft sample's gradient
            gumbels = -torch.empty_like(logits).exponential_().log()
            soft = ((logits + gumbels) / self.temp).softmax(-1)
            onehot = one_hot_argmax(soft) - soft.detach() + soft
        else:
            onehot = hard
        # pick one entry per group: (BN, G, V) x (G, V, vq_dim / G) -> (BN, G, vq_dim / G) -> (B, N, vq_dim).
        # fairseq multiplies and sums a (BN, G*V, vq_dim / G) tensor; a batched matmul gives the same values
        # and gradients without it.
        codebook = self.vars.view(self.groups, self.num_vars, -1)
        q = torch.einsum("ngv,gvd->ngd", onehot, codebook.to(onehot.dtype))
        out["x"] = q.reshape(B, N, -1).to(x.dtype)
        return out
