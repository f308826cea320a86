"""What `main` does before training: join the processes and check the inputs.

Kept apart from main.py's flags so tests call these directly. The checks run before the
slow imports (TF, orbax) and raise `cli.UserError`: one line and a hint for the user.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from absl import logging

from luminet_jax import cli


def cluster_env(multihost: bool | None = None) -> bool:
    """Whether the environment asks for several processes (--multihost forces either way)."""
    if multihost is not None:
        return multihost
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ


def _env_int(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name) else None


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise cli.UserError(
            f"--coordinator_address={address!r} is not HOST:PORT.",
            "give process 0's host and a free port, e.g. --coordinator_address=10.0.0.1:12345.",
        )
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Waits until process 0's coordinator accepts connections (jax aborts otherwise)."""
    host, port = split_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise cli.UserError(
                    f"no coordinator reachable at {address} after {timeout_s:.0f} s.",
                    "start process 0 (--process_id=0) with the same --coordinator_address, "
                    "check the host and port, or raise --initialization_timeout.",
                ) from None
            time.sleep(0.5)


def distributed_args(
    address: str | None,
    num_processes: int | None,
    process_id: int | None,
    *,
    timeout_s: int = 60,
    multihost: bool | None = None,
) -> dict[str, Any] | None:
    """Checked `jax.distributed.initialize` arguments, or None for a single process.

    Given values win; without any, the cluster environment decides (`cluster_env`: jax
    detects SLURM, Open MPI and Kubernetes, or reads JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID).

    Raises:
      cli.UserError: a bad value (checked before any process starts to join).
    """
    address, n, pid = address, num_processes, process_id
    if timeout_s < 1:
        raise cli.UserError(f"--initialization_timeout={timeout_s} must be >= 1 s.")
    if address is None and n is None and pid is None:
        if not cluster_env(multihost):
            return None
        address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
        n, pid = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
    if n is not None and n < 1:
        raise cli.UserError(f"--num_processes={n} must be >= 1.")
    if pid is not None and (pid < 0 or (n is not None and pid >= n)):
        raise cli.UserError(
            f"--process_id={pid} is out of range for --num_processes={n}.",
            "number the processes 0..num_processes-1; process 0 serves the coordinator.",
        )
    if n == 1 and address is None:
        return None  # one process: nothing to join
    if address is not None:
        split_address(address)
    return dict(
        coordinator_address=address,
        num_processes=n,
        process_id=pid,
        initialization_timeout=timeout_s,
    )


def initialize_distributed(args: dict[str, Any] | None) -> None:
    """Calls `jax.distributed.initialize(**args)` (nothing for None)."""
    if args is None:
        return
    address = args["coordinator_address"]
    if address is not None and args["process_id"]:
        # Not the coordinator itself: jax would abort the process with a C++ stack trace.
        wait_for_coordinator(address, args["initialization_timeout"])
    import jax  # noqa: PLC0415

    jax.distributed.initialize(**args)
    logging.info("Joined %d processes through %s.", jax.process_count(), address or "the env")


CACHE_ENV = "LUMINET_COMPILE_CACHE"  # a folder, or "off"; overrides the default folder


def default_cache_dir() -> str:
    """JAX's persistent compilation cache folder: $LUMINET_COMPILE_CACHE, else
    $XDG_CACHE_HOME/luminet_jax/jax (~/.cache/luminet_jax/jax); "" when set to "off"."""
    given = os.environ.get(CACHE_ENV)
    if given is not None:
        return "" if given.strip().lower() in ("", "off", "0", "none") else given
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "luminet_jax", "jax")


