"""What the command-line entry points share: config names, quiet logs, one-line errors.

Shipped configs (the repository's `configs/*.py`, installed as `luminet_jax/configs/`) are
reachable by name: `--config cifar100_res32x4_res8x4:method=luminet`. A path to a config
file works as before. Known bad inputs end a command with one line and a hint, not a
traceback; `--verbosity=1` or LUMINET_TRACEBACK=1 shows the traceback.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import pathlib
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, NoReturn

from absl import flags
from absl import logging as absl_logging

_PACKAGE = pathlib.Path(__file__).resolve().parent
# Config files that are not configs (no get_config).
_NOT_CONFIGS = ("__init__", "common")
TRACEBACK_ENV = "LUMINET_TRACEBACK"
# Exceptions the library raises for bad input (their messages say what to change).
KNOWN_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError)


# ---------------------------------------------------------------------------------------
# Config names


def config_dir() -> pathlib.Path:
    """The shipped configs: luminet_jax/configs when installed, else the checkout's configs/."""
    installed = _PACKAGE / "configs"
    return installed if installed.is_dir() else _PACKAGE.parent / "configs"


def config_names() -> list[str]:
    """Names of the shipped configs (file stems)."""
    return sorted(p.stem for p in config_dir().glob("*.py") if p.stem not in _NOT_CONFIGS)


def resolve_config(value: str) -> str:
    """`NAME[:ARG]` or `PATH[:ARG]` -> `PATH[:ARG]` of an existing config file.

    An existing path wins. Otherwise a bare name (`quickstart`, `quickstart.py`) or the
    repository form `configs/NAME.py` names a shipped config, so README commands also work
    from an installed package in any directory.

    Raises:
      ValueError: neither a file nor a shipped name (the message lists the names).
    """
    path, sep, arg = value.partition(":")
    if os.path.exists(path):
        return value
    parts = pathlib.PurePath(path).parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "configs"):
        name = parts[-1].removesuffix(".py")
        if name in config_names():
            return f"{config_dir() / (name + '.py')}{sep}{arg}"
    raise ValueError(
        f"No config file {path!r} and no shipped config of that name; shipped configs: "
        f"{', '.join(config_names())} (or give the path of your own config file)."
    )


class _ConfigNameParser(flags.ArgumentParser):
    """Wraps ml_collections' config-file parser: takes shipped names, raises short errors."""

    def __init__(self, inner: flags.ArgumentParser):
        self._inner = inner

    def parse(self, argument):
        resolved = resolve_config(argument)
        try:
            return self._inner.parse(resolved)
        except (TypeError, ValueError) as e:
            # ml_collections puts the whole traceback into the message; keep the cause.
            cause = e.__context__ if e.__context__ is not None else e
            raise ValueError(f"{type(cause).__name__}: {one_line(cause)}") from None

    def flag_type(self):
        return self._inner.flag_type()


def accept_config_names(holder: flags.FlagHolder, flag_values: flags.FlagValues = flags.FLAGS):
    """Lets a `config_flags.DEFINE_config_file` flag take shipped config names."""
    flag = flag_values[holder.name]
    flag.parser = _ConfigNameParser(flag.parser)


