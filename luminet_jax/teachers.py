"""Teachers by name: `zoo:NAME` is a published checkpoint, fetched once, checked and cached.

    luminet-teachers list                  what the zoo knows and what is cached (no network)
    luminet-teachers fetch NAME... | all   download, check, extract and convert (offline use)
    luminet-teachers verify [NAME...]      check the cached files again (no network)
    luminet-teachers path NAME             the local path a run uses (fetched if needed)

(`luminet-teachers` is `python -m luminet_jax.teachers`.) `--config.teacher.checkpoint=zoo:NAME`
(`load_teacher` below, `tasks.detection.load_detector_variables`),
`--config.student.backbone_checkpoint=zoo:NAME` and `luminet-convert --torch zoo:NAME` resolve
the same way. The cache is --cache-dir, else $LUMINET_TEACHER_CACHE, else
$XDG_CACHE_HOME/luminet_jax/teachers (~/.cache/luminet_jax/teachers); --mirror or
$LUMINET_TEACHER_MIRROR=BASE_URL replaces each source's scheme and host (an internal mirror).

The cache (`teacher_cache`) holds the downloads, the checkpoints taken out of archives and
each classifier's converted variables per number of classes; each entry is written under a
temporary name and renamed when complete and checked, so a partial entry is never used.

In a job of several processes only process 0 fetches; the others wait for the entry, so the
cache must be on a file system they share (or filled beforehand with `fetch`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
from collections.abc import Callable, Sequence
from typing import Any

from luminet_jax import cli, downloads, teacher_cache, teacher_zoo, torch_files

PREFIX = "zoo:"
CACHE_ENV = "LUMINET_TEACHER_CACHE"
MIRROR_ENV = "LUMINET_TEACHER_MIRROR"
WAIT_S = 6 * 3600.0  # processes other than 0 wait this long for process 0's fetch
TEACHER_OPTION = "--config.teacher.checkpoint"
BACKBONE_OPTION = "--config.student.backbone_checkpoint"


def is_zoo(value: Any) -> bool:
    """Whether `value` names a zoo teacher (`zoo:NAME`)."""
    return isinstance(value, str) and value.strip().startswith(PREFIX)


def lookup(value: str) -> tuple[str, teacher_zoo.Teacher]:
    """`zoo:NAME` (or NAME) -> (NAME, its entry).

    Raises:
      KeyError: an unknown name (the message lists the known ones).
    """
    name = value.strip().removeprefix(PREFIX)
    if name not in teacher_zoo.TEACHERS:
        raise KeyError(
            f"Unknown zoo teacher {name!r}; known: {', '.join(teacher_zoo.TEACHERS)} "
            "(luminet-teachers list)"
        )
    return name, teacher_zoo.TEACHERS[name]


def cache_dir(given: str | None = None) -> str:
    """The cache folder: `given`, else $LUMINET_TEACHER_CACHE, else the user's cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = given or os.environ.get(CACHE_ENV) or os.path.join(base, "luminet_jax", "teachers")
    return os.path.abspath(os.path.expanduser(path))


class _Context:
    def __init__(self, cache, mirror, process_index, option):
        self.cache = teacher_cache.Cache(cache_dir(cache))
        self.mirror = os.environ.get(MIRROR_ENV, "") if mirror is None else mirror
        self.process = _process_index() if process_index is None else process_index
        self.option = option


def _process_index() -> int:
    """jax.process_index() in a job that imported jax (all runs), else 0 (this CLI)."""
    jax = sys.modules.get("jax")
    return int(jax.process_index()) if jax is not None else 0


# ---- fetching ------------------------------------------------------------------------------


def _entry(path: str, make: Callable[[str], None], ctx: _Context, *, what: str) -> str:
    return teacher_cache.make_once(
        ctx.cache, path, make, process=ctx.process, what=what, wait_s=WAIT_S
    )