def enable_compilation_cache(path: str = "auto") -> str:
    """Turns on JAX's persistent compilation cache in `path` ("auto": `default_cache_dir()`).

    A second run of the same program then loads its compiled steps from disk instead of
    compiling them again. "" or "off" leaves the cache off, and so does a folder that cannot
    be created (a read-only home: logged, not fatal). An entry point's call (main,
    quickstart, benchmarks), before the first compilation.

    Returns:
      The folder in use, or "" when the cache is off.
    """
    path = default_cache_dir() if path == "auto" else path
    if path.strip().lower() in ("", "off"):
        return ""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        logging.warning("Compilation cache off: cannot create %s (%s).", path, e)
        return ""
    import jax  # noqa: PLC0415

    jax.config.update("jax_compilation_cache_dir", path)
    # Steps compile in seconds; the many sub-second jits are not worth a disk entry.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def teacher_hint(config, *, config_name: str, prog: str) -> str:
    """How to get a teacher checkpoint for `config`: its config file's own `TEACHER_HINT`
    (a format string of `prog`; the quickstart's command for its teacher), else its task's."""
    from luminet_jax import tasks  # noqa: PLC0415

    try:
        own = vars(cli.load_config_module(config_name)).get("TEACHER_HINT") if config_name else None
    except (ValueError, OSError):  # not a shipped name, nor a file
        own = None
    return own.format(prog=prog) if own else tasks.teacher_hint(config, prog=prog)


def preflight(config, *, config_name: str = "", prog: str = "luminet-train") -> None:
    """Checks the names and the teacher's files of `config` before the slow imports.

    Args:
      config: the run's config.
      config_name: the config file (a path or a shipped name), for its hint about a missing
        teacher.
      prog: the command, for the hints.

    Raises:
      ValueError: an unknown config.task.
      KeyError: an unknown model, distiller or zoo teacher name (the message lists the
        known ones).
      TypeError: a hyperparameter the distiller does not take.
      cli.UserError: a teacher checkpoint that is not set or does not exist.
    """
    from luminet_jax import distillers, tasks, teachers  # noqa: PLC0415

    tasks.check_names(config)  # the task's model names (classifiers, or detectors)
    distiller = distillers.get_distiller(**config.distiller)
    if not distiller.uses_teacher:
        return
    paths = [p.strip() for p in config.teacher.checkpoint.split(",") if p.strip()]
    hint = teacher_hint(config, config_name=config_name, prog=prog)
    if not paths:
        raise cli.UserError(
            f"{config.distiller.name} needs a teacher, but config.teacher.checkpoint is empty "
            "(set --config.teacher.checkpoint=PATH).",
            hint,
        )
    for path in paths:
        if teachers.is_zoo(path):  # fetched when the run loads it
            teachers.lookup(path)  # a KeyError listing the zoo's names
        elif not os.path.exists(path):
            raise cli.UserError(f"teacher checkpoint {path} does not exist.", hint)


def check_batch(config, device_count: int) -> None:
    """The global batch sizes must split evenly over the devices."""
    for field in ("batch_size", "eval_batch_size"):
        size = config[field]
        if size <= 0 or size % device_count:
            good = max(1, round(size / device_count)) * device_count
            raise cli.UserError(
                f"config.{field}={size} is not divisible by the {device_count} devices.",
                f"it is the global batch: use a multiple of {device_count}, e.g. "
                f"--config.{field}={good}.",
            )


def write_config(config, workdir: str) -> None:
    """Writes the run's config to workdir/config.json (read by luminet-report)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1, sort_keys=True) + "\n")


def log_start(config: Any, workdir: str, *, cache_dir: str = "") -> None:
    """Logs the run (method, models, data, batch, workdir), the device layout, the
    compilation cache folder ("" = off) and the config."""
    import jax  # noqa: PLC0415

    ds, teacher = config.dataset, config.teacher
    logging.info(
        "Run: %s, student %s%s on %s (batch %d), workdir %s",
        config.distiller.name,
        config.student.name,
        f", teacher {teacher.name} from {teacher.checkpoint}" if teacher.checkpoint else "",
        ds.name + (f" in {ds.data_dir}" if ds.data_dir else ""),
        config.batch_size,
        os.path.abspath(workdir),
    )
    device = jax.local_devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    logging.info(
        "Devices: process %d of %d, %d local / %d global %s devices%s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        device.platform,
        f" ({kind})" if kind != device.platform else "",
    )
    logging.info("Compilation cache: %s", cache_dir or "off")
    from luminet_jax.tasks import base  # noqa: PLC0415

    setting = config.get("compute_dtype", "")
    dtype = base.compute_dtype(setting)
    logging.info(
        "Compute dtype: %s%s (parameters and losses float32)",
        "float32" if dtype is None else dtype.name,
        f" (compute_dtype={setting!r} on {device.platform})" if setting == "auto" else "",
    )
    logging.debug("Config:\n%s", config)
