"""safe_load: fairseq's own classes become inert placeholders; a pickle that would run code is refused; files that
are not torch zip checkpoints are refused before anything is unpickled."""
import argparse
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from pipeline.errors import UserInputError
from pipeline.weights.safe_load import Neutralised, safe_load


class RunsCode:
    """What a malicious checkpoint holds: unpickling it would call the function __reduce__ names."""

    def __init__(self, target, marker):
        self.target, self.marker = target, marker

    def __reduce__(self):
        return (self.target, (["touch", str(self.marker)],) if self.target is subprocess.call else (f"touch {self.marker}",))


def test_weights_data_and_numpy_load_and_unknown_classes_become_placeholders(tmp_path, monkeypatch):
    vendor = types.ModuleType("vendor_meters")  # exists while the file is written, not when it is read

    class Meter:
        pass

    Meter.__module__, Meter.__qualname__ = "vendor_meters", "Meter"
    vendor.Meter = Meter
    monkeypatch.setitem(sys.modules, "vendor_meters", vendor)
    meter = Meter()
    meter.total = 3
    torch.save({"w": torch.arange(4.0).half(), "args": argparse.Namespace(lr=0.1), "n": np.float64(2.5),
                "meters": {"loss": meter}}, tmp_path / "a.pt")
    monkeypatch.delitem(sys.modules, "vendor_meters")
    loaded = safe_load(tmp_path / "a.pt")
    assert torch.equal(loaded.obj["w"], torch.arange(4.0).half()) and loaded.obj["n"] == 2.5
    assert loaded.neutralised == ["argparse.Namespace", "vendor_meters.Meter"] and "vendor_meters" not in sys.modules
    placeholder = loaded.obj["meters"]["loss"]
    assert isinstance(placeholder, Neutralised) and placeholder.state == {"total": 3}


@pytest.mark.parametrize("target", [os.system, subprocess.call, eval])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, target):
    marker = tmp_path / "ran"
    torch.save({"model": {}, "extra_state": RunsCode(target, marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserInputError, match="refused, the pickle names"):
        safe_load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_legacy_and_torchscript_files_are_refused(tmp_path):
    torch.save({"w": torch.zeros(1000)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save({"w": torch.zeros(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "script.pt")
    for name, message in (("cut.pt", "truncated"), ("legacy.pt", "before PyTorch 1.6"), ("script.pt", "TorchScript"),
                          ("missing.pt", "not found")):
        with pytest.raises(UserInputError, match=message):
            safe_load(tmp_path / name)
