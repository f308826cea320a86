"""The published teachers the zoo knows (`zoo:NAME`): where each file is and how it is checked.

The entries and the checks of their files (no network, no jax); `luminet_jax.teachers`
fetches, converts and caches them. Names are the
model names of DESIGN.md section 2 for classifiers and the `detection.rcnn.DETECTORS` keys for
detectors; `msra_r50` / `msra_r101` are the ImageNet backbones detectron2's detectors start
from (for `config.student.backbone_checkpoint`; `resnet18` serves the R-18 student so too).

Checks. torch.hub's own: torchvision's file names carry the first hex digits of the file's
sha256, which the download must match. mdistiller and detectron2 publish no hash, so the zoo
checks what is known instead: the archive's layout (the files it holds), the number of weights in
each checkpoint (`torch_files.parameter_count`, minus the keys in `ignore`) against the
reference architecture's, and, when loading, every key and shape (`models.from_torch`,
`detection.convert`).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import tarfile
import urllib.parse

from luminet_jax import downloads, torch_files


@dataclasses.dataclass(frozen=True)
class Source:
    """A published file.

    Attributes:
      url: where its publisher serves it.
      sha256_prefix: leading hex digits of its sha256 ("" when none is published).
      contents: the files an archive must hold (tar files).
      publisher: who publishes it and where the URL is documented.
    """

    url: str
    sha256_prefix: str = ""
    contents: tuple[str, ...] = ()
    publisher: str = ""

    @property
    def file(self) -> str:
        """The file's name (the last part of the URL's path)."""
        return posixpath.basename(urllib.parse.urlsplit(self.url).path)


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A published checkpoint.

    Attributes:
      source: its key in SOURCES.
      kind: "classifier" (config.teacher.checkpoint of a classification run), "detector"
        (of a detection run) or "backbone" (config.student.backbone_checkpoint).
      model: the `models` name (classifiers) or `rcnn.DETECTORS` key (detectors; for a
        backbone, the detector whose ResNet it fills).
      params: the number of weights in the checkpoint (BatchNorm statistics and the keys
        starting with one of `ignore` not counted), the reference architecture's count.
      num_classes: the classes it was trained on (0 for a backbone).
      in_archive: the file inside the source archive ("" when the source is the file).
      classifier: the key of its final layer's weight (out, in): the file's class count.
      ignore: key prefixes that `params` leaves out (buffers, a backbone's ImageNet head).
      published: its accuracy as its publisher reports it.
    """

    source: str
    kind: str
    model: str
    params: int
    num_classes: int = 0
    in_archive: str = ""
    classifier: str = ""
    ignore: tuple[str, ...] = ()
    published: str = ""


# mdistiller's release "checkpoints" (README: "Download the cifar_teachers.tar at
# https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"); in-archive paths as
# mdistiller/models/cifar/__init__.py's cifar_model_dict reads them.
_CIFAR = "cifar_teachers/{}_vanilla/ckpt_epoch_240.pth"
_CIFAR_DIRS = {  # zoo name -> mdistiller's folder name
    "resnet56": "resnet56",
    "resnet110": "resnet110",
    "resnet32x4": "resnet32x4",
    "wrn_40_2": "wrn_40_2",
    "vgg13": "vgg13",
    "resnet50_cifar": "ResNet50",
}
# torchvision's IMAGENET1K_V1 weights (torchvision/models/resnet.py; torch.hub.load_state_dict_
# from_url(check_hash=True) compares the name's hex part with the sha256's beginning).
_TORCHVISION = "https://download.pytorch.org/models/{}"
# detectron2's model zoo (detectron2/model_zoo/model_zoo.py, S3_PREFIX + config path + model
# id / model_final_<commit>.pkl) and its MSRA ImageNet backbones (detectron2/checkpoint/
# catalog.py, ImageNetPretrained/MSRA/R-{50,101}.pkl). The suffix is a commit, not a hash.
_DETECTRON2 = "https://dl.fbaipublicfiles.com/detectron2/{}"
_D2_IGNORE = ("pixel_mean", "pixel_std", "proposal_generator.anchor_generator.")

