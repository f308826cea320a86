"""The studies under experiments/: runners, collectors, plots and the linear probe.

Tiny runs on a generated 8x8 image folder (4 classes), resnet8 everywhere, a few steps,
in-process (8 fake CPU devices). Collectors that need no training read metrics.jsonl files
written here.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import sys

import chex
import image_data
import jax
import numpy as np
import pytest

from experiments.common import results, runs
from experiments.figure4 import plot as fig4_plot
from experiments.figure4 import probe, sweep, transfer
from experiments.table1_cifar100 import collect as t1_collect
from experiments.table1_cifar100 import run as t1_run
from experiments.table2_imagenet import collect as t2_collect
from experiments.table5_autoaugment import run as t5_run
from luminet_jax import checkpoint, models

CLASSES = 4


def _image_folder(root: pathlib.Path, *, train: int = 16, test: int = 8, size: int = 8) -> str:
    """train/<class>/*.png and test/<class>/*.png: class = a colour, plus noise."""
    return image_data.colour_folder(root, classes=CLASSES, train=train, test=test, size=size)


TINY = [  # every run: the tiny folder dataset, resnet8, batch 16, 3 steps, one eval
    "student.name=resnet8",
    "teacher.name=resnet8",
    "batch_size=16",
    "eval_batch_size=16",
    "num_train_steps=3",
    "log_every_steps=3",
    "eval_every_steps=3",
    "ckpt_every_steps=3",
    "eval_teacher=false",
]


def _tiny_args(data: str, *, names: bool = True) -> list[str]:
    """--override flags for TINY (without the model names when `names` is False)."""
    args = []
    for item in [f"dataset.name=image_folder:{data}", *TINY]:
        if names or not item.startswith(("student.", "teacher.")):
            args += ["--override", item]
    return args + ["--in-process"]


def _argv(text: str, *more: str) -> list[str]:
    return text.split() + list(more)


def _commands(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("python")]


@pytest.fixture(scope="module")
def table1_root(tmp_path_factory):
    """Table 1's runner, in-process: one LumiNet student of an (untrained) saved teacher.

    (Training the teacher first, --train-teachers, is the slow test below.)
    """
    base = tmp_path_factory.mktemp("t1")
    data = _image_folder(base / "data")
    root = str(base / "runs")
    teacher = models.get_model("resnet8", num_classes=CLASSES)
    variables = teacher.init(jax.random.key(1), np.zeros((1, 8, 8, 3), np.float32), train=False)
    checkpoint.save_variables(os.path.join(root, "teachers", "resnet8"), variables)
    argv = [
        "--pairs",
        "res32x4_res8x4",
        "--methods",
        "luminet",
        "--seeds",
        "0",
        "--root",
        root,
        *_tiny_args(data),
    ]
    records = t1_run.main(argv)
    return root, data, records


def test_overrides_take_the_field_type():
    config = runs.load_config("configs/cifar100_res32x4_res8x4.py:method=kd")
    items = "schedule.decay_epochs=(3,5) distiller.temperature=2 eval_teacher=false batch_size=32"
    runs.apply_overrides(config, runs.parse_overrides([*items.split(), "dataset.name=folder:/x"]))
    assert config.schedule.decay_epochs == (3, 5)
    assert config.distiller.temperature == 2.0 and isinstance(config.distiller.temperature, float)
    assert config.eval_teacher is False and config.batch_size == 32
    assert config.dataset.name == "folder:/x"
    with pytest.raises(KeyError, match="temprature"):
        runs.apply_overrides(config, [("distiller.temprature", "1")])
    with pytest.raises(ValueError, match="key=value"):
        runs.parse_overrides(["num_epochs"])


def test_print_only_lists_every_command(tmp_path, capsys):
    argv = _argv("--pairs res56_res20,vgg13_vgg8 --seeds 0,1,2 --print-only", "--root")
    records = t1_run.main(argv + [str(tmp_path), "--override", "num_epochs=2"])
    lines = _commands(capsys)
    assert len(records) == len(lines) == 2 * 4 * 3
    assert all("--config.num_epochs=2" in ln and "--config.seed=" in ln for ln in lines)
    teachers = [ln for ln in lines if "teacher.checkpoint" in ln]
    assert len(teachers) == 2 * 3 * 3  # every method but vanilla reads the teacher
    assert any(f"{tmp_path}/teachers/resnet56" in ln for ln in teachers)
    assert not os.listdir(tmp_path)  # printing writes nothing


def test_table5_runs_autoaugment_and_sweeps_vary_one_field(tmp_path, capsys):
    t5_run.main(_argv("--seeds 0 --methods kd --print-only --root", str(tmp_path)))
    lines = _commands(capsys)
    assert len(lines) == 5
    assert all("--config.dataset.augment=autoaugment" in ln for ln in lines)
    sweep.main(_argv("--panel ensemble --seeds 0 --print-only --root", str(tmp_path)))
    lines = _commands(capsys)
    assert len(lines) == 3 and "teacher.name=resnet8x4,wrn_40_2" in lines[-1]
    assert f"{tmp_path}/teachers/resnet8x4,{tmp_path}/teachers/wrn_40_2" in lines[-1]
    argv = _argv("--panel temperature --values 1,8 --config configs/quickstart.py:epochs=2")
    sweep.main(argv + _argv("--pair qs --methods luminet --seeds 0 --print-only --root", "/r"))
    lines = _commands(capsys)
    assert (
        len(lines) == 2 and "quickstart.py:epochs=2,method=luminet --workdir=/r/qs/T8/" in lines[1]
    )
    assert lines[1].endswith("--config.distiller.temperature=8.0")
    assert sweep.variants("batch", ["32", "64"]) == {
        "bs32": [("batch_size", "32")],
        "bs64": [("batch_size", "64")],
    }


@pytest.mark.slow  # its fixture trains a teacher and three students (~35 s)
def test_table1_runner_and_collector_end_to_end(table1_root, tmp_path):
    root, _, records = table1_root
    assert [r["status"] for r in records] == ["done"]
    found = results.collect(root)
    assert [(r.method, r.seed, r.steps, r.evals) for r in found] == [("luminet", 0, 3, 1)]
    assert 0.0 <= found[0].best_top1 <= 1.0
    # Rerunning skips finished runs.
    again = t1_run.main(_argv("--pairs res32x4_res8x4 --methods luminet --seeds 0 --root", root))
    assert again[0]["status"] == "skipped"
    # More seeds and the student alone, as metrics files (training them is the slow test).
    _write_metrics(pathlib.Path(root) / "res32x4_res8x4/luminet/seed1", [(0.25, 0.5)])
    _write_metrics(pathlib.Path(root) / "res32x4_res8x4/vanilla/seed0", [(0.25, 0.5)])
    found = results.collect(root)

    out = tmp_path / "table.md"
    _, stats, table = t1_collect.main(
        ["--root", root, "--out", str(out), "--csv", str(tmp_path / "runs.csv")]
    )
    rows = table.splitlines()
    assert rows[0] == "| pair | method | seeds | best top-1 | last top-1 | paper top-1 |"
    assert len(rows) == 2 + 2
    assert rows[2] == "| res32x4_res8x4 | vanilla | 1 | 25.00 | 25.00 | 72.50 |"
    assert rows[3].startswith("| res32x4_res8x4 | luminet | 2 |") and "±" in rows[3]
    assert rows[3].endswith("| 77.50 |")
    assert out.read_text(encoding="utf-8").strip() == table
    mean, std = stats[("res32x4_res8x4", "luminet")]["best_top1"]
    values = [r.best_top1 for r in found if r.method == "luminet"]
    np.testing.assert_allclose([mean, std], [np.mean(values), np.std(values, ddof=1)])
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 1 + 3


def _write_metrics(workdir: pathlib.Path, evals: list[tuple[float, float]]) -> None:
    workdir.mkdir(parents=True)
    with open(workdir / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 0, "teacher_top1": 0.7}) + "\n")
        for i, (top1, top5) in enumerate(evals, 1):
            f.write(json.dumps({"step": 10 * i, "eval/top1": top1, "eval/top5": top5}) + "\n")
        f.write(json.dumps({"step": 10 * len(evals), "summary/wall_s": 1.0}) + "\n")  # finished


def test_table2_collector_reports_top5_at_best(tmp_path):
    _write_metrics(tmp_path / "r34_r18/kd/seed0", [(0.5, 0.8), (0.7, 0.85), (0.6, 0.9)])
    _, _, table = t2_collect.main(["--root", str(tmp_path)])
    row = table.splitlines()[2]
    assert row.startswith("| r34_r18 | kd | 1 | 70.00 | 85.00 | 60.00 | 90.00 |"), row
    assert row.endswith("70.66 / 89.88 |")


def test_figure4_plots_from_sweep_workdirs(tmp_path):
    for i, bs in enumerate((32, 64, 128)):
        for seed in (0, 1):
            top1 = 0.6 + 0.01 * i + 0.005 * seed
            _write_metrics(tmp_path / f"p/bs{bs}/luminet/seed{seed}", [(top1, 0.9)])
            _write_metrics(tmp_path / f"p/bs{bs}/kd/seed{seed}", [(top1 - 0.02, 0.9)])
    for variant in ("resnet8x4", "wrn_40_2", "ensemble"):
        _write_metrics(tmp_path / f"p/teacher_{variant}/luminet/seed0", [(0.7, 0.9)])
    _write_metrics(tmp_path / "p/luminet/seed0", [(0.7, 0.9)])  # not a sweep: ignored
    out = tmp_path / "out"
    written = fig4_plot.main(["--root", str(tmp_path), "--out-dir", str(out)])
    assert set(written) == {"batch", "ensemble"}
    assert all(os.path.getsize(path) > 1000 for path in written.values())
    panel = json.loads((out / "figure4b_batch.json").read_text())
    assert panel["values"] == ["32", "64", "128"]
    np.testing.assert_allclose(panel["methods"]["luminet"]["128"][0], 0.6225)
    table = (out / "figure4d_ensemble.md").read_text(encoding="utf-8").splitlines()
    assert [row.split(" | ")[0][2:] for row in table[2:5]] == ["resnet8x4", "wrn_40_2", "ensemble"]


@pytest.mark.integration  # heavy: the second tier
def test_linear_probe_separates_and_is_deterministic():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 3
    labels = rng.integers(0, 5, 400)
    feats = centers[labels] + rng.normal(size=(400, 16))
    head = probe.train_linear_probe(
        feats[:300], labels[:300], num_classes=5, epochs=20, batch_size=64, learning_rate=1e-2
    )
    chex.assert_shape(head["w"], (16, 5))
    assert probe.probe_accuracy(head, feats[300:], labels[300:]) > 0.9
    assert probe.probe_accuracy(head, feats[300:], labels[300:], k=5) == 1.0
    again = probe.train_linear_probe(
        feats[:300], labels[:300], num_classes=5, epochs=20, batch_size=64, learning_rate=1e-2
    )
    chex.assert_trees_all_close(head, again)
    # An untrained probe (0 epochs) is at chance level: all logits equal.
    zero = probe.train_linear_probe(feats[:300], labels[:300], num_classes=5, epochs=0)
    np.testing.assert_allclose(np.asarray(probe.probe_logits(zero, feats[:3])), 0.0)


@pytest.mark.slow  # shares the Table 1 fixture's trained students
def test_transfer_probe_on_distilled_students(table1_root, tmp_path):
    root, data, _ = table1_root
    from luminet_jax.data import input_pipeline  # noqa: PLC0415

    workdirs = transfer.find_workdirs(root, "res32x4_res8x4", ["vanilla", "luminet", "kd"])
    assert list(workdirs) == ["luminet"] and len(workdirs["luminet"]) == 1  # with checkpoints
    name = f"image_folder:{data}"
    train = input_pipeline.load_arrays(name, "train")
    evaluation = input_pipeline.load_arrays(name, "eval")
    out = transfer.transfer(
        workdirs,
        model_name="resnet8",
        num_classes=CLASSES,
        train=train,
        evaluation=evaluation,
        norm=transfer.NORMS["imagenet"],
        probe_kwargs=dict(epochs=30, learning_rate=1e-2),
        random_init=True,
        log=lambda _: None,
    )
    assert [r["method"] for r in out["runs"]] == ["random init", "luminet"]
    assert all(r["feature_dim"] == 64 for r in out["runs"])  # resnet8's pooled width
    # Colour classes are linearly separable even from random conv features.
    assert out["methods"]["random init"]["top1"][0] > 0.5
    assert out["methods"]["luminet"]["n"] == 1
    table = transfer.markdown(out["methods"]).splitlines()
    assert len(table) == 2 + 2 and table[3].startswith("| LumiNet | 1 |")
    png = transfer.plot(out["methods"], str(tmp_path / "transfer.png"), "t")
    assert os.path.getsize(png) > 1000


def test_features_resize_to_the_model_input():
    x = np.full((3, 8, 8, 3), 255, np.uint8)
    out = probe.preprocess(x, size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    chex.assert_shape(out, (3, 32, 32, 3))
    np.testing.assert_allclose(np.asarray(out), 1.0, atol=1e-5)
    assert jax.numpy.isfinite(out).all()


@pytest.mark.slow  # times every method's step (~25 s)
def test_table3_times_each_method(tmp_path):
    from experiments.table3_time import run as t3_run  # noqa: PLC0415

    tiny = "--pair resnet8:resnet8 --batch 8 --steps 2 --image-size 8 --num-classes 4 --out-dir"
    rows, table = t3_run.main(_argv(f"--methods kd --in-process {tiny}", str(tmp_path)))
    assert [r["method"] for r in rows] == ["kd"]
    assert rows[0]["ms_per_step"] > 0 and rows[0]["extra_params"] == 0
    assert table.splitlines()[2].startswith("| jax/kd |") and "| 1.00 | 0 | - | 11 |" in table
    assert json.loads((tmp_path / "table3.json").read_text())["rows"][0]["method"] == "kd"
    # The LumiNet row (all methods are timed in the slow test) has the same layout.
    row = dict(rows[0], label="jax/luminet", method="luminet", ratio_to_kd=1.02)
    assert (
        t3_run.markdown([row], {"luminet": (0.5, 0.01)})
        .splitlines()[2]
        .endswith("| 1.02 | 0 | 50.00 ± 1.00 | 11 | 1.00 | 0 |")
    )
    assert (tmp_path / "step.json").exists() and (tmp_path / "table3.png").exists()
    # Every method of the paper's Table 3 has a row, timed or not (CRD with the paper's 41 ms).
    assert len(table.split("\n\n")[0].splitlines()) == 2 + len(t3_run.TABLE3_METHODS)
    assert "| crd (not run here) | - | - | - | - | - | 41 | 3.73 | 12.3M |" in table


# ---- Heavier end-to-end paths (pytest -m slow) ----


@pytest.mark.slow
def test_train_teachers_then_students_and_transfer_cli(tmp_path):
    data = _image_folder(tmp_path / "data")
    root = str(tmp_path / "runs")
    argv = _argv("--pairs res56_res20 --methods vanilla,kd,dkd --seeds 0 --train-teachers --root")
    records = t1_run.main(argv + [root, *_tiny_args(data)])
    assert [os.path.relpath(r["workdir"], root) for r in records] == [
        "teachers/resnet8", "res56_res20/vanilla/seed0", "res56_res20/kd/seed0",
        "res56_res20/dkd/seed0",
    ]  # fmt: skip
    assert len(t1_collect.main(["--root", root])[2].splitlines()) == 2 + 3
    argv = _argv("--group res56_res20 --model resnet8 --num-classes 4 --methods vanilla,kd")
    argv += _argv("--norm imagenet --epochs 5 --dataset", f"image_folder:{data}", "--root", root)
    out = transfer.main(argv + ["--out-dir", str(tmp_path / "out")])
    assert [r["method"] for r in out["runs"]] == ["vanilla", "kd"]
    assert (tmp_path / "out" / "transfer.png").exists()


@pytest.mark.slow
def test_ensemble_sweep_trains_each_teacher_and_plots(tmp_path):
    data = _image_folder(tmp_path / "data")
    root = str(tmp_path / "runs")
    argv = _argv("--panel ensemble --values resnet8,resnet14 --seeds 0 --train-teachers --root")
    argv += [root, *_tiny_args(data, names=False), "--override", "student.name=resnet8"]
    records = sweep.main(argv)
    assert len(records) == 2 + 3 and all(r["status"] == "done" for r in records)
    written = fig4_plot.main(["--root", root, "--out-dir", str(tmp_path / "out")])
    assert list(written) == ["ensemble"] and os.path.exists(written["ensemble"])


@pytest.mark.slow
def test_table5_autoaugment_streams_through_tf_data(tmp_path):
    data = _image_folder(tmp_path / "data")
    root = str(tmp_path / "runs")
    argv = _argv("--pairs res56_res20 --methods vanilla --seeds 0 --root", root)
    assert t5_run.main(argv + _tiny_args(data))[0]["status"] == "done"
    assert results.collect(root)[0].steps == 3


@pytest.mark.slow
def test_table6_vit_runner(tmp_path):
    from experiments.table6_vit import run as t6_run  # noqa: PLC0415

    data = _image_folder(tmp_path / "data")
    root = str(tmp_path / "runs")
    teacher = models.get_model("deit_small", num_classes=CLASSES, patch_size=4)
    variables = teacher.init(jax.random.key(1), np.zeros((1, 8, 8, 3), np.float32), train=False)
    checkpoint.save_variables(os.path.join(root, "teachers", "deit_small"), variables)
    argv = _argv("--seeds 0 --methods kd,luminet --root", root, *_tiny_args(data, names=False))
    records = t6_run.main(argv)
    assert [r["status"] for r in records] == ["done", "done"]


@pytest.mark.integration
@pytest.mark.slow
def test_table3_all_methods(tmp_path):
    from experiments.table3_time import run as t3_run  # noqa: PLC0415

    tiny = "--pair resnet8:resnet8 --batch 8 --steps 2 --image-size 8 --num-classes 4 --out-dir"
    # ReviewKD's channels and shapes are the real pair's: every other method of --methods all.
    methods = [m for m in t3_run.default_methods() if m != "reviewkd"]
    rows, _ = t3_run.main(_argv(f"--methods {','.join(methods)} {tiny}", str(tmp_path)))
    assert [r["method"] for r in rows] == methods  # (as a subprocess)
    assert all(r["extra_params"] == 0 for r in rows if r["method"] in ("kd", "dkd", "luminet"))


def test_reduced_study_pairs_seeds(tmp_path, capsys):
    from experiments.reduced_cifar10 import collect as red_collect  # noqa: PLC0415
    from experiments.reduced_cifar10 import run as red_run  # noqa: PLC0415

    red_run.main(_argv("--seeds 0,1 --print-only --root", str(tmp_path)))
    lines = _commands(capsys)
    assert "method=teacher,epochs=15" in lines[0] and len(lines) == 1 + 2 * 3
    assert "kd,epochs=8" in lines[2] and "--config.seed=0" in lines[2]  # seed by seed
    accs = {"vanilla": (0.50, 0.52, 0.51), "kd": (0.55, 0.56, 0.57), "luminet": (0.57, 0.59, 0.58)}
    for method, values in accs.items():
        for seed, value in enumerate(values):
            _write_metrics(tmp_path / f"res20_res8/{method}/seed{seed}", [(value, 0.9)])
    _, summary, table = red_collect.main(
        ["--root", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    )
    diff = summary["paired"]["luminet-kd"]
    np.testing.assert_allclose(diff["diffs"], [0.02, 0.03, 0.01], atol=1e-12)
    np.testing.assert_allclose(diff["t"], 0.02 / (0.01 / np.sqrt(3)))
    assert "| LumiNet − KD | 3 | +2.0, +3.0, +1.0 | 2.00 ± 1.00 | 3.46 |" in table
    assert (tmp_path / "o" / "accuracy.png").exists()


@pytest.mark.integration  # starts a Python subprocess
def test_subprocess_runs_import_the_checkout_under_pythonsafepath(tmp_path, monkeypatch):
    # A user's PYTHONSAFEPATH keeps the working directory off sys.path, so a run's
    # `python -m luminet_jax.main` must find this checkout through its environment. The
    # stand-in interpreter imports what that command would and prints where it came from.
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2" = "-m luminet_jax.main" ] || exit 3\n'
        f'exec "{sys.executable}" -c "import luminet_jax.main as m; print(m.__file__)"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PYTHONSAFEPATH", "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    run = runs.Run("configs/quickstart.py:teacher", str(tmp_path / "run"))
    records = runs.launch([run], python=str(fake), out=io.StringIO())
    assert [r["status"] for r in records] == ["done"]
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.strip() == str(runs.REPO / "luminet_jax" / "main.py")