def _manual(teacher: teacher_zoo.Teacher, option: str) -> str:
    source = teacher_zoo.SOURCES[teacher.source]
    if teacher.in_archive:
        return (
            f"download it elsewhere, `tar xf {source.file} {teacher.in_archive}` and pass "
            f"{option}=PATH/{teacher.in_archive}"
        )
    return f"download it elsewhere and pass {option}=PATH/{source.file}"


def _source_file(name: str, teacher: teacher_zoo.Teacher, ctx: _Context) -> str:
    source = teacher_zoo.SOURCES[teacher.source]

    def make(final: str) -> None:
        url = downloads.mirror_url(source.url, ctx.mirror)
        part = final + ".part"
        downloads.say(f"Downloading {url} to {final}")
        try:
            downloads.download(url, part)
        except downloads.DownloadError as e:
            raise downloads.DownloadError(
                f"could not download {url} ({e}) into {final}; without network: "
                f"{_manual(teacher, ctx.option)}, or put the file at {final} "
                "(luminet-teachers verify checks it)"
            ) from e
        try:
            checked = teacher_zoo.check_file(name, teacher, part)
        except ValueError as e:
            os.remove(part)
            raise ValueError(
                f"{url} fails its check: {e}; deleted it, nothing is cached (run again to "
                "download it again)"
            ) from e
        os.replace(part, final)
        downloads.say(f"  checked ({checked}): {final}")

    return _entry(ctx.cache.download(source), make, ctx, what=f"fetching {source.file}")


def _teacher_file(name: str, teacher: teacher_zoo.Teacher, ctx: _Context) -> str:
    """The entry's checked checkpoint file: the download, or the file taken out of its archive."""
    archive = _source_file(name, teacher, ctx)
    if not teacher.in_archive:
        return archive

    def make(final: str) -> None:
        tmp = teacher_cache.tmp(final)
        with tarfile.open(archive) as tar, open(tmp, "wb") as out:
            shutil.copyfileobj(tar.extractfile(teacher.in_archive), out)
        try:
            teacher_zoo.check_weights(name, teacher, tmp)
        except ValueError as e:
            os.remove(tmp)
            raise ValueError(
                f"{teacher.in_archive} in {archive}: {e}; delete the archive to download it again"
            ) from e
        os.replace(tmp, final)

    return _entry(ctx.cache.extracted(name), make, ctx, what=f"extracting {teacher.in_archive}")


def local_file(
    value: str,
    *,
    cache: str | None = None,
    mirror: str | None = None,
    process_index: int | None = None,
    option: str = TEACHER_OPTION,
) -> str:
    """`zoo:NAME` -> its checked checkpoint file in the cache (fetched first if needed); any
    other value is returned as it is.

    Args:
      value: a config value (a path, or `zoo:NAME`).
      cache: the cache folder (default `cache_dir()`).
      mirror: a base URL replacing the sources' scheme and host (default $LUMINET_TEACHER_MIRROR).
      process_index: this process's index (default jax's when jax is imported, else 0);
        others than 0 wait for process 0's entry.
      option: the config option a user would set instead, for the offline message.

    Raises:
      KeyError: an unknown name.
      downloads.DownloadError: offline or failing (one line: URL, cache path, what to do).
      ValueError: the file fails its check (then nothing is cached).
    """
    if not is_zoo(value):
        return value
    name, teacher = lookup(value)
    ctx = _Context(cache, mirror, process_index, option)
    return _teacher_file(name, teacher, ctx)