SOURCES = {
    "mdistiller_cifar_teachers": Source(
        url="https://github.com/megvii-research/mdistiller/releases/download/checkpoints/"
        "cifar_teachers.tar",
        contents=tuple(_CIFAR.format(d) for d in _CIFAR_DIRS.values()),
        publisher="mdistiller (megvii-research), release 'checkpoints'",
    ),
    "torchvision_resnet18": Source(
        url=_TORCHVISION.format("resnet18-f37072fd.pth"),
        sha256_prefix="f37072fd",
        publisher="torchvision, ResNet18_Weights.IMAGENET1K_V1",
    ),
    "torchvision_resnet34": Source(
        url=_TORCHVISION.format("resnet34-b627a593.pth"),
        sha256_prefix="b627a593",
        publisher="torchvision, ResNet34_Weights.IMAGENET1K_V1",
    ),
    "torchvision_resnet50": Source(
        url=_TORCHVISION.format("resnet50-0676ba61.pth"),
        sha256_prefix="0676ba61",
        publisher="torchvision, ResNet50_Weights.IMAGENET1K_V1",
    ),
    "detectron2_faster_rcnn_R_101_FPN_3x": Source(
        url=_DETECTRON2.format(
            "COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl"
        ),
        publisher="detectron2 model zoo, COCO-Detection/faster_rcnn_R_101_FPN_3x",
    ),
    "detectron2_faster_rcnn_R_50_FPN_3x": Source(
        url=_DETECTRON2.format(
            "COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
        ),
        publisher="detectron2 model zoo, COCO-Detection/faster_rcnn_R_50_FPN_3x",
    ),
    "detectron2_msra_r50": Source(
        url=_DETECTRON2.format("ImageNetPretrained/MSRA/R-50.pkl"),
        publisher="detectron2, ImageNetPretrained/MSRA/R-50.pkl (Caffe2 MSRA weights)",
    ),
    "detectron2_msra_r101": Source(
        url=_DETECTRON2.format("ImageNetPretrained/MSRA/R-101.pkl"),
        publisher="detectron2, ImageNetPretrained/MSRA/R-101.pkl (Caffe2 MSRA weights)",
    ),
}


def _cifar(name: str, params: int, top1: str, model: str = "", classifier: str = "fc.weight"):
    return Teacher(
        source="mdistiller_cifar_teachers",
        kind="classifier",
        model=model or name,
        params=params,
        num_classes=100,
        in_archive=_CIFAR.format(_CIFAR_DIRS[name]),
        classifier=classifier,
        published=f"CIFAR-100 top-1 {top1}",
    )


def _torchvision(name: str, params: int, top1: str) -> Teacher:
    return Teacher(
        source=f"torchvision_{name}",
        kind="classifier",
        model=name,
        params=params,
        num_classes=1000,
        classifier="fc.weight",
        published=f"ImageNet top-1 {top1}",
    )


