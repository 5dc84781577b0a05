"""The EMA teacher of data2vec: which parts it copies, the update, and the decay schedule.

fairseq examples/data2vec/models/data2vec2.py (`make_ema_teacher`, `set_num_updates`) and
fairseq/modules/ema_module.py (`EMAModule`). The teacher is a deep copy of some of the student's modules under
the student's own names; it is never registered on the model, so it stays out of `parameters()`, `state_dict()`,
`train()` and DDP, and it is in eval mode for good (no dropout, no layerdrop).

Scope (`cfg.ema_scope`); everything upstream of the copied parts is shared with the student:
  "all"      local encoder + context encoder + blocks   (images: the teacher re-embeds the raw image)
  "encoder"  context encoder + blocks                   (speech: shares the student's CNN and projection)
  "blocks"   main blocks only                           (text: shares the student's embeddings)
"""
from __future__ import annotations

import copy

import torch
from torch import nn

# the copied parts per scope, in the order of the teacher's state dict in checkpoints
EMA_SCOPES = {
    "all": ("blocks", "context_encoder", "local_encoder"),
    "encoder": ("blocks", "context_encoder"),
    "blocks": ("blocks",),
}


def make_teacher(student: nn.Module, scope: str) -> nn.ModuleDict:
    """A frozen eval-mode copy of the student's modules in EMA_SCOPES[scope], keyed by their attribute names."""
    parts = {name: getattr(student, name) for name in EMA_SCOPES[scope]}
    teacher = copy.deepcopy(nn.ModuleDict(parts))
    teacher.requires_grad_(False)
    return teacher.eval()  # eval for good: model.train() does not reach an unregistered module


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """theta_teacher <- decay * theta_teacher + (1 - decay) * theta_student, for the trained parameters.

    Frozen student parameters and all buffers are copied (fairseq EMAModule); decay 0 copies everything.
    The teacher's names are the student's names, so `student.get_parameter(name)` finds each partner.
    """
    teacher_params, student_params = [], []
    for name, t in teacher.named_parameters():
        s = student.get_parameter(name)
        if s.requires_grad and decay > 0:
            teacher_params.append(t)
            student_params.append(s.detach().to(t.dtype))
        else:
            t.copy_(s)
    if teacher_params:
        torch._foreach_lerp_(teacher_params, student_params, 1 - decay)  # t + (1 - decay) * (s - t)
    for name, t in teacher.named_buffers():
        t.copy_(student.get_buffer(name))


def ema_decay_at(update: int, start: float, end: float, anneal_end_step: int) -> float:
    """Linear anneal from `start` to `end` over `anneal_end_step` updates, then constant (fairseq
    `set_num_updates` with `get_annealed_rate`)."""
    if update >= anneal_end_step:
        return end
    return end - (end - start) * (1 - update / anneal_end_step)