def resolve(
    value: str,
    *,
    model: str,
    num_classes: int,
    cache: str | None = None,
    mirror: str | None = None,
    process_index: int | None = None,
) -> str:
    """A classification teacher: `zoo:NAME` -> its converted variables for `num_classes`
    (fetched and converted first if needed; `checkpoint.load_variables` reads them). Any other
    value is returned as it is. Arguments and errors as `local_file`, and:

    Raises:
      ValueError: the entry is not a classifier, is another model than `model`, or was
        trained on another number of classes than `num_classes`.
    """
    if not is_zoo(value):
        return value
    name, teacher = lookup(value)
    from luminet_jax import models  # noqa: PLC0415  (jax: only where a run loads a teacher)

    if teacher.kind != "classifier":
        raise ValueError(
            f"zoo:{name} is a {teacher.kind} checkpoint ({teacher.published}), not a "
            "classification teacher (luminet-teachers list shows each one's kind)"
        )
    if models.canonical_name(model) != models.canonical_name(teacher.model):
        raise ValueError(f"zoo:{name} is a {teacher.model}, but the teacher model is {model!r}")
    if num_classes != teacher.num_classes:
        raise ValueError(
            f"zoo:{name} was trained with {teacher.num_classes} classes ({teacher.published}), "
            f"but this run has {num_classes}: train a teacher on the run's data "
            f"(configs/cifar100_teacher.py shows how) and pass {TEACHER_OPTION}=ITS_WORKDIR"
        )
    ctx = _Context(cache, mirror, process_index, TEACHER_OPTION)

    def make(final: str) -> None:
        _convert(name, teacher, _teacher_file(name, teacher, ctx), num_classes, final)

    path = ctx.cache.converted(name, num_classes)
    return _entry(path, make, ctx, what=f"converting zoo:{name}")


def _convert(name: str, teacher: teacher_zoo.Teacher, file: str, num_classes: int, final: str):
    from luminet_jax import checkpoint, models  # noqa: PLC0415  (orbax, jax)

    state_dict = torch_files.load_state_dict(file)
    head = state_dict.get(teacher.classifier)
    if head is not None and head.shape[0] != num_classes:
        raise ValueError(
            f"{file} (zoo:{name}) has {head.shape[0]} classes ({teacher.classifier} of shape "
            f"{head.shape}), but this run has {num_classes}"
        )
    variables = models.from_torch(teacher.model, state_dict, num_classes=num_classes)
    tmp = teacher_cache.tmp(final)
    checkpoint.save_variables(tmp, variables)
    os.replace(tmp, final)
    downloads.say(f"  converted zoo:{name} ({num_classes} classes): {final}")


def load_teacher(path: str, model_name: str, *, num_classes: int, **kwargs: Any) -> Any:
    """`checkpoint.load_teacher` of a path, or of `zoo:NAME` (fetched, checked, converted
    for `num_classes` and cached first, `resolve`). Keywords as `checkpoint.load_teacher`."""
    from luminet_jax import checkpoint  # noqa: PLC0415  (orbax, jax)

    path = resolve(os.fspath(path), model=model_name, num_classes=num_classes)
    return checkpoint.load_teacher(path, model_name, num_classes=num_classes, **kwargs)


def fetch(name: str, **kwargs: Any) -> str:
    """Everything a run of `name` needs, in the cache: a classifier converted for its own
    classes, any other entry's file. Keywords as `local_file`; returns the path."""
    name, teacher = lookup(name)
    if teacher.kind == "classifier":
        kwargs.pop("option", None)
        classes = teacher.num_classes
        return resolve(PREFIX + name, model=teacher.model, num_classes=classes, **kwargs)
    return local_file(PREFIX + name, **kwargs)


# ---- list, verify and the command line -------------------------------------------------------


def list_lines(cache: str | None = None) -> list[str]:
    """A header, then one line per zoo entry, its name first: kind, model, published result,
    cache state, size on disk (or `~` the weights' float32 size), check and source. Reads
    only the cache folder."""
    root = teacher_cache.Cache(cache_dir(cache))
    head = ("NAME", "KIND", "MODEL", "PUBLISHED", "CACHED", "SIZE", "CHECK", "SOURCE")
    lines = ["{:<21} {:<10} {:<21} {:<25} {:<20} {:>7}  {:<32} {}".format(*head)]
    for name, teacher in teacher_zoo.TEACHERS.items():
        state, size = root.state(name, teacher)
        shown = f"{size / 1e6:.0f} MB" if size else f"~{teacher.params * 4 / 1e6:.0f} MB"
        source = teacher_zoo.SOURCES[teacher.source]
        lines.append(
            f"{name:<21} {teacher.kind:<10} {teacher.model:<21} {teacher.published:<25} "
            f"{state:<20} {shown:>7}  {teacher_zoo.check_text(teacher):<32} {source.url}"
        )
    return lines


