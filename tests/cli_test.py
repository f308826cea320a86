"""luminet_jax/cli.py: shipped config names, quiet logs, one-line errors (in-process)."""

from __future__ import annotations

import logging
import os
import pathlib
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from luminet_jax import cli, models

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.py"


def test_config_names_are_the_shipped_files():
    files = {p.stem for p in (ROOT / "configs").glob("*.py")} - {"__init__", "common"}
    assert set(cli.config_names()) == files
    assert {"quickstart", "cifar100_teacher", "cifar100_res32x4_res8x4"} <= files


def test_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.resolve_config("quickstart:teacher") == f"{QUICKSTART}:teacher"
    assert cli.resolve_config("quickstart") == f"{QUICKSTART}"
    assert cli.resolve_config("quickstart.py:method=kd") == f"{QUICKSTART}:method=kd"
    # The README's repository form also works where configs/ is not in the cwd.
    assert cli.resolve_config("configs/quickstart.py:teacher") == f"{QUICKSTART}:teacher"
    pair = cli.resolve_config("cifar100_res32x4_res8x4:method=luminet")
    assert pair.endswith("cifar100_res32x4_res8x4.py:method=luminet")


def test_a_users_config_file_wins(tmp_path, monkeypatch):
    own = tmp_path / "quickstart.py"  # same stem as a shipped config
    own.write_text("def get_config(arg=None):\n    return {'mine': arg}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.resolve_config("quickstart.py:x") == "quickstart.py:x"
    assert cli.resolve_config(f"{own}:x") == f"{own}:x"


def test_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"no shipped config.*cifar100_teacher.*quickstart"):
        cli.resolve_config("quikstart:teacher")
    with pytest.raises(ValueError, match="No config file"):
        cli.resolve_config("elsewhere/quickstart.py")  # a path: not taken as a name


def _config_flag():
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("cfg", None, flag_values=values)
    cli.accept_config_names(holder, flag_values=values)
    return values


def test_the_config_flag_takes_names_and_reports_config_errors_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = _config_flag()
    values(["prog", "--cfg=quickstart:teacher"])
    assert values.cfg.student.name == "resnet14"
    with pytest.raises(flags.IllegalFlagValueError) as info:
        _config_flag()(["prog", "--cfg=quickstart:method=nope"])
    message = str(info.value)
    assert "Unknown method 'nope'" in message
    assert "Traceback" not in message and "\n" not in message
    with pytest.raises(flags.IllegalFlagValueError, match="shipped configs"):
        _config_flag()(["prog", "--cfg=nope"])


def test_load_config_module_needs_no_sys_path():
    quickstart = cli.load_config_module("quickstart")
    assert quickstart.TEACHER == "resnet14"
    assert quickstart.get_config("method=kd").distiller.name == "kd"


def test_quiet_logs_drops_only_the_known_noise(caplog):
    cli.quiet_logs()
    absl_logger, probe = logging.getLogger("absl"), logging.getLogger("jax._src.xla_bridge")
    with caplog.at_level(logging.INFO):
        absl_logger.warning('Type handler registry type "%s" overriding %s', "A", "jax.Array")
        absl_logger.warning(
            'Item "%s" was found in the checkpoint, but could not be restored. Please ...',
            "default",
        )
        probe.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
        absl_logger.warning("a real warning")
        probe.warning("a real backend warning")
    assert [r.getMessage() for r in caplog.records] == ["a real warning", "a real backend warning"]


def _fail_with(error):
    def main(argv):
        raise error

    return main


_BANNER = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796555828.746703    2423 port.cc:153] oneDNN custom operations are on. "
    b"You may see slightly different numerical results ...\n"
)


def test_filtered_stderr_drops_the_banners_and_keeps_everything_else(capfd):
    with cli.filtered_stderr(cli.TF_BANNERS):
        os.write(2, _BANNER)
        os.write(2, b"E0000 00:00:1.0 7 some_op.cc:12] a real error\n" + b"x" * 200_000 + b"\n")
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "absl::InitializeLog" not in err, err[:500]
    assert err.startswith("E0000 00:00:1.0 7 some_op.cc:12] a real error\nxxx"), err[:500]
    assert len(err) == len("E0000 00:00:1.0 7 some_op.cc:12] a real error\n") + 200_001


def test_quiet_import_filters_a_modules_import_time_banner(tmp_path, monkeypatch, capfd):
    """What quiet_logs installs for `tensorflow`, on a stand-in module that prints like it."""
    (tmp_path / "banner_module.py").write_text(
        f"import os\nos.write(2, {_BANNER!r})\nos.write(2, b'E0000 a real error\\n')\nVALUE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", [cli._QuietImport("banner_module"), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "banner_module", raising=False)
    import banner_module  # noqa: PLC0415

    assert banner_module.VALUE == 3
    assert capfd.readouterr().err == "E0000 a real error\n"


def test_quiet_logs_installs_the_tensorflow_import_filter_once(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    cli.quiet_logs()
    cli.quiet_logs()
    quiet = [f for f in sys.meta_path if isinstance(f, cli._QuietImport)]
    assert [f.name for f in quiet] == ["tensorflow"]


def test_user_error_prints_one_line_and_the_hint(capsys):
    main = cli.guarded(_fail_with(cli.UserError("it broke", "do this")), prog="luminet-train")
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 1
    assert capsys.readouterr().err == "luminet-train: error: it broke\nhint: do this\n"


def test_library_errors_name_their_type_and_the_traceback_switch(capsys, monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)

    def unknown_model(argv):
        models.canonical_name("resnet7")

    with pytest.raises(SystemExit):
        cli.guarded(unknown_model, prog="p")([])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("p: error: Unknown model 'resnet7'; known: [")
    assert (
        lines[1] == f"hint: rerun with --verbosity=1 (or {cli.TRACEBACK_ENV}=1) for the traceback."
    )

    def from_a_library(argv):
        int("x")

    with pytest.raises(SystemExit):
        cli.guarded(from_a_library, prog="p")([])
    assert capsys.readouterr().err.splitlines()[0] == (
        "p: error: ValueError: invalid literal for int() with base 10: 'x'"
    )


def test_traceback_switch_and_unknown_errors_propagate(monkeypatch):
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(cli.UserError):
        cli.guarded(_fail_with(cli.UserError("x")), prog="p")([])
    monkeypatch.delenv(cli.TRACEBACK_ENV)
    with pytest.raises(ZeroDivisionError):  # not a bad input: a bug keeps its traceback
        cli.guarded(_fail_with(ZeroDivisionError("bug")), prog="p")([])


def test_quiet_logs_drops_only_the_late_callbacks_of_a_closed_event_loop(monkeypatch):
    import asyncio  # noqa: PLC0415
    import types  # noqa: PLC0415

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    cli.quiet_logs()
    cli.quiet_logs()  # idempotent: one wrapper
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)  # what a tensorstore read does after a failed restore
    except RuntimeError as e:
        late = e
    other = RuntimeError("Event loop is closed")  # the same words from elsewhere
    for exc in (late, other, ValueError("x")):
        sys.unraisablehook(types.SimpleNamespace(exc_value=exc, exc_traceback=exc.__traceback__))
    assert [type(u.exc_value) for u in seen] == [RuntimeError, ValueError]
    assert seen[0].exc_value is other
