"""The teacher zoo (luminet_jax.teachers) against files served from 127.0.0.1 in the real
layouts: mdistiller's `cifar_teachers.tar` (`cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth`,
random weights of the real architectures, torch's zip and legacy formats), a torchvision-named
`.pth` (its name carrying its sha256 prefix) and a detectron2 `model_final_*.pkl`.
`LUMINET_TEACHER_MIRROR` / `mirror=` points every source at the local server; nothing here
reaches the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
import time

import jax
import numpy as np
import pytest
import zoo_files

from luminet_jax import (
    checkpoint,
    cli,
    downloads,
    launch,
    teacher_cache,
    teacher_zoo,
    teachers,
    torch_files,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAR_PATH = "/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
# Saved in torch's pre-1.6 format, from GPU tensors (as checkpoints of 2019 are).
LEGACY = ("resnet56", "wrn_40_2", "resnet50_cifar")


@pytest.fixture(scope="module")
def weights():
    """zoo name -> the state_dict in its served checkpoint (`View`s of shared pools: files of
    a few MB with the real keys and shapes)."""
    out = {}
    for seed, name in enumerate(teacher_zoo.TEACHERS):
        teacher = teacher_zoo.TEACHERS[name]
        if teacher.in_archive or name == "resnet18":
            out[name] = zoo_files.state_dict(teacher.model, teacher.num_classes, seed=seed)
    return out


def _array(weights, name: str, key: str) -> np.ndarray:
    return np.asarray(weights[name][key].numpy())


def _tar(weights, names=None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in names or [n for n, t in teacher_zoo.TEACHERS.items() if t.in_archive]:
            ckpt = {"model": weights[name], "epoch": 240, "accuracy": np.float32(70.0)}
            data = zoo_files.torch_bytes(ckpt, legacy=name in LEGACY, cuda=name in LEGACY)
            info = tarfile.TarInfo(teacher_zoo.TEACHERS[name].in_archive)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(weights):
    """The local server with the real-layout files, and the torchvision file's name."""
    resnet18 = zoo_files.torch_bytes(weights["resnet18"])
    digest = hashlib.sha256(resnet18).hexdigest()[:8]
    files = {TAR_PATH: _tar(weights), f"/models/resnet18-{digest}.pth": resnet18}
    with zoo_files.Server(files) as server:
        yield server, f"/models/resnet18-{digest}.pth", digest


@pytest.fixture
def zoo(served, tmp_path, monkeypatch):
    """Per test: an empty cache, the mirror on the local server (as environment variables),
    and the torchvision entry renamed to the served file (its own sha256 prefix)."""
    server, path, digest = served
    source = teacher_zoo.SOURCES["torchvision_resnet18"]
    url = f"https://download.pytorch.org{path}"
    monkeypatch.setitem(
        teacher_zoo.SOURCES,
        "torchvision_resnet18",
        dataclasses.replace(source, url=url, sha256_prefix=digest),
    )
    cache = str(tmp_path / "cache")
    monkeypatch.setenv(teachers.CACHE_ENV, cache)
    monkeypatch.setenv(teachers.MIRROR_ENV, server.url)
    return server, cache


def _gets(server, path: str, since: int = 0) -> list[str | None]:
    """The Range headers of the requests for `path` after the first `since` requests."""
    return [r for p, r in server.log[since:] if p == path]


def _dead_mirror() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: connection refused


def _leaf(tree, *path):
    for p in path:
        tree = tree[p]
    return np.asarray(tree)


