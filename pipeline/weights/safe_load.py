"""Load a PyTorch checkpoint written by other code (fairseq) without running code from it.

`torch.load(weights_only=True)` refuses released fairseq checkpoints: they pickle fairseq's own classes (the
meters in `extra_state`, sometimes an argparse Namespace and numpy scalars). `weights_only=False` would import
and call whatever the file names. `safe_load` unpickles with an explicit allowlist instead:

  * tensors, storages, dtypes and plain containers (torch's own rebuild functions, OrderedDict, set, ...) and
    numpy scalars/arrays are built for real;
  * any other class is replaced by an inert `Neutralised` object that records its name and state: nothing of it
    is imported or called, and the report names it;
  * a global from the Python standard library outside the allowlist (`os.system`, `builtins.eval`,
    `subprocess.Popen`, `functools.partial`, ...) is what a pickle that runs code needs: the file is refused.

Storages are memory-mapped (`torch.load(mmap=True)`): a 2.5 GB file is not read into memory up front, and the
tensors taken from it are not a second copy until they are converted.
"""
from __future__ import annotations

import _compat_pickle
import collections
import datetime
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserInputError


class Neutralised:
    """An object of a class outside the allowlist, kept as data: `qualname`, constructor `args`, `state`."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<neutralised {self.qualname}>"


class UnsafePickle(pickle.UnpicklingError):
    """The pickle names a standard-library global outside the allowlist: it would run code."""


def _allowlist() -> dict[tuple[str, str], Any]:
    """(module, name) -> the object unpickling may use. torch's storages are resolved by torch.load itself."""
    import builtins
    import codecs

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,  # calling it does not call its factory
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol 2
        ("datetime", "datetime"): datetime.datetime,
        ("datetime", "date"): datetime.date,
        ("datetime", "timedelta"): datetime.timedelta,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    }
    for name in ("set", "frozenset", "slice", "complex", "bytearray", "range", "list", "dict", "tuple", "int",
                 "float", "bool", "str", "bytes"):
        allowed[("builtins", name)] = getattr(builtins, name)
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy"):
        if hasattr(torch._utils, name):
            allowed[("torch._utils", name)] = getattr(torch._utils, name)
    for value in vars(torch).values():  # dtypes are pickled by name: torch.float16, ...
        if isinstance(value, torch.dtype):
            allowed[("torch", str(value).removeprefix("torch."))] = value
    try:
        import numpy as np

        scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
        reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(module, "scalar")] = scalar
            allowed[(module, "_reconstruct")] = reconstruct
        allowed[("numpy", "dtype")] = np.dtype
        allowed[("numpy", "ndarray")] = np.ndarray
        for name in dir(np.dtypes):
            if name.endswith("DType"):
                allowed[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    except ImportError:
        pass
    return allowed


_ALLOWED = _allowlist()
# standard-library classes that old checkpoints carry as plain data (fairseq's `args`): neutralised, not refused
_STDLIB_AS_DATA = {("argparse", "Namespace"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path")}


def _make_unpickler_module(neutralised: set[str]):
    """A pickle-module stand-in for torch.load whose Unpickler resolves globals as the module docstring says.

    The pure-Python unpickler is used because its find_class sees every global (GLOBAL, STACK_GLOBAL, INST,
    extension codes); the pickle stream of a checkpoint is small (the tensor data sits in separate zip records)."""

    class Unpickler(pickle._Unpickler):  # noqa: SLF001 - the overridable pure-Python implementation
        def find_class(self, module: str, name: str) -> Any:
            if self.proto < 3 and self.fix_imports:  # protocol 2 writes Python 2 names: __builtin__, commands, ...
                if (module, name) in _compat_pickle.NAME_MAPPING:
                    module, name = _compat_pickle.NAME_MAPPING[(module, name)]
                module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            if (module, name) in _ALLOWED:
                return _ALLOWED[(module, name)]
            top = module.split(".")[0]
            if top in sys.stdlib_module_names and (module, name) not in _STDLIB_AS_DATA:
                raise UnsafePickle(f"names {module}.{name}, which a checkpoint has no reason to reference "
                                   "(unpickling it would run code)")
            qualname = f"{module}.{name}"
            neutralised.add(qualname)
            return type(name, (Neutralised,), {"qualname": qualname, "__module__": "pipeline.weights.safe_load"})

    class Module:
        pass

    Module.Unpickler = Unpickler
    Module.__name__ = "pipeline.weights.safe_load"
    Module.load = None  # legacy (non-zip) files are refused before torch would call this
    return Module


@dataclass
class Loaded:
    """What `safe_load` returns: the unpickled object and the classes it neutralised (module.name, sorted)."""

    obj: Any
    neutralised: list[str] = field(default_factory=list)


def check_archive(path: Path) -> None:
    """Refuse what is not a torch zip checkpoint (torch >= 1.6), before anything is unpickled: a missing or
    truncated file, a legacy (pre-1.6) pickle, a TorchScript archive (torch.load would hand it to torch.jit.load).
    Raises UserInputError naming the file."""
    if path.is_dir():
        raise UserInputError(f"{path}: a folder, not a checkpoint file; pass the .pt file")
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint not found; pass the path of a downloaded fairseq data2vec 2.0 "
                             "pretraining checkpoint (.pt; fairseq's examples/data2vec README links the released ones)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise UserInputError(f"{path}: not a readable PyTorch checkpoint ({e}); a truncated download, or a file "
                             "saved before PyTorch 1.6 (load and re-save it with torch.save in a trusted "
                             "environment)") from None
    if not any(n.endswith("/data.pkl") for n in names) or any(n.endswith("/constants.pkl") for n in names):
        raise UserInputError(f"{path}: not a PyTorch state checkpoint (no data.pkl, or a TorchScript archive)")


def safe_load(path: Path, mmap: bool = True) -> Loaded:
    """Unpickle the torch zip checkpoint at `path` on the CPU without running code from it (see the module
    docstring). Raises UserInputError for a missing, truncated, legacy or TorchScript file, and for a pickle that
    names code to run."""
    path = Path(path)
    check_archive(path)
    neutralised: set[str] = set()
    try:
        obj = torch.load(path, map_location="cpu", pickle_module=_make_unpickler_module(neutralised),
                         weights_only=False, mmap=mmap)  # safe: every global goes through find_class above
    except UnsafePickle as e:
        raise UserInputError(f"{path}: refused, the pickle {e}; only load files from sources you trust "
                             "with other tools") from None
    except Exception as e:  # noqa: BLE001 - a damaged record, a truncated member, a bad opcode: unusable
        raise UserInputError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e}); the file may be "
                             "truncated: download it again") from None
    return Loaded(obj, sorted(neutralised))
