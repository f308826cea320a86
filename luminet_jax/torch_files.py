"""Reads PyTorch checkpoint files without torch: tensors come back as NumPy arrays.

Formats (facts from torch/serialization.py, which writes them):

- `torch.save`'s zip format (the default since torch 1.6): a zip archive whose records are
  `<prefix>/data.pkl` (the object, pickle protocol 2, each storage a persistent id
  `("storage", <torch.XStorage>, key, location, numel)`), `<prefix>/data/<key>` (the
  storage's raw bytes) and `<prefix>/byteorder` ("little" or "big"; little if absent).
- the legacy format (torch < 1.6, e.g. checkpoints of 2019): five pickles in a row: the
  magic number 0x1950A86A20F9469CFC6C, the protocol version 1001, a dict of system
  information, the object (persistent ids `("storage", type, key, location, numel,
  view)`), the list of storage keys; then each storage in that order as an int64 element
  count followed by its bytes.
- plain pickles of NumPy arrays (detectron2's model zoo `model_final_*.pkl`, Caffe2's
  `R-50.pkl`): `{"model" or "blobs": {name: ndarray}, ...}`.

Tensors are rebuilt from their storage, offset, shape and strides (a copy, bounds-checked).
Nothing from a file is executed: the unpicklers admit containers, NumPy arrays and torch's
tensor and storage rebuilders; other objects in a torch file (e.g. a training run's
`argparse.Namespace`) load as inert placeholders, and a plain pickle naming anything else is
refused.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
WRAPPER_KEYS = ("model", "state_dict", "blobs")  # mdistiller, other trainers, Caffe2
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
_NUMPY_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_FUNCTIONS = ("_reconstruct", "scalar")


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # noqa: PLC0415  (a jax dependency; only bfloat16 files need it)

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _StorageType:
    """Stands for `torch.XStorage` in a pickle: only its dtype matters here."""

    def __init__(self, name: str):
        self.name, self.dtype = name, _dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage's bytes as a flat array (None until a legacy file's data section is read)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.array = dtype, numel, None


class _Tensor:
    """A tensor to build once its storage holds data: (storage, offset, shape, strides)."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"tensor over a {type(storage).__name__}, not a storage")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)

    def build(self) -> np.ndarray:
        flat = self.storage.array
        if flat is None:
            raise ValueError("a tensor's storage has no data (a truncated file?)")
        if len(self.size) != len(self.stride) or self.offset < 0 or min(self.stride, default=0) < 0:
            raise ValueError(f"bad tensor layout: shape {self.size}, strides {self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype.newbyteorder("="))
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size:  # as_strided does not check: the last element must exist
            raise ValueError(
                f"a tensor of shape {self.size} reads element {last} of a storage of "
                f"{flat.size} (a truncated or corrupt file)"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, dtype=flat.dtype.newbyteorder("="))  # a native, contiguous copy


def _rebuild_tensor(storage, offset, size, stride, *unused):
    del unused  # requires_grad, backward hooks, metadata
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    del unused
    return data


def _rebuild_from_type(func, new_type, args, state):
    del new_type, state  # a tensor subclass (e.g. nn.Parameter): the data is what counts
    return func(*args)


class _Placeholder:
    """An object of a class the file names but that is not loaded (its arguments kept)."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<not loaded: {self.qualname}>"


_TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
}


class _Unpickler(pickle.Unpickler):
    """Admits NumPy arrays and containers; with `torch_storages`, torch's tensors too."""

    def __init__(self, file, *, torch_storages=None, placeholders: bool = False):
        super().__init__(file, encoding="latin1")
        self._storages, self._placeholders = torch_storages, placeholders

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        if module in _NUMPY_MODULES and name in _NUMPY_FUNCTIONS:
            return super().find_class(module, name)
        if self._storages is not None:
            if (module, name) in _TORCH_GLOBALS:
                return _TORCH_GLOBALS[(module, name)]
            # torch.cuda.XStorage: a GPU tensor in an old file (loaded to the host here).
            if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
                return _StorageType(name)
        if self._placeholders:
            return type(name, (_Placeholder,), {"qualname": f"{module}.{name}"})
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint pickle")

    def persistent_load(self, pid):
        if self._storages is None or not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id kind {kind!r}")
        return self._storages(*pid[1:])


def _walk(obj: Any) -> Any:
    """The loaded object with every `_Tensor` built into a NumPy array."""
    if isinstance(obj, _Tensor):
        return obj.build()
    if isinstance(obj, dict):
        out = obj.__class__() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _walk(v)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_walk(v) for v in obj)
    return obj


