"""Run specs and a sequential launcher for the studies.

A `Run` is one call of the trainer: a config file with its argument, a workdir and
`key=value` overrides (the `--config.key=value` flags of `luminet_jax.main`). Runs are
launched one after the other, either as subprocesses (the default: exactly the command a
user or a cluster job would run), in this process (`train.train_and_evaluate`, which skips
the import cost of a new interpreter; used by the tests), or only printed (`--print-only`),
e.g. to paste into cluster job scripts. A run whose workdir already has a `summary.json` is
skipped; an interrupted one resumes from its checkpoint.

Workdir layout, read back by `results.collect`: ROOT/<group>/<method>/seed<k>, where the group
is a pair name, optionally followed by a variant folder (e.g. `res32x4_res8x4/T4`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import os
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[2]
TEACHER_CONFIG = "configs/cifar100_teacher.py"
# Override keys that describe the student run only (not passed on to teacher runs).
_STUDENT_ONLY = ("student.", "teacher.", "distiller.")


@dataclasses.dataclass(frozen=True)
class Run:
    """One trainer invocation.

    Attributes:
      config: `path/to/config.py[:ARG]`, the path relative to the repository root.
      workdir: the run's directory.
      overrides: (dotted key, value string) pairs, applied in order.
    """

    config: str
    workdir: str
    overrides: tuple[tuple[str, str], ...] = ()

    def command(self, python: str = "python") -> list[str]:
        """The `python -m luminet_jax.main ...` command line (run from the repo root)."""
        flags = [f"--config.{key}={value}" for key, value in self.overrides]
        return [
            python,
            "-m",
            "luminet_jax.main",
            f"--config={self.config}",
            f"--workdir={self.workdir}",
            *flags,
        ]

    def done(self) -> bool:
        """Whether the run finished (the trainer writes summary.json last)."""
        return os.path.exists(os.path.join(self.workdir, "summary.json"))


def parse_list(text: str) -> list[str]:
    """ "a,b, c" -> ["a", "b", "c"]."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_overrides(items: Iterable[str]) -> list[tuple[str, str]]:
    """["a.b=1", ...] -> [("a.b", "1"), ...]; raises ValueError on an item without '='."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Override {item!r} is not of the form key=value")
        out.append((key.strip(), value.strip()))
    return out


def load_config(spec: str):
    """Builds the ConfigDict of `path.py[:ARG]` (as `--config=path.py:ARG` would), locked.

    Args:
      spec: config file path (relative to the repository root or absolute) and argument.
    """
    path, _, arg = spec.partition(":")
    path = pathlib.Path(path)
    if not path.is_absolute():
        path = REPO / path
    if str(REPO) not in sys.path:  # config files import the top-level `configs` package
        sys.path.insert(0, str(REPO))
    module_spec = importlib.util.spec_from_file_location(f"_experiment_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    config.lock()
    return config


def _convert(text: str, current: Any) -> Any:
    """Parses an override string to the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"Cannot parse {text!r} as a bool")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, (tuple, list)):
        value = ast.literal_eval(text)
        return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text


def apply_overrides(config, overrides: Sequence[tuple[str, str]]):
    """Sets dotted `key=value` overrides on a (locked) ConfigDict, as main.py's flags do.

    Raises:
      AttributeError/KeyError: a key the config does not have (the config is locked).
    """
    for key, text in overrides:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"Config has no field {key!r} (overrides cannot add fields)")
        node[leaf] = _convert(text, node[leaf])
    return config


def teacher_path(teachers_dir: str, names: Sequence[str]) -> str:
    """The teacher.checkpoint value for `names`: DIR/NAME.npz if present, else DIR/NAME."""
    paths = []
    for name in names:
        npz = os.path.join(teachers_dir, f"{name}.npz")
        paths.append(npz if os.path.exists(npz) else os.path.join(teachers_dir, name))
    return ",".join(paths)


def _has(overrides: Sequence[tuple[str, str]], key: str) -> bool:
    return any(k == key for k, _ in overrides)


