"""Converts a PyTorch checkpoint of a zoo model into an orbax variables directory.

    luminet-convert --model resnet32x4 --torch resnet32x4_vanilla/ckpt_epoch_240.pth \
        --out teachers/resnet32x4 [--num-classes 100]
    luminet-convert --torch zoo:resnet32x4 --out teachers/resnet32x4

(`luminet-convert` is `python -m luminet_jax.convert`.)

The checkpoint may be a plain state_dict or a dict holding it under "model" (mdistiller's
cifar_teachers) or "state_dict", in torch.save's zip or legacy format (read without torch,
`luminet_jax.torch_files`), or a detectron2 `.pkl` for a detector (`--model
faster_rcnn_r101_fpn`). `--torch zoo:NAME` takes a published teacher's file from the teacher
zoo (`luminet-teachers`; downloaded and checked first if needed) and its model by default.
The output is read back with `luminet_jax.checkpoint.load_teacher(out, model, num_classes=...)`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from luminet_jax import cli, models, teachers, torch_files


def load_torch_state_dict(path: str) -> dict[str, Any]:
    """A PyTorch checkpoint file's state_dict as NumPy arrays (`torch_files.load_state_dict`).

    Args:
      path: a .pth/.pt/.tar file written by `torch.save` (zip or legacy format).

    Returns:
      The state_dict: the file itself, or its "model" / "state_dict" entry.

    Raises:
      FileNotFoundError: when `path` is not a file.
      ValueError: when the file cannot be read or holds no state_dict.
    """
    return torch_files.load_state_dict(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=cli.command("luminet_jax.convert", "luminet-convert"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", default=None, help="model name or alias, e.g. resnet32x4 (default for zoo:)"
    )
    parser.add_argument(
        "--torch", required=True, help="PyTorch checkpoint (.pth/.tar), or zoo:NAME"
    )
    parser.add_argument("--out", required=True, help="output orbax directory")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classifier size (default: 1000 for ImageNet models, else 100)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the conversion (the console script `luminet-convert`); argv: sys.argv[1:]."""
    cli.quiet_logs()
    args = parse_args(argv)
    try:
        _convert(args)
    except cli.KNOWN_ERRORS as e:
        if cli.show_traceback():
            raise
        prog = cli.command("luminet_jax.convert", "luminet-convert")
        cli.fail(
            cli.one_line(e),
            f"see {prog} --help; {cli.TRACEBACK_ENV}=1 shows the traceback.",
            prog=prog,
        )


def _convert(args: argparse.Namespace) -> None:
    from luminet_jax.detection import rcnn  # noqa: PLC0415

    if teachers.is_zoo(args.torch):
        _, entry = teachers.lookup(args.torch)
        args.model = args.model or entry.model
        args.torch = teachers.local_file(args.torch, option="--torch")
    if not args.model:
        raise ValueError("--model is required (unless --torch is zoo:NAME)")

    if args.model in rcnn.DETECTORS:  # a detectron2 checkpoint (model_final_*.pkl)
        from luminet_jax.detection import convert as detection_convert  # noqa: PLC0415

        classes = args.num_classes or 80
        out = detection_convert.convert_file(args.model, args.torch, args.out, num_classes=classes)
        print(f"Wrote {args.model} ({classes} classes) to {out}")
        return
    name = models.canonical_name(args.model)
    num_classes = args.num_classes
    if num_classes is None:
        num_classes = 1000 if models.input_size(name) == 224 else 100
    state_dict = load_torch_state_dict(args.torch)
    variables = models.from_torch(name, state_dict, num_classes=num_classes)

    from luminet_jax import checkpoint  # imported here: keeps orbax off --help

    out = os.path.abspath(args.out)
    checkpoint.save_variables(out, variables)
    print(f"Wrote {name} ({num_classes} classes) to {out}")


if __name__ == "__main__":
    main()