@pytest.mark.integration  # heavy: the second tier
def test_fetch_converts_once_and_later_runs_need_no_network(zoo, weights, capsys):
    server, cache = zoo
    start = len(server.log)
    variables = teachers.load_teacher("zoo:resnet56", "resnet56", num_classes=100)
    fc = _leaf(variables, "params", "fc", "kernel")
    np.testing.assert_array_equal(fc, _array(weights, "resnet56", "fc.weight").T)
    var = _leaf(variables, "batch_stats", "bn1", "var")
    np.testing.assert_array_equal(var, _array(weights, "resnet56", "bn1.running_var"))
    assert _gets(server, TAR_PATH, start) == [None]  # one whole download
    converted = teacher_cache.Cache(cache).converted("resnet56", 100)
    assert os.path.isdir(converted)
    # Later: the cache alone, no request even with the network gone.
    offline = dict(mirror=_dead_mirror())
    assert (
        teachers.resolve("zoo:resnet56", model="resnet56", num_classes=100, **offline) == converted
    )
    again = teachers.load_teacher("zoo:resnet56", "resnet56", num_classes=100)
    np.testing.assert_array_equal(_leaf(again, "params", "fc", "kernel"), fc)
    # Another teacher of the archive: extracted from the cached download, no request.
    wrn = teachers.resolve("zoo:wrn_40_2", model="wrn_40_2", num_classes=100, **offline)
    assert os.path.isdir(wrn) and _gets(server, TAR_PATH, start) == [None]
    # luminet-convert takes zoo names too (the model from the entry), from the cache.
    out = os.path.join(cache, "..", "converted_by_cli")
    from luminet_jax import convert  # noqa: PLC0415

    convert.main(["--torch", "zoo:resnet56", "--out", out])
    np.testing.assert_array_equal(
        _leaf(checkpoint.load_variables(out), "params", "fc", "kernel"), fc
    )
    # The manual alternative to the zoo: the checkpoint file itself as the teacher.
    by_hand = checkpoint.load_teacher(
        teachers.local_file("zoo:resnet56"), "resnet56", num_classes=100
    )
    np.testing.assert_array_equal(_leaf(by_hand, "params", "fc", "kernel"), fc)
    with pytest.raises(SystemExit) as exit_info:
        teachers.main(["path", "resnet56"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.endswith("\n" + converted + "\n")
    results = dict((name, (ok, text)) for name, ok, text in teachers.verify(cache=cache))
    assert results["resnet56"][0] and "861,620 weights" in results["resnet56"][1]
    assert results["resnet18"] == (True, "not cached")


def test_list_works_offline_and_shows_the_cache(zoo, monkeypatch, capsys):
    _, cache = zoo
    teachers.resolve("zoo:resnet56", model="resnet56", num_classes=100)

    def no_network(*args, **kwargs):
        raise AssertionError("list opened a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    with pytest.raises(SystemExit) as exit_info:
        teachers.main(["list"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert list(rows) == list(teacher_zoo.TEACHERS)  # one line per teacher, its name first
    assert "converted (100 cl.)" in rows["resnet56"]
    assert rows["resnet110"].split()[6] == "archive" and rows["resnet34"].split()[6] == "-"
    assert "sha256" in rows["resnet34"] and "download.pytorch.org" in rows["resnet34"]
    assert "7,433,860 weights" in rows["resnet32x4"] and "cifar_teachers.tar" in rows["vgg13"]
    assert lines[-1] == f"cache: {cache}"


def test_interrupted_download_resumes_where_it_stopped(zoo):
    server, cache = zoo
    size, start = len(server.files[TAR_PATH]), len(server.log)
    server.cut_once(TAR_PATH, size // 3)
    with pytest.raises(downloads.DownloadError, match="cut off after") as info:
        teachers.local_file("zoo:resnet32x4")
    assert "\n" not in str(info.value)
    final = teacher_cache.Cache(cache).download(teacher_zoo.SOURCES["mdistiller_cifar_teachers"])
    assert os.path.getsize(final + ".part") == size // 3 and not os.path.exists(final)
    path = teachers.local_file("zoo:resnet32x4")
    assert _gets(server, TAR_PATH, start) == [None, f"bytes={size // 3}-"]
    with open(final, "rb") as f:
        assert f.read() == server.files[TAR_PATH]
    assert not os.path.exists(final + ".part")
    assert torch_files.parameter_count(torch_files.load_state_dict(path)) == 7_433_860


def test_corrupt_or_truncated_files_are_rejected_and_nothing_is_cached(zoo, served, weights):
    server, cache = zoo
    _, resnet18_path, _ = served
    downloads_dir = os.path.join(cache, "downloads")
    good = server.files[resnet18_path]
    bad = {  # mirror prefix -> (what is served, the error)
        "/corrupt": (TAR_PATH, _tar(weights)[:-30000], "unexpected end of data|truncated"),
        "/partial": (TAR_PATH, _tar(weights, ["resnet56", "resnet32x4"]), "lacks"),
        "/flipped": (resnet18_path, good[:1000] + bytes([good[1000] ^ 1]) + good[1001:], "sha256"),
    }
    for prefix, (path, data, error) in bad.items():
        server.files[prefix + path] = data
        name = "zoo:resnet18" if "resnet18" in path else "zoo:resnet56"
        with pytest.raises(ValueError, match=f"fails its check: .*({error}).*nothing is cached"):
            teachers.local_file(name, mirror=server.url + prefix)
        assert os.listdir(downloads_dir) == [], prefix  # neither the file nor a .part
    # A checkpoint in the archive that is not the published architecture's: not extracted.
    wrong = dict(weights, resnet56=weights["resnet110"])
    server.files["/swapped" + TAR_PATH] = _tar(wrong)
    with pytest.raises(ValueError, match="1,736,564 weights where resnet56"):
        teachers.local_file("zoo:resnet56", mirror=server.url + "/swapped")
    assert not os.path.exists(teacher_cache.Cache(cache).extracted("resnet56"))


@pytest.mark.integration
def test_two_processes_race_for_one_entry(zoo):
    """Process A downloads (held halfway by the server) while process B waits for A's lock;
    one download serves both."""
    server, cache = zoo
    start = len(server.log)
    gate = server.gate(TAR_PATH)
    code = "from luminet_jax import teachers; print(teachers.local_file('zoo:resnet110'))"
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = [sys.executable, "-c", code]
    a = subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _gets(server, TAR_PATH, start) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gets(server, TAR_PATH, start), "process A never asked for the archive"
        b = subprocess.Popen(
            run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        waiting = b.stderr.readline()  # B's first status line: it waits for A's lock
        assert "waiting for" in waiting and "fetching cifar_teachers.tar" in waiting, waiting
        gate.set()
        out_a, err_a = a.communicate(timeout=120)
        out_b, err_b = b.communicate(timeout=120)
    finally:
        gate.set()
        server.httpd.gates.pop(TAR_PATH, None)
        a.kill()
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert out_a == out_b == teacher_cache.Cache(cache).extracted("resnet110") + "\n"
    assert _gets(server, TAR_PATH, start) == [None]


def test_only_process_0_downloads(zoo, monkeypatch):
    server, cache = zoo
    start = len(server.log)
    monkeypatch.setattr(teachers, "WAIT_S", 0.5)
    with pytest.raises(TimeoutError, match="process 0"):  # alone, process 1 only waits
        teachers.local_file("zoo:resnet32x4", process_index=1)
    assert _gets(server, TAR_PATH, start) == []
    monkeypatch.setattr(teachers, "WAIT_S", 300.0)
    result = {}
    waiter = threading.Thread(
        target=lambda: result.update(p1=teachers.local_file("zoo:resnet32x4", process_index=1))
    )
    waiter.start()
    p0 = teachers.local_file("zoo:resnet32x4", process_index=0)
    waiter.join(timeout=300)
    assert result["p1"] == p0 and _gets(server, TAR_PATH, start) == [None]


@pytest.mark.integration
def test_a_crashed_fetch_leaves_nothing_in_the_way(zoo):
    """A process killed while holding an entry's lock, with a half-written entry: the lock
    file stays but binds no one, and the half-written file is neither used nor kept."""
    _, cache = zoo
    root = teacher_cache.Cache(cache)
    extracted = root.extracted("resnet56")
    os.makedirs(os.path.dirname(extracted))
    half = extracted + ".tmp-otherhost-123"
    with open(half, "wb") as f:
        f.write(b"half a checkpoint")
    code = (
        "import sys, time; from luminet_jax import downloads\n"
        "with downloads.lock(sys.argv[1], what='a test'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    holder = subprocess.Popen(
        [sys.executable, "-c", code, root.lock(extracted)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait(timeout=60)
    assert os.path.exists(root.lock(extracted))
    assert teachers.local_file("zoo:resnet56") == extracted
    assert not os.path.exists(half)
    assert torch_files.parameter_count(torch_files.load_state_dict(extracted)) == 861_620


def test_fetch_of_several_names_reports_each(zoo, capsys):
    with pytest.raises(SystemExit) as exit_info:
        teachers.main(["fetch", "resnet56", "resnet34"])  # resnet34 is not served: HTTP 404
    assert exit_info.value.code == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["resnet56", teacher_cache.Cache(zoo[1]).converted("resnet56", 100)]
    assert out[1].startswith("resnet34") and "FAILED: could not download" in out[1]
    assert "HTTP 404" in out[1]


def test_offline_ends_with_one_line_url_cache_path_and_what_to_do(zoo, monkeypatch, capsys):
    _, cache = zoo
    dead = _dead_mirror()
    monkeypatch.setenv(teachers.MIRROR_ENV, dead)
    with pytest.raises(SystemExit) as exit_info:
        teachers.main(["fetch", "resnet32x4"])
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.splitlines()[-1]
    final = os.path.join(cache, "downloads", "cifar_teachers.tar")
    assert last.startswith("python -m luminet_jax.teachers: error: could not download ")
    assert f"{dead}{TAR_PATH}" in last and f"into {final};" in last
    assert "tar xf cifar_teachers.tar cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth" in last
    assert "--config.teacher.checkpoint=PATH/cifar_teachers/resnet32x4_vanilla/" in last
    with pytest.raises(downloads.DownloadError, match="backbone_checkpoint=PATH/resnet18-"):
        teachers.local_file("zoo:resnet18", option=teachers.BACKBONE_OPTION)


def test_torchvision_file_is_checked_by_its_name_and_classes_must_match(zoo, served, weights):
    server, cache = zoo
    _, path, digest = served
    start = len(server.log)
    with pytest.raises(ValueError, match="trained with 1000 classes .* this run has 10"):
        teachers.resolve("zoo:resnet18", model="resnet18", num_classes=10)
    with pytest.raises(ValueError, match="is a resnet18, but the teacher model is 'resnet34'"):
        teachers.resolve("zoo:resnet18", model="resnet34", num_classes=1000)
    assert server.log[start:] == []  # refused before any download
    file = teachers.local_file("zoo:resnet18")
    assert os.path.basename(file) == f"resnet18-{digest}.pth" and _gets(server, path, start)
    loaded = torch_files.load_state_dict(file)
    np.testing.assert_array_equal(loaded["fc.weight"], _array(weights, "resnet18", "fc.weight"))
    checked = f"{os.path.basename(file)}: sha256 {digest}"
    assert teachers.verify(["resnet18"], cache) == [("resnet18", True, checked)]


def test_detectron2_pickle_loads_as_the_detection_teacher(zoo, monkeypatch):
    from luminet_jax.detection import convert, rcnn  # noqa: PLC0415
    from luminet_jax.tasks import detection as task  # noqa: PLC0415

    server, cache = zoo
    tiny = importlib.import_module("tiny_detector")
    model = rcnn.get_detector("faster_rcnn_r18_fpn", **tiny.TINY)
    leaves = convert._flat_leaves(rcnn.abstract_variables(model))
    rng = np.random.default_rng(0)
    sd = {}
    for _, path, spec in leaves:
        shape = tuple(spec.shape)
        if path[-1] == "kernel":
            shape = (shape[-1], shape[-2], *shape[:-2]) if len(shape) == 4 else shape[::-1]
        sd[convert.detectron2_key(path)] = rng.normal(size=shape).astype(np.float32)
    buffers = {"pixel_mean": np.zeros((3, 1, 1), np.float32), "pixel_std": np.ones((3, 1, 1))}
    blob = pickle.dumps({"model": {**sd, **buffers}, "__author__": "Detectron2 Model Zoo"})
    server.files["/detectron2/tiny/1/model_final_000000.pkl"] = blob
    url = "https://dl.fbaipublicfiles.com/detectron2/tiny/1/model_final_000000.pkl"
    monkeypatch.setitem(teacher_zoo.SOURCES, "tiny", teacher_zoo.Source(url=url))
    count = torch_files.parameter_count(sd)
    entry = teacher_zoo.Teacher(
        source="tiny", kind="detector", model="faster_rcnn_r18_fpn", params=count,
        num_classes=tiny.NUM_CLASSES, ignore=teacher_zoo.TEACHERS["faster_rcnn_r101_fpn"].ignore,
    )  # fmt: skip
    monkeypatch.setitem(teacher_zoo.TEACHERS, "tiny_frcnn", entry)
    variables = task.load_detector_variables("zoo:tiny_frcnn", model)
    kernel = _leaf(variables, "params", "roi_heads", "box_predictor", "cls_score", "kernel")
    np.testing.assert_array_equal(kernel, sd["roi_heads.box_predictor.cls_score.weight"].T)
    # The same file without one tensor: its weights do not add up; rejected, nothing cached.
    del sd["roi_heads.box_predictor.bbox_pred.bias"]
    server.files["/short/detectron2/tiny/1/model_final_000000.pkl"] = pickle.dumps({"model": sd})
    with pytest.raises(ValueError, match=f"holds {count - tiny.NUM_CLASSES * 4:,} weights"):
        teachers.local_file("zoo:tiny_frcnn", cache=cache + "2", mirror=server.url + "/short")
    assert os.listdir(os.path.join(cache + "2", "downloads")) == []


def test_paper_configs_name_their_teachers_by_zoo_name(zoo):
    server, _ = zoo
    start = len(server.log)
    pairs = [n for n in cli.config_names() if n.startswith("cifar100_")]
    pairs = sorted(set(pairs) - {"cifar100_teacher", "cifar100_deits_vitc"})
    assert len(pairs) == 11, pairs
    for name in [*pairs, "imagenet_r34_r18", "imagenet_r50_mv1", "coco_frcnn_r101_r18"]:
        for method in ("luminet", "vanilla"):
            config = cli.load_config_module(name).get_config(f"method={method}")
            zoo_name, entry = teachers.lookup(config.teacher.checkpoint)
            assert (
                config.teacher.checkpoint == f"zoo:{zoo_name}"
                and entry.model == config.teacher.name
            )
            launch.preflight(config)  # names checked, nothing fetched
    coco = cli.load_config_module("coco_frcnn_r101_r18").get_config("method=kd")
    assert teachers.lookup(coco.student.backbone_checkpoint)[0] == "resnet18"
    assert server.log[start:] == []
    bad = cli.load_config_module("cifar100_res56_res20").get_config("method=kd")
    bad.teacher.checkpoint = "zoo:resnet57"
    with pytest.raises(KeyError, match="Unknown zoo teacher 'resnet57'; known: resnet56, "):
        launch.preflight(bad)


@pytest.mark.integration  # heavy: the second tier
def test_recorded_weight_counts_are_the_architectures():
    from luminet_jax.detection import rcnn  # noqa: PLC0415
    from luminet_jax.models import torch_convert  # noqa: PLC0415

    def count(tree, skip=("running_mean", "running_var")):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return sum(int(np.prod(x.shape)) for p, x in flat if str(p[-1].key) not in skip)

    detectors = {}
    for name, entry in teacher_zoo.TEACHERS.items():
        if entry.kind == "classifier":
            abstract = torch_convert.abstract_variables(entry.model, num_classes=entry.num_classes)
            assert count(abstract["params"]) == entry.params, name
            continue
        if entry.model not in detectors:
            model = rcnn.get_detector(entry.model, num_classes=80)
            detectors[entry.model] = rcnn.abstract_variables(model)
        abstract = detectors[entry.model]
        if entry.kind == "backbone":
            abstract = {c: abstract[c]["backbone"]["bottom_up"] for c in ("params", "frozen")}
        assert count(abstract) == entry.params, name


def test_mirror_replaces_scheme_and_host():
    url = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/x.tar"
    assert downloads.mirror_url(url, "") == url
    assert downloads.mirror_url(url, "http://10.0.0.1:8080") == (
        "http://10.0.0.1:8080/megvii-research/mdistiller/releases/download/checkpoints/x.tar"
    )
    assert downloads.mirror_url(url, "http://m/zoo/").startswith("http://m/zoo/megvii-research/")
    with pytest.raises(ValueError, match="not a URL"):
        downloads.mirror_url(url, "mirror.local")


def _cifar100_python(folder, rng) -> None:
    """A cifar-100-python.tar.gz with 32 train and 16 test images of the 100 classes."""
    with tarfile.open(folder / "cifar-100-python.tar.gz", "w:gz") as archive:
        blobs = {
            split: {
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"fine_labels": [int(x) for x in rng.integers(0, 100, n)],
            }
            for split, n in (("train", 32), ("test", 16))
        }
        blobs["meta"] = {b"fine_label_names": [f"class{i}".encode() for i in range(100)]}
        for name, obj in blobs.items():
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.integration
def test_config_naming_zoo_resnet32x4_trains_two_steps(zoo, tmp_path):
    from luminet_jax import metrics_io, train  # noqa: PLC0415

    server, cache = zoo
    start = len(server.log)
    _cifar100_python(tmp_path, np.random.default_rng(0))
    config = cli.load_config_module("cifar100_res32x4_res8x4").get_config("method=kd")
    assert config.teacher.checkpoint == "zoo:resnet32x4"
    config.dataset.name, config.dataset.data_dir = "cifar100_local", str(tmp_path)
    config.student.name = "resnet8"  # the paper's resnet8x4 compiles longer; same teacher
    config.batch_size = config.eval_batch_size = 16
    config.num_train_steps, config.log_every_steps = 2, 1
    config.eval_teacher = False
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["steps"] == 2
    losses = [
        r["train/loss_kd"]
        for r in metrics_io.read_metrics(str(tmp_path / "run"))
        if "train/loss_kd" in r
    ]
    assert len(losses) == 2 and all(np.isfinite(losses)) and max(losses) > 0
    assert _gets(server, TAR_PATH, start) == [None]
    assert os.path.isdir(teacher_cache.Cache(cache).converted("resnet32x4", 100))


def test_methods_without_a_teacher_never_fetch(tmp_path, monkeypatch):
    from luminet_jax import sharding, tasks  # noqa: PLC0415

    def no_fetch(*args, **kwargs):
        raise AssertionError("a method without a teacher reached the zoo")

    monkeypatch.setattr(teachers, "resolve", no_fetch)
    monkeypatch.setattr(teachers, "local_file", no_fetch)
    _cifar100_python(tmp_path, np.random.default_rng(0))
    for method in ("vanilla", "dml"):
        config = cli.load_config_module("cifar100_res32x4_res8x4").get_config(f"method={method}")
        assert config.teacher.checkpoint == "zoo:resnet32x4"
        config.dataset.name, config.dataset.data_dir = "cifar100_local", str(tmp_path)
        config.batch_size = config.eval_batch_size = 16
        launch.preflight(config)
        task = tasks.build(config, mesh=sharding.make_mesh())
        assert task.teacher_variables is None
