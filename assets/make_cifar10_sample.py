"""Rebuild assets/cifar10-sample.tar.gz from ../shared/data/cifar10-jpeg.tar.gz (see README.md).

Selection rule: for each of the 10 classes, train files 0000.jpg..0299.jpg and test files
0000.jpg..0099.jpg, original JPEG bytes. The output is byte-reproducible: sorted entries,
fixed mtime/owner/mode and a gzip header with mtime 0.

    python assets/make_cifar10_sample.py [SOURCE_TAR_GZ] [OUTPUT_TAR_GZ]
"""

import gzip
import hashlib
import io
import pathlib
import sys
import tarfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
OUTPUT = ROOT / "assets" / "cifar10-sample.tar.gz"
PER_CLASS = {"train": 300, "test": 100}
MTIME = 1577836800  # 2020-01-01, as in the source archive.


def _selected(name: str) -> bool:
    parts = name.split("/")
    if parts == ["cifar10-jpeg", "classes.txt"]:
        return True
    if len(parts) != 4 or parts[0] != "cifar10-jpeg" or parts[1] not in PER_CLASS:
        return False
    stem = parts[3].removesuffix(".jpg")
    return stem.isdigit() and int(stem) < PER_CLASS[parts[1]]


def main(source: pathlib.Path = SOURCE, output: pathlib.Path = OUTPUT) -> None:
    files = {}
    with tarfile.open(source, "r:gz") as tar:
        for info in tar:
            if info.isfile() and _selected(info.name):
                files[info.name] = tar.extractfile(info).read()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), MTIME, 0o644
            out.addfile(info, io.BytesIO(files[name]))
    with open(output, "wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    jpegs = sum(name.endswith(".jpg") for name in files)
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    print(f"{output}: {jpegs} JPEGs, {output.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main(*map(pathlib.Path, sys.argv[1:3]))