def pair_runs(
    *,
    pairs: Mapping[str, str],
    methods: Sequence[str],
    seeds: Sequence[int],
    root: str,
    overrides: Sequence[tuple[str, str]] = (),
    teachers_dir: str | None = None,
    variant: str = "",
) -> list[Run]:
    """Runs for every (pair, method, seed): ROOT/<pair>[/<variant>]/<method>/seed<k>.

    Args:
      pairs: pair name -> config file (taking `method=NAME`), optionally with other
        arguments (`configs/quickstart.py:epochs=8`).
      methods: distiller names the config files define.
      seeds: one run per seed (`--config.seed`).
      root: the study's root folder.
      overrides: applied to every run after the seed and the teacher checkpoint.
      teachers_dir: when given (and `teacher.checkpoint` is not overridden), each
        distillation run reads its teacher(s) from `teacher_path(teachers_dir, names)`.
      variant: an extra folder level for sweeps.
    """
    runs = []
    for pair, config_file in pairs.items():
        names = [v for k, v in overrides if k == "teacher.name"]  # the last override wins
        names = parse_list(names[-1] if names else load_config(config_file).teacher.name)
        for method in methods:
            for seed in seeds:
                extra = [("seed", str(seed))]
                if (
                    teachers_dir
                    and method != "vanilla"
                    and not _has(overrides, "teacher.checkpoint")
                ):
                    extra.append(("teacher.checkpoint", teacher_path(teachers_dir, names)))
                parts = [root, pair] + ([variant] if variant else []) + [method, f"seed{seed}"]
                sep = "," if ":" in config_file else ":"  # a file may come with its own arg
                runs.append(
                    Run(
                        f"{config_file}{sep}method={method}",
                        os.path.join(*parts),
                        tuple(extra) + tuple(overrides),
                    )
                )
    return runs