def _storage_key(storage_type, key) -> tuple[np.dtype, str]:
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
    return storage_type.dtype, key.decode() if isinstance(key, bytes) else str(key)


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(f"{path!r} is a zip archive but not a torch.save file (no data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode().strip()
        storages: dict[str, _Storage] = {}

        def storage(storage_type, key, location, numel, *unused):
            del location, unused
            dtype, key = _storage_key(storage_type, key)
            if key not in storages:
                s = _Storage(dtype, int(numel))
                raw = archive.read(f"{prefix}data/{key}")
                if len(raw) % dtype.itemsize:
                    raise ValueError(f"storage {key} of {path!r} is not whole {dtype} elements")
                s.array = np.frombuffer(
                    raw, dtype if order == "little" else dtype.newbyteorder(">")
                )
                storages[key] = s
            return storages[key]

        with archive.open(pkl[0]) as f:
            obj = _Unpickler(io.BytesIO(f.read()), torch_storages=storage, placeholders=True).load()
    return _walk(obj)


def _read_legacy(f, path: str) -> Any:
    """The legacy format, after its magic number was read from `f`."""
    plain = _Unpickler(f)
    if plain.load() != LEGACY_PROTOCOL:
        raise ValueError(f"{path!r}: unsupported legacy torch.save protocol")
    info = plain.load()
    little = info.get("little_endian", True) if isinstance(info, Mapping) else True
    storages: dict[str, _Storage] = {}

    def storage(storage_type, key, location, numel, view=None, *unused):
        del location, unused
        dtype, key = _storage_key(storage_type, key)
        if view is not None:  # storage views (torch < 0.4) are not written by any torch 1.x
            raise pickle.UnpicklingError(f"{path!r} uses storage views (torch < 0.4)")
        return storages.setdefault(key, _Storage(dtype, int(numel)))

    obj = _Unpickler(f, torch_storages=storage, placeholders=True).load()
    keys = _Unpickler(f).load()
    for key in keys:
        s = storages[key.decode() if isinstance(key, bytes) else str(key)]
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path!r} is truncated (storage {key} missing)")
        (count,) = struct.unpack("<q" if little else ">q", head)
        raw = f.read(count * s.dtype.itemsize)
        if count < 0 or len(raw) < count * s.dtype.itemsize:
            raise ValueError(f"{path!r} is truncated (storage {key} incomplete)")
        s.array = np.frombuffer(raw, s.dtype if little else s.dtype.newbyteorder(">"))
    return _walk(obj)


def read(path: str | os.PathLike) -> Any:
    """The object in a `torch.save` file (zip or legacy) or a plain NumPy pickle.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: not a readable checkpoint (the message says why).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        with open(path, "rb") as f:
            # A legacy torch file starts with a pickled magic number; any other pickle is
            # read whole by this first load (NumPy arrays and containers only).
            first = _Unpickler(f).load()
            if isinstance(first, int) and first == LEGACY_MAGIC:
                return _read_legacy(f, path)
            return first
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, struct.error) as e:
        raise ValueError(f"Cannot read {path!r} as a checkpoint: {type(e).__name__}: {e}") from e
    except ValueError as e:
        if path in str(e):
            raise
        raise ValueError(f"Cannot read {path!r} as a checkpoint: {e}") from e


def read_pickle(path: str | os.PathLike) -> Any:
    """A plain pickle of NumPy arrays and containers (anything else is refused).

    Raises:
      pickle.UnpicklingError: the pickle names a class or function outside NumPy's arrays.
    """
    with open(path, "rb") as f:
        return _Unpickler(io.BytesIO(f.read())).load()


def state_dict_of(obj: Any, *, source: str = "the checkpoint") -> dict[str, np.ndarray]:
    """The `{name: array}` in a loaded checkpoint: itself or its "model"/"state_dict"/"blobs".

    Raises:
      ValueError: neither a state_dict nor a dict holding one.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state_dict.")
    for wrapper in WRAPPER_KEYS:
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    else:
        if not all(isinstance(v, np.ndarray) for v in obj.values()):
            raise ValueError(
                f"{source} is neither a state_dict nor a dict with one of {WRAPPER_KEYS}; "
                f"its keys are {sorted(map(str, obj))[:20]}"
            )
    return {
        str(k): np.asarray(v)
        for k, v in obj.items()
        if not str(k).endswith("_momentum") and isinstance(v, np.ndarray | np.generic)
    }


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`read` then `state_dict_of`: a checkpoint file's weights by name, as NumPy arrays.

    Caffe2 blobs' `*_momentum` entries (optimizer state) are dropped.
    """
    return state_dict_of(read(path), source=repr(os.fspath(path)))


def parameter_count(state_dict: Mapping[str, np.ndarray]) -> int:
    """Numbers in the weights: every entry except BatchNorm statistics (running_mean,
    running_var, num_batches_tracked), as PyTorch counts a model's parameters."""
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return sum(int(v.size) for k, v in state_dict.items() if not k.endswith(stats))
