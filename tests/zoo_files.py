"""Published-teacher files for the tests, made without torch, and a local HTTP server.

- `torch_save(path, obj)`: torch.save's zip format (or `legacy=True`: the pre-1.6 format),
  written from NumPy arrays (formats as torch/serialization.py writes them;
  tests/torch_files_test.py loads these files with torch.load where torch is installed).
  A `View` is a tensor over a shared pool, as torch saves views of one storage: the
  architectures below keep their real keys and shapes with files of a few MB.
- `state_dict(name, num_classes)`: random weights of a zoo model in its PyTorch reference's
  keys and shapes (from the Flax model through `torch_convert.torch_key`), with
  `num_batches_tracked`, positive BatchNorm variances and small weights (finite logits).
- `Server`: files by URL path on 127.0.0.1 (HTTP/1.0, Range requests), with a request log,
  a cut-off (headers promise the whole file, the body stops early) and a gate (the body
  stops halfway until the test opens it).
"""

from __future__ import annotations

import collections
import http.server
import io
import pickle
import re
import struct
import threading
import zipfile

import numpy as np

_STORAGES = {
    "float32": "FloatStorage",
    "float64": "DoubleStorage",
    "float16": "HalfStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}


class View:
    """A tensor of `shape` reading `pool` (1-D) contiguously from `offset`."""

    def __init__(self, pool: np.ndarray, offset: int, shape: tuple[int, ...]):
        self.pool, self.offset, self.shape = pool, offset, tuple(shape)

    def numpy(self) -> np.ndarray:
        n = int(np.prod(self.shape))
        return self.pool[self.offset : self.offset + n].reshape(self.shape)


class _Global:
    """Pickled as the global `module.name` (callable only to satisfy pickle's check)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):
        raise NotImplementedError


class _Pickler(pickle._Pickler):  # the Python pickler: `save` can write a GLOBAL by name
    def __init__(self, file, storages: list, legacy: bool, cuda: bool):
        super().__init__(file, protocol=2)
        self.storages, self.legacy, self.cuda, self.keys = storages, legacy, cuda, {}

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):  # without importing torch
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def _storage(self, flat: np.ndarray) -> tuple:
        if id(flat) not in self.keys:
            self.keys[id(flat)] = str(len(self.storages))
            self.storages.append(flat)
        module, location = ("torch.cuda", "cuda:0") if self.cuda else ("torch", "cpu")
        pid = ("storage", _Global(module, _STORAGES[flat.dtype.name]), self.keys[id(flat)])
        return (*pid, location, flat.size, *((None,) if self.legacy else ()))

    def persistent_id(self, obj):
        return self._storage(obj.flat_array) if isinstance(obj, _StorageRef) else None

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray | np.generic | View):
            view = (
                obj
                if isinstance(obj, View)
                else View(np.ravel(np.asarray(obj)).copy(), 0, np.shape(obj))
            )
            strides = tuple(int(np.prod(view.shape[i + 1 :])) for i in range(len(view.shape)))
            args = (
                _StorageRef(view.pool),
                view.offset,
                view.shape,
                strides,
                False,
                collections.OrderedDict(),
            )
            return _Global("torch._utils", "_rebuild_tensor_v2"), args
        return NotImplemented


class _StorageRef:
    def __init__(self, flat: np.ndarray):
        self.flat_array = flat


def torch_bytes(obj, *, legacy: bool = False, cuda: bool = False) -> bytes:
    """`obj` (containers of NumPy arrays / `View`s / plain values) as torch.save writes it;
    `cuda`: as old torch wrote GPU tensors (`torch.cuda.FloatStorage`, location cuda:0)."""
    storages: list[np.ndarray] = []
    body = io.BytesIO()
    _Pickler(body, storages, legacy, cuda).dump(obj)
    out = io.BytesIO()
    if legacy:
        for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}):  # fmt: skip
            pickle.dump(head, out, protocol=2)
        out.write(body.getvalue())
        pickle.dump([str(i) for i in range(len(storages))], out, protocol=2)
        for flat in storages:
            out.write(
                struct.pack("<q", flat.size) + flat.astype(flat.dtype.newbyteorder("<")).tobytes()
            )
        return out.getvalue()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", body.getvalue())
        archive.writestr("archive/byteorder", "little")
        for i, flat in enumerate(storages):
            archive.writestr(f"archive/data/{i}", flat.tobytes())
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


def torch_save(path, obj, *, legacy: bool = False) -> None:
    with open(path, "wb") as f:
        f.write(torch_bytes(obj, legacy=legacy))


def state_dict(name: str, num_classes: int, seed: int = 0) -> dict[str, View | np.ndarray]:
    """Random weights of model `name` under its PyTorch reference's keys and shapes."""
    import jax  # noqa: PLC0415

    from luminet_jax.models import torch_convert  # noqa: PLC0415

    abstract = torch_convert.abstract_variables(name, num_classes=num_classes)
    leaves = []
    for collection in ("params", "batch_stats"):
        for key_path, spec in jax.tree_util.tree_flatten_with_path(abstract.get(collection, {}))[0]:
            path = tuple(str(k.key) for k in key_path)
            shape = tuple(spec.shape)
            if path[-1] == "kernel" and len(shape) >= 3:  # HWIO -> OIHW
                shape = (shape[-1], shape[-2], *shape[:-2])
            elif path[-1] == "kernel" and len(shape) == 2:
                shape = shape[::-1]
            leaves.append((torch_convert.torch_key(collection, path), shape))

    def largest(var: bool) -> int:
        sizes = [int(np.prod(s)) for k, s in leaves if k.endswith("running_var") == var]
        return max(sizes, default=1)

    rng = np.random.default_rng(seed)
    pools = {  # weights small enough for finite logits; BatchNorm variances positive
        False: rng.normal(0, 0.05, largest(False) + 4096).astype(np.float32),
        True: rng.uniform(0.5, 1.5, 2 * largest(True)).astype(np.float32),
    }
    out: dict = {}
    for key, shape in leaves:
        pool = pools[key.endswith("running_var")]
        n = int(np.prod(shape))
        out[key] = View(pool, int(rng.integers(0, pool.size - n + 1)), shape)
        if key.endswith("running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.asarray(240, np.int64)
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        data = server.files.get(self.path)
        start, ranged = 0, self.headers.get("Range")
        if ranged:
            start = int(re.fullmatch(r"bytes=(\d+)-", ranged)[1])
        with server.lock:
            server.log.append((self.path, ranged))
        if data is None:
            self.send_error(404)
            return
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Length", str(len(data) - start))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body = data[start:]
        cut = server.cut.pop(self.path, None)
        gate = server.gates.get(self.path)
        if gate is not None:  # half now, the rest once the test opens the gate
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            gate.wait(timeout=300)
            body = body[len(body) // 2 :]
        self.wfile.write(body if cut is None else body[: max(0, cut - start)])

    def log_message(self, *args):
        pass


class Server:
    """`with Server(files) as s:` serves `files` ({url path: bytes}) at `s.url`."""

    def __init__(self, files: dict[str, bytes]):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.files, self.httpd.log, self.httpd.lock = dict(files), [], threading.Lock()
        self.httpd.cut, self.httpd.gates = {}, {}
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Server:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        for gate in self.httpd.gates.values():
            gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def files(self) -> dict[str, bytes]:
        return self.httpd.files

    @property
    def log(self) -> list[tuple[str, str | None]]:
        """(path, Range header) of each request so far."""
        with self.httpd.lock:
            return list(self.httpd.log)

    def cut_once(self, path: str, nbytes: int) -> None:
        """The next response for `path` stops after byte `nbytes` of the file."""
        self.httpd.cut[path] = nbytes

    def gate(self, path: str) -> threading.Event:
        """Responses for `path` stop halfway until the returned event is set."""
        return self.httpd.gates.setdefault(path, threading.Event())
