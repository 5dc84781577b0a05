"""Checkpoint compatibility: every tiny (modality, method) model keeps the state-dict keys, order, shapes and dtypes
of its student and its EMA teacher that state_dict_keys.json recorded from the code at commit ee9ca60.

A renamed key or a changed shape would stop released checkpoints from loading; a changed order would misassign a
resumed optimizer's per-parameter state (torch optimizers index it by position in `model.parameters()`).
To record a new fixture after a deliberate change, run this file as a script and say why in the commit.
"""
import json
from pathlib import Path

import pytest
import torch

from model.build import build_model
from model.presets import get_config

FIXTURE = Path(__file__).with_name("state_dict_keys.json")
PAIRS = json.loads(FIXTURE.read_text())  # "modality/method" -> {"student": {key: [shape, dtype]}, "teacher": ...}


def _entries(state_dict: dict[str, torch.Tensor] | None) -> list | None:
    if state_dict is None:
        return None
    return [[key, [list(v.shape), str(v.dtype).removeprefix("torch.")]] for key, v in state_dict.items()]


def state_dict_shapes(modality: str, method: str) -> dict[str, list | None]:
    """[key, [shape, dtype]] in state-dict order for the student and the teacher (None without one)."""
    with torch.device("meta"):  # shapes only: no memory, no init
        model = build_model(get_config(modality, "tiny", method))
    teacher = None if model.teacher is None else model.teacher.state_dict()
    return {"student": _entries(model.state_dict()), "teacher": _entries(teacher)}


def _fixture_entries(recorded: dict | None) -> list | None:
    return None if recorded is None else [[key, value] for key, value in recorded.items()]


@pytest.mark.parametrize("pair", list(PAIRS))
def test_state_dict_keys_and_shapes_are_unchanged(pair):
    modality, method = pair.split("/")
    now = state_dict_shapes(modality, method)
    for part in ("student", "teacher"):
        assert now[part] == _fixture_entries(PAIRS[pair][part]), f"{pair} {part}"


def _dump(pairs: dict) -> str:
    """The fixture's layout: one state-dict key per line, so a diff shows what changed."""
    lines = []
    for pair, parts in pairs.items():
        body = []
        for part, entries in parts.items():
            if entries is None:
                body.append(f'  "{part}": null')
            else:
                rows = ",\n".join(f"   {json.dumps(key)}: {json.dumps(value)}" for key, value in entries)
                body.append(f'  "{part}": {{\n{rows}\n  }}')
        lines.append(f' "{pair}": {{\n' + ",\n".join(body) + "\n }")
    return "{\n" + ",\n".join(lines) + "\n}\n"


if __name__ == "__main__":
    FIXTURE.write_text(_dump({pair: state_dict_shapes(*pair.split("/")) for pair in PAIRS}))