TEACHERS = {
    # Parameter counts: DESIGN.md section 2 (equal to mdistiller's models); top-1: DESIGN.md
    # section 3 (the published accuracies of these checkpoints).
    "resnet56": _cifar("resnet56", 861_620, "72.34"),
    "resnet110": _cifar("resnet110", 1_736_564, "74.31"),
    "resnet32x4": _cifar("resnet32x4", 7_433_860, "79.42"),
    "wrn_40_2": _cifar("wrn_40_2", 2_255_156, "75.61"),
    "vgg13": _cifar("vgg13", 9_462_180, "74.64", classifier="classifier.weight"),
    "resnet50_cifar": _cifar("resnet50_cifar", 23_705_252, "79.34", classifier="linear.weight"),
    # torchvision's model documentation: num_params and acc@1 of IMAGENET1K_V1.
    "resnet18": _torchvision("resnet18", 11_689_512, "69.758"),
    "resnet34": _torchvision("resnet34", 21_797_672, "73.314"),
    "resnet50": _torchvision("resnet50", 25_557_032, "76.130"),
    # detectron2's MODEL_ZOO.md box AP. Weights: the FasterRCNN of luminet_jax.detection with
    # 80 classes (its FrozenBatchNorm affine counted, its statistics not).
    "faster_rcnn_r101_fpn": Teacher(
        source="detectron2_faster_rcnn_R_101_FPN_3x",
        kind="detector",
        model="faster_rcnn_r101_fpn",
        params=60_745_184,
        num_classes=80,
        ignore=_D2_IGNORE,
        published="COCO box AP 42.0",
    ),
    "faster_rcnn_r50_fpn": Teacher(
        source="detectron2_faster_rcnn_R_50_FPN_3x",
        kind="detector",
        model="faster_rcnn_r50_fpn",
        params=41_753_056,
        num_classes=80,
        ignore=_D2_IGNORE,
        published="COCO box AP 40.2",
    ),
    # Caffe2 names; the ImageNet classifier (fc1000) is not counted.
    "msra_r50": Teacher(
        source="detectron2_msra_r50",
        kind="backbone",
        model="faster_rcnn_r50_fpn",
        params=23_508_032,
        ignore=("fc1000",),
        published="ImageNet backbone (MSRA)",
    ),
    "msra_r101": Teacher(
        source="detectron2_msra_r101",
        kind="backbone",
        model="faster_rcnn_r101_fpn",
        params=42_500_160,
        ignore=("fc1000",),
        published="ImageNet backbone (MSRA)",
    ),
}


# ---- checks --------------------------------------------------------------------------------


def check_archive(source: Source, path: str) -> None:
    """Raises ValueError unless `path` is a whole tar archive holding `source.contents`."""
    try:
        with tarfile.open(path) as tar:
            infos = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"not a readable tar archive ({type(e).__name__}: {e})") from e
    size = os.path.getsize(path)
    cut = [m.name for m in infos if m.offset_data + m.size > size]
    if cut:
        raise ValueError(f"the archive is truncated ({cut[0]} is incomplete)")
    missing = sorted(set(source.contents) - {m.name for m in infos})
    if missing:
        raise ValueError(f"the archive lacks {missing} (its known layout: {list(source.contents)})")


def check_weights(name: str, teacher: Teacher, path: str) -> None:
    """Raises ValueError unless the checkpoint at `path` reads (without torch) and holds
    `teacher.params` weights."""
    state_dict = torch_files.load_state_dict(path)
    ignored = [k for k in state_dict if teacher.ignore and k.startswith(teacher.ignore)]
    count = torch_files.parameter_count({k: state_dict[k] for k in state_dict.keys() - ignored})
    if count != teacher.params:
        raise ValueError(
            f"it holds {count:,} weights where {name} ({teacher.model}) has {teacher.params:,}"
        )


def check_file(name: str, teacher: Teacher, path: str) -> str:
    """Checks a downloaded file of entry `name`: its sha256 prefix where one is published,
    else an archive's layout or a checkpoint's weights. Returns what was checked.

    Raises:
      ValueError: the file fails (the message says how).
    """
    source = SOURCES[teacher.source]
    if source.sha256_prefix:
        digest = downloads.sha256(path)
        if not digest.startswith(source.sha256_prefix):
            raise ValueError(
                f"its sha256 {digest[:16]}... does not start with {source.sha256_prefix} "
                "(the published file's)"
            )
        return f"sha256 {source.sha256_prefix}"
    if source.contents:
        check_archive(source, path)
        return f"tar layout ({len(source.contents)} files)"
    check_weights(name, teacher, path)
    return f"{teacher.params:,} weights"


def check_text(teacher: Teacher) -> str:
    """How an entry is checked, in a few words (for `list`)."""
    source = SOURCES[teacher.source]
    if source.sha256_prefix:
        return f"sha256 {source.sha256_prefix}..."
    layout = "tar layout + " if source.contents else ""
    return f"{layout}{teacher.params:,} weights"
