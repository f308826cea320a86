"""Rebuild assets/tiny-boxes-sample.tar.gz from ../shared/data/tiny-imagenet-200-mini.tar.gz.

The sample is `luminet_jax.detection.tiny_boxes.build(..., num_train=64, num_val=32, seed=0,
quality=85)` (2x2 tiles of real Tiny-ImageNet images with their real boxes, see that module),
packed under the top folder `tiny-boxes-sample/` with sorted entries, fixed mtime/owner/mode and
a gzip header with mtime 0, so the same Pillow version rebuilds it byte for byte.

    python assets/make_tiny_boxes_sample.py [SOURCE] [OUTPUT_TAR_GZ]
"""

import gzip
import hashlib
import io
import pathlib
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from luminet_jax.detection import tiny_boxes  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "tiny-imagenet-200-mini.tar.gz"
OUTPUT = ROOT / "assets" / "tiny-boxes-sample.tar.gz"
TOP = "tiny-boxes-sample"
NUM_TRAIN, NUM_VAL, SEED, QUALITY = 64, 32, 0, 85
MTIME = 1577836800  # 2020-01-01, as the CIFAR-10 sample.


def main(source: pathlib.Path = SOURCE, output: pathlib.Path = OUTPUT) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        counts = tiny_boxes.build(
            source, tmp, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED, quality=QUALITY
        )
        files = {
            f"{TOP}/{p.relative_to(tmp).as_posix()}": p.read_bytes()
            for p in pathlib.Path(tmp).rglob("*")
            if p.is_file()
        }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), MTIME, 0o644
            out.addfile(info, io.BytesIO(files[name]))
    with open(output, "wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    print(f"{output}: {counts}, {output.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main(*map(pathlib.Path, sys.argv[1:3]))
