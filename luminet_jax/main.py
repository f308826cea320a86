"""Entry point: luminet-train (= python -m luminet_jax.main) --config NAME[:ARG] --workdir DIR.

--config takes a shipped config's name (`cifar100_res32x4_res8x4:method=luminet`,
`quickstart:teacher`) or the path of a config file. Overrides: --config.batch_size=128
--config.teacher.checkpoint=PATH (the config is locked, so a misspelled key fails).

Several processes (hosts): start one per host with --coordinator_address=HOST:PORT (process
0's host; it serves there), --num_processes=N and --process_id=I. Without them the cluster
environment decides, as `jax.distributed.initialize()` does: on SLURM (a job step with
several tasks), Open MPI and Kubernetes/GKE it detects them, and JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set them elsewhere; --multihost forces or skips that.
"""

from __future__ import annotations

import os
import socket
import time

from absl import app, flags, logging
from ml_collections import config_flags

from luminet_jax import cli

PROG = cli.command("luminet_jax.main", "luminet-train")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A shipped config's name or a config file, [:ARG].", lock_config=True
)
cli.accept_config_names(_CONFIG)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None, "Call jax.distributed.initialize() (default: detect from the env)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (several processes)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..N-1.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 60, "Seconds to wait for all processes to join."
)
flags.mark_flags_as_required(["config", "workdir"])


def _cluster_env() -> bool:
    if _MULTIHOST.value is not None:
        return _MULTIHOST.value
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ


def _env_int(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name) else None


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise cli.UserError(
            f"--coordinator_address={address!r} is not HOST:PORT.",
            "give process 0's host and a free port, e.g. --coordinator_address=10.0.0.1:12345.",
        )
    return host.strip("[]"), int(port)


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Waits until process 0's coordinator accepts connections (jax aborts otherwise)."""
    host, port = _split_address(address)
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


def _initialize_distributed() -> None:
    """jax.distributed.initialize from the flags, or from the cluster environment."""
    import jax  # noqa: PLC0415

    address, n, pid = _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    timeout = _INIT_TIMEOUT.value
    if timeout < 1:
        raise cli.UserError(f"--initialization_timeout={timeout} must be >= 1 s.")
    if address is None and n is None and pid is None:
        if _cluster_env():
            jax.distributed.initialize(
                num_processes=_env_int("JAX_NUM_PROCESSES"),
                process_id=_env_int("JAX_PROCESS_ID"),
                initialization_timeout=timeout,
            )
        return
    if n is not None and n < 1:
        raise cli.UserError(f"--num_processes={n} must be >= 1.")
    if pid is not None and (pid < 0 or (n is not None and pid >= n)):
        raise cli.UserError(
            f"--process_id={pid} is out of range for {n or '?'} processes.",
            "number the processes 0..num_processes-1; process 0 serves the coordinator.",
        )
    if n == 1 and address is None:
        return  # one process: nothing to join
    if address is not None:
        _split_address(address)
        if pid:  # not the coordinator itself: fail fast and clearly where jax would abort
            _wait_for_coordinator(address, timeout)
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=n,
        process_id=pid,
        initialization_timeout=timeout,
    )


def _hide_gpus_from_tf() -> None:
    """The input pipeline uses TF on the CPU only: keep it off accelerator memory."""
    try:
        import tensorflow as tf  # noqa: PLC0415
    except ImportError:  # TF is only needed for the tf.data / TFDS datasets
        return
    tf.config.set_visible_devices([], "GPU")


def _check_teacher(config) -> None:
    """A distiller that needs a teacher without a checkpoint: say how to get one."""
    from luminet_jax import distillers  # noqa: PLC0415

    cls = distillers.DISTILLERS.get(config.distiller.name)
    if cls is None or not getattr(cls, "uses_teacher", True) or config.teacher.checkpoint:
        return
    value = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[0]
    if os.path.basename(value).removesuffix(".py") == "quickstart":
        hint = (
            f"train the quickstart teacher first: {PROG} --config quickstart:teacher "
            "--workdir /tmp/qs/teacher, then add --config.teacher.checkpoint=/tmp/qs/teacher "
            "(luminet-quickstart does both)."
        )
    else:
        hint = (
            f"give a teacher run's workdir ({PROG} --config cifar100_teacher:"
            f"{config.teacher.name.split(',')[0]} --workdir T), a luminet-convert output "
            "directory or a PyTorch-keyed .npz."
        )
    raise cli.UserError(
        f"{config.distiller.name} needs a teacher, but config.teacher.checkpoint is empty "
        "(set --config.teacher.checkpoint=PATH).",
        hint,
    )


def _write_config(config, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1, sort_keys=True) + "\n")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_logs()
    config, workdir = _CONFIG.value, _WORKDIR.value
    _check_teacher(config)
    _initialize_distributed()
    _hide_gpus_from_tf()
    import jax  # noqa: PLC0415

    from luminet_jax import train  # noqa: PLC0415  (imports orbax: after quiet_logs)

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
    if jax.process_index() == 0:
        _write_config(config, workdir)
    logging.debug("Config:\n%s", config)
    train.train_and_evaluate(config, workdir)


def run() -> None:
    """The console script `luminet-train`."""
    cli.adopt_key_flags(__name__)
    app.run(cli.guarded(main, prog=PROG))


if __name__ == "__main__":
    app.run(cli.guarded(main, prog=PROG))