def verify(names: Sequence[str] = (), cache: str | None = None) -> list[tuple[str, bool, str]]:
    """Checks the cached files of `names` (default all) again, without network.

    Returns:
      (name, ok, what was found) per name; entries with nothing cached are ok ("not cached").
    """
    root, out = teacher_cache.Cache(cache_dir(cache)), []
    for name in names or list(teacher_zoo.TEACHERS):
        name, teacher = lookup(name)
        source = teacher_zoo.SOURCES[teacher.source]
        found = []
        try:
            if os.path.exists(download := root.download(source)):
                found.append(f"{source.file}: {teacher_zoo.check_file(name, teacher, download)}")
            if teacher.in_archive and os.path.exists(root.extracted(name)):
                teacher_zoo.check_weights(name, teacher, root.extracted(name))
                found.append(f"{name}.pth: {teacher.params:,} weights")
        except (ValueError, OSError) as e:
            out.append((name, False, "; ".join([*found, cli.one_line(e)])))
            continue
        out.append((name, True, "; ".join(found) or "not cached"))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    prog = cli.command("luminet_jax.teachers", "luminet-teachers")
    options = argparse.ArgumentParser(add_help=False)  # before or after the command
    options.add_argument(
        "--cache-dir",
        default=argparse.SUPPRESS,
        help=f"the cache (default ${CACHE_ENV} or ~/.cache/luminet_jax/teachers)",
    )
    options.add_argument(
        "--mirror",
        default=argparse.SUPPRESS,
        help=f"BASE_URL replacing each source's scheme and host (default ${MIRROR_ENV})",
    )
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[options],
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[options], help="the known teachers (no network)")
    fetch_cmd = commands.add_parser("fetch", parents=[options], help="download, check, convert")
    fetch_cmd.add_argument("names", nargs="+", metavar="NAME", help="zoo names, or all")
    verify_cmd = commands.add_parser("verify", parents=[options], help="check the cache again")
    verify_cmd.add_argument("names", nargs="*", metavar="NAME", help="zoo names (default all)")
    path_cmd = commands.add_parser("path", parents=[options], help="NAME's path (fetched)")
    path_cmd.add_argument("name", metavar="NAME")
    args = parser.parse_args(argv)
    args.cache_dir, args.mirror = getattr(args, "cache_dir", None), getattr(args, "mirror", None)
    return args


def _run(args: argparse.Namespace) -> int:
    where = dict(cache=args.cache_dir, mirror=args.mirror)
    if args.command == "list":
        print("\n".join(list_lines(args.cache_dir)))
        print(f"cache: {cache_dir(args.cache_dir)}")
        return 0
    if args.command == "path":
        print(fetch(args.name, **where))
        return 0
    if args.command == "verify":
        results = verify(args.names, args.cache_dir)
        for name, ok, text in results:
            print(f"{name:<21} {'ok' if ok else 'FAILED':<7} {text}")
        return 0 if all(ok for _, ok, _ in results) else 1
    names = list(teacher_zoo.TEACHERS) if args.names == ["all"] else args.names
    failed = 0
    for name in names:
        try:
            print(f"{name:<21} {fetch(name, **where)}", flush=True)
        except (*cli.KNOWN_ERRORS,) as e:  # the others still come: `fetch all` for a cluster
            if len(names) == 1:
                raise
            print(f"{name:<21} FAILED: {cli.one_line(e)}", flush=True)
            failed += 1
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> None:
    """The console script `luminet-teachers`; argv: sys.argv[1:]."""
    args = parse_args(argv)
    try:
        code = _run(args)
    except cli.KNOWN_ERRORS as e:
        if cli.show_traceback():
            raise
        cli.fail(cli.one_line(e), prog=cli.command("luminet_jax.teachers", "luminet-teachers"))
    sys.exit(code)


if __name__ == "__main__":
    main()