def teacher_names(pairs: Mapping[str, str], overrides: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The teacher models of the pairs' configs (or of a `teacher.name` override), ensembles
    split, without repeats."""
    names: list[str] = []
    for config_file in pairs.values():
        given = [v for k, v in overrides if k == "teacher.name"]
        for name in parse_list(given[-1] if given else load_config(config_file).teacher.name):
            if name not in names:
                names.append(name)
    return names


def teacher_runs(
    names: Sequence[str],
    teachers_dir: str,
    overrides: Sequence[tuple[str, str]] = (),
    teacher_overrides: Sequence[tuple[str, str]] = (),
    config_file: str = TEACHER_CONFIG,
) -> list[Run]:
    """Vanilla training of the teachers `names` into teachers_dir/<name> (unless a .npz is there).

    The student runs' overrides are passed on except those of the student, teacher and
    distiller sections; `teacher_overrides` come last (e.g. `student.patch_size=4`).
    """
    shared = tuple((k, v) for k, v in overrides if not k.startswith(_STUDENT_ONLY))
    return [
        Run(
            f"{config_file}:model={name}",
            os.path.join(teachers_dir, name),
            shared + tuple(teacher_overrides),
        )
        for name in names
        if not os.path.exists(os.path.join(teachers_dir, f"{name}.npz"))
    ]


def _run_in_process(run: Run) -> None:
    from luminet_jax import cli, train  # noqa: PLC0415  (jax is only needed to train here)

    cli.quiet_logs()
    config = apply_overrides(load_config(run.config), run.overrides)
    train.train_and_evaluate(config, run.workdir)


def child_env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH (for PYTHONSAFEPATH users)."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def launch(
    runs: Sequence[Run],
    *,
    mode: str = "subprocess",
    nice: int = 0,
    python: str = sys.executable,
    out=None,
) -> list[dict[str, Any]]:
    """Runs (or prints) `runs` one after the other.

    Args:
      runs: the runs, in order (teachers first).
      mode: "subprocess" (logs to WORKDIR/train.log), "in_process" or "print".
      nice: niceness for subprocesses (`nice -n`), 0 for none.
      python: the interpreter for subprocesses.
      out: where progress lines (or the printed commands) go (default sys.stdout).

    Returns:
      One record per run: workdir, status ("done", "skipped" or "printed"), seconds.

    Raises:
      RuntimeError: at the first failed subprocess (the later runs are not started).
    """
    out = out or sys.stdout
    records = []
    if mode == "print":
        print(f"# from {REPO}", file=out)
    for index, run in enumerate(runs):
        if mode == "print":
            prefix = ["nice", "-n", str(nice)] if nice else []
            print(shlex.join(prefix + run.command("python")), file=out)
            records.append({"workdir": run.workdir, "status": "printed", "seconds": 0.0})
            continue
        if run.done():
            print(f"[{index + 1}/{len(runs)}] skip (done): {run.workdir}", file=out, flush=True)
            records.append({"workdir": run.workdir, "status": "skipped", "seconds": 0.0})
            continue
        print(
            f"[{index + 1}/{len(runs)}] {shlex.join(run.command('python')[3:])}",
            file=out,
            flush=True,
        )
        start = time.monotonic()
        if mode == "in_process":
            _run_in_process(run)
        elif mode == "subprocess":
            os.makedirs(run.workdir, exist_ok=True)
            command = (["nice", "-n", str(nice)] if nice else []) + run.command(python)
            with open(os.path.join(run.workdir, "train.log"), "a") as log:
                to_log = dict(stdout=log, stderr=subprocess.STDOUT)
                code = subprocess.call(command, cwd=REPO, env=child_env(), **to_log)
            if code:
                raise RuntimeError(
                    f"Run failed (exit {code}); see {os.path.join(run.workdir, 'train.log')}"
                )
        else:
            raise ValueError(f"Unknown mode {mode!r}; use subprocess, in_process or print")
        seconds = time.monotonic() - start
        print(f"    finished in {seconds:.0f} s", file=out, flush=True)
        records.append({"workdir": run.workdir, "status": "done", "seconds": seconds})
    return records


def add_launch_args(parser: argparse.ArgumentParser, *, methods: str, seeds: str = "0,1,2"):
    """The options every runner shares."""
    parser.add_argument("--root", required=True, help="Folder of the study's workdirs.")
    parser.add_argument("--methods", default=methods, help="Comma-separated distillers.")
    parser.add_argument("--seeds", default=seeds, help="Comma-separated seeds.")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Config override for every student run (repeatable), e.g. num_epochs=10.",
    )
    parser.add_argument(
        "--teachers",
        default=None,
        help="Folder of teacher checkpoints DIR/<model>[.npz] (default ROOT/teachers).",
    )
    parser.add_argument(
        "--train-teachers",
        action="store_true",
        help="First train missing teachers (configs/cifar100_teacher.py) into --teachers.",
    )
    parser.add_argument(
        "--teacher-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra override for teacher runs only (repeatable).",
    )
    parser.add_argument("--print-only", action="store_true", help="Print the commands only.")
    parser.add_argument(
        "--in-process", action="store_true", help="Train in this process (no subprocesses)."
    )
    parser.add_argument("--nice", type=int, default=0, help="Niceness of the subprocesses.")


def launch_from_args(
    args: argparse.Namespace,
    pairs: Mapping[str, str],
    *,
    extra_overrides: Sequence[tuple[str, str]] = (),
    variants: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    teachers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Builds (teacher and) student runs from `add_launch_args` options and launches them.

    Args:
      args: the parsed options.
      pairs: pair name -> config file.
      extra_overrides: the study's overrides, before the user's `--override`s.
      variants: for sweeps, variant folder -> its overrides (after the user's).
      teachers: the teacher models to train with --train-teachers (default: the pairs').
    """
    overrides = list(extra_overrides) + parse_overrides(args.override)
    teachers_dir = args.teachers or os.path.join(args.root, "teachers")
    runs = []
    if args.train_teachers:
        names = list(teachers) if teachers is not None else teacher_names(pairs, overrides)
        runs += teacher_runs(names, teachers_dir, overrides, parse_overrides(args.teacher_override))
    for variant, variant_overrides in (variants or {"": ()}).items():
        runs += pair_runs(
            pairs=pairs,
            methods=parse_list(args.methods),
            seeds=[int(s) for s in parse_list(args.seeds)],
            root=args.root,
            overrides=overrides + list(variant_overrides),
            teachers_dir=teachers_dir,
            variant=variant,
        )
    mode = "print" if args.print_only else "in_process" if args.in_process else "subprocess"
    return launch(runs, mode=mode, nice=args.nice)


def select(table: Mapping[str, str], names: str) -> dict[str, str]:
    """The entries of `table` named in the comma-separated `names` ("all" for every one)."""
    if names == "all":
        return dict(table)
    chosen = {}
    for name in parse_list(names):
        if name not in table:
            raise SystemExit(f"Unknown pair {name!r}; known: {', '.join(table)}")
        chosen[name] = table[name]
    return chosen