def load_config_module(name: str) -> ModuleType:
    """Imports a shipped config file (e.g. "quickstart") as a module, without sys.path."""
    path = resolve_config(name)
    spec = importlib.util.spec_from_file_location(f"luminet_jax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------
# Logs

# Warnings of the libraries that need no action (orbax's registry on import; the teacher
# load reads a training checkpoint's "default" item through the metadata it needs; an
# unreadable checkpoint, which our own error then names).
_NOISE = (
    "Type handler registry type",
    'Item "default" was found in the checkpoint, but could not be restored',
    "Metadata file does not exist:",
    "Failed to get item metadata from directory",
    "Future exception was never retrieved",  # asyncio's, for the reads of a failed restore
    "Task exception was never retrieved",
)
_PROBE_LOGGERS = ("jax._src.xla_bridge",)  # "Unable to initialize backend 'tpu'" lines


def _drop_noise(record: logging.LogRecord) -> bool:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = str(record.msg)
    if any(message.startswith(noise) for noise in _NOISE):
        return False
    if record.levelno >= logging.WARNING:
        return True
    if f"{os.sep}orbax{os.sep}" in record.pathname:  # ~20 INFO lines per checkpoint
        return False
    if record.name in _PROBE_LOGGERS:
        return absl_logging.get_verbosity() >= absl_logging.DEBUG
    return True


def _is_late_loop_callback(exc: BaseException | None, tb: Any) -> bool:
    """`RuntimeError("Event loop is closed")` from asyncio's `call_soon_threadsafe`: what each
    tensorstore read still under way reports when an orbax restore failed part-way (orbax
    closed its event loop while raising), hundreds of tracebacks before our one error."""
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed" or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.basename(tb.tb_frame.f_code.co_filename) == "base_events.py"


def _without_late_loop_callbacks(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    def unraisablehook(unraisable) -> None:
        if not _is_late_loop_callback(unraisable.exc_value, unraisable.exc_traceback):
            hook(unraisable)

    unraisablehook.drops_late_loop_callbacks = True
    return unraisablehook


def quiet_logs() -> None:
    """Hides the start-up noise of jax, orbax and TensorFlow at the default verbosity.

    Warnings stay, except the known harmless ones above (and the late callbacks of a failed
    checkpoint read, `_is_late_loop_callback`). TensorFlow's import-time banners
    (`TF_BANNERS`) are dropped whenever and wherever it is first imported; everything else
    it prints reaches stderr. Call it before orbax is imported (its registry warning comes
    at import time); it imports none of jax, orbax or TensorFlow. Idempotent.
    """
    targets = [logging.getLogger("absl"), absl_logging.get_absl_handler()]
    targets += [logging.getLogger(name) for name in (*_PROBE_LOGGERS, "asyncio")]
    for target in targets:
        if _drop_noise not in target.filters:
            target.addFilter(_drop_noise)
    if not getattr(sys.unraisablehook, "drops_late_loop_callbacks", False):
        sys.unraisablehook = _without_late_loop_callbacks(sys.unraisablehook)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO lines on import
    if not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


# TensorFlow's C++ start-up lines that need no action. They bypass TF_CPP_MIN_LOG_LEVEL:
# with oneDNN on (the default on CPUs with AVX-512, e.g. Intel Xeons, or with
# TF_ENABLE_ONEDNN_OPTS=1) every import prints the first two, whatever the level says.
TF_BANNERS = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",  # "optimized to use available CPU instructions" ...
    "To enable the following instructions:",  # ... and its second line
)


@contextlib.contextmanager
def filtered_stderr(drop: Sequence[str]) -> Iterator[None]:
    """Drops the lines containing any of `drop` from what is written to file descriptor 2.

    Works below Python (C++ libraries write to the descriptor directly): fd 2 goes to a pipe
    for the duration, and on exit every other line is written to the real stderr, in order.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []

    def drain():  # a reader thread, so a writer never blocks on a full pipe
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join()
        os.close(read_end)
        os.close(saved)
        lines = b"".join(chunks).splitlines(keepends=True)
        kept = [x for x in lines if not any(d.encode() in x for d in drop)]
        if kept:
            os.write(2, b"".join(kept))


class _LoaderWithoutBanners:
    """A module loader that runs the real one's `exec_module` under `filtered_stderr`."""

    def __init__(self, loader: Any):
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr(TF_BANNERS):
            self._loader.exec_module(module)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds top-level module `name` as the next finders do, with a banner-dropping loader."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        finders = sys.meta_path[sys.meta_path.index(self) + 1 :] if self in sys.meta_path else []
        for finder in finders:
            spec = getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderWithoutBanners(spec.loader)
                return spec
        return None


# ---------------------------------------------------------------------------------------
# Entry points


def command(module: str, script: str) -> str:
    """How the user started this command: the console script's name or `python -m module`."""
    return script if pathlib.Path(sys.argv[0]).name == script else f"python -m {module}"


def adopt_key_flags(module: str) -> None:
    """Lists `module`'s flags (and docstring) in `--help` when started from a console script.

    absl's --help shows the key flags of the main module, which it names by sys.argv[0];
    a console script's sys.argv[0] is the wrapper, which defines none.
    """
    for flag in flags.FLAGS.get_key_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main = sys.modules.get("__main__")
    if main is not None and not main.__doc__:
        main.__doc__ = sys.modules[module].__doc__


def show_traceback() -> bool:
    """Whether errors show their traceback (--verbosity=1 or LUMINET_TRACEBACK=1)."""
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return True
    return absl_logging.get_verbosity() >= absl_logging.DEBUG


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (KeyError's repr quotes removed)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split()) or type(error).__name__


def _raised_in_package(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(_PACKAGE) in tb.tb_frame.f_code.co_filename


def fail(message: str, hint: str = "", *, prog: str = "", code: int = 1) -> NoReturn:
    """Prints `prog: error: message` (and `hint: ...`) to stderr and exits with `code`."""
    sys.stderr.flush()
    print(f"{prog + ': ' if prog else ''}error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(code)


class UserError(Exception):
    """A bad input found by an entry point: a message and a hint to fix it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def guarded(
    main: Callable[[Sequence[str]], Any],
    *,
    prog: str,
    hint_for: Callable[[BaseException], str] | None = None,
) -> Callable[[Sequence[str]], Any]:
    """Wraps an absl main so known bad inputs end with one line and a hint (exit code 1).

    Args:
      main: the absl main function.
      prog: the command's name for the message.
      hint_for: error -> a hint for it ("" for the generic hint).
    """

    def wrapped(argv):
        try:
            return main(argv)
        except UserError as e:
            if show_traceback():
                raise
            fail(one_line(e), e.hint, prog=prog)
        except KNOWN_ERRORS as e:
            if show_traceback():
                raise
            message = one_line(e)
            if not _raised_in_package(e):  # from a library: say what kind of error it is
                message = f"{type(e).__name__}: {message}"
            hint = (hint_for(e) if hint_for else "") or (
                f"rerun with --verbosity=1 (or {TRACEBACK_ENV}=1) for the traceback."
            )
            fail(message, hint, prog=prog)

    return wrapped
