"""Converts a PyTorch checkpoint of a zoo model into an orbax variables directory.

    luminet-convert --model resnet32x4 --torch resnet32x4_vanilla/ckpt_epoch_240.pth \
        --out teachers/resnet32x4 [--num-classes 100]

(`luminet-convert` is `python -m luminet_jax.convert`.)

The checkpoint may be a plain state_dict or a dict holding it under "model" (mdistiller's
cifar_teachers) or "state_dict". torch is needed only here (an optional dependency).
The output is read back with `luminet_jax.checkpoint.load_teacher(out, model, num_classes=...)`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from luminet_jax import cli, models

_WRAPPER_KEYS = ("model", "state_dict")


def load_torch_state_dict(path: str) -> dict[str, Any]:
    """Loads a PyTorch checkpoint file and returns its state_dict (tensor values).

    Args:
      path: a .pth/.pt/.tar file written by `torch.save`.

    Returns:
      The state_dict: the file itself, or its "model" / "state_dict" entry.

    Raises:
      FileNotFoundError: when `path` is not a file.
      ImportError: when torch is not installed.
      ValueError: when the file cannot be read safely or holds no state_dict.
    """
    try:
        import torch  # optional dependency, imported only when converting
    except ImportError as e:
        raise ImportError(
            "Converting PyTorch checkpoints needs torch: pip install torch "
            "(the CPU build is enough)."
        ) from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No PyTorch checkpoint at {path!r}.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError and friends
        raise ValueError(
            f"Could not load {path!r} with torch.load(weights_only=True): {e}. If the file is "
            "trusted, re-save its state_dict (torch.save(ckpt['model'], 'plain.pth')) and retry."
        ) from e
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path!r} holds a {type(ckpt).__name__}, not a state_dict.")
    for wrapper in _WRAPPER_KEYS:
        if isinstance(ckpt.get(wrapper), Mapping):
            return dict(ckpt[wrapper])
    if not all(hasattr(v, "shape") for v in ckpt.values()):
        raise ValueError(
            f"{path!r} is neither a state_dict nor a dict with one of {_WRAPPER_KEYS}; "
            f"its keys are {sorted(ckpt)[:20]}"
        )
    return dict(ckpt)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=cli.command("luminet_jax.convert", "luminet-convert"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="zoo name or alias, e.g. resnet32x4")
    parser.add_argument("--torch", required=True, help="PyTorch checkpoint (.pth/.tar)")
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
    except (*cli.KNOWN_ERRORS, ImportError) as e:
        if cli.show_traceback():
            raise
        prog = cli.command("luminet_jax.convert", "luminet-convert")
        cli.fail(cli.one_line(e), f"see {prog} --help; {cli.TRACEBACK_ENV}=1 shows the traceback.",
                 prog=prog)  # fmt: skip


def _convert(args: argparse.Namespace) -> None:
    from luminet_jax.detection import rcnn  # noqa: PLC0415

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
