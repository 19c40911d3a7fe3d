"""Segmentation models you can get without a model hub: ``canvas-ray models fetch|list``.

IS-Net (img.ly's background-removal export) ships in the npm package ``@imgly/background-removal-data`` as
4 MiB chunk files named by hash; ``dist/resources.json`` maps each model to its chunks and byte offsets.
``fetch`` runs ``npm pack`` (or takes a tarball you already have), reassembles the ONNX file by offset,
checks its size and sha256 against the figures pinned here, and caches it under the models folder
(``CANVAS_RAY_MODELS``, default ``~/.cache/canvas-ray/models``). A second run finds the file and does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODELS_ENV = "CANVAS_RAY_MODELS"
TARBALL_ENV = "CANVAS_RAY_ISNET_TARBALL"


@dataclass(frozen=True)
class FetchableModel:
    """One model reassembled from an npm package's chunk files."""

    name: str
    filename: str
    npm_package: str
    npm_version: str
    resource: str  # key in dist/resources.json
    size: int
    sha256: str
    preset: str  # segment.options.preset for the onnx backend
    licence: str

    @property
    def tarball_name(self) -> str:
        return f"{self.npm_package.lstrip('@').replace('/', '-')}-{self.npm_version}.tgz"


ISNET = FetchableModel(
    name="isnet",
    filename="isnet-imgly-medium.onnx",
    npm_package="@imgly/background-removal-data",
    npm_version="1.4.5",
    resource="/models/medium",
    size=88_188_479,
    sha256="b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
    preset="isnet-imgly",
    licence=(
        "IS-Net background-removal weights from @imgly/background-removal-data 1.4.5 by img.ly, licensed "
        "AGPL-3.0 (https://github.com/imgly/background-removal-js, LICENSE.md in the npm package). "
        "Using them in a network service may oblige you to publish your source under the AGPL; for "
        "permissive alternatives see README.md, 'Segmentation models'."
    ),
)
MODELS: dict[str, FetchableModel] = {ISNET.name: ISNET}


class ModelFetchError(RuntimeError):
    """The model could not be fetched or did not verify; the message says what went wrong."""


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_ENV) or Path.home() / ".cache" / "canvas-ray" / "models").expanduser()


def fetch_hint(name: str = "isnet") -> str:
    return f"run `canvas-ray models fetch {name}` (or `bash scripts/setup.sh`)"


def resolve_model_path(model: str | None) -> Path:
    """A local ``.onnx`` file, or a fetchable name (``isnet``) → its file in the models folder.

    Raises FileNotFoundError with the command to run when the file is not there.
    """
    if not model:
        raise FileNotFoundError(f"segment.model is empty: name an .onnx file or `isnet`; {fetch_hint()}")
    if model in MODELS:
        path = models_dir() / MODELS[model].filename
        if not path.is_file():
            raise FileNotFoundError(
                f"segment model {model!r} is not in {path.parent}: {fetch_hint(model)} "
                f"(set {MODELS_ENV} if your models live elsewhere)"
            )
        return path
    path = Path(model).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(MODELS))
        raise FileNotFoundError(
            f"segment model file not found: {model} (give a local .onnx file, or one of: {known}; "
            f"{fetch_hint()})"
        )
    return path


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def npm_pack(spec: FetchableModel, cache: Path) -> Path:
    """``npm pack <package>@<version>`` into ``cache`` (skipped when the tarball is already there)."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / spec.tarball_name
    if tarball.is_file():
        return tarball
    npm = shutil.which("npm")
    if npm is None:
        raise ModelFetchError(
            f"npm is not installed: install Node.js/npm, or download {spec.npm_package}@{spec.npm_version} "
            f"with `npm pack` elsewhere and pass it with --tarball (or {TARBALL_ENV})"
        )
    command = [npm, "pack", f"{spec.npm_package}@{spec.npm_version}", "--pack-destination", str(cache)]
    print(f"downloading {spec.npm_package}@{spec.npm_version} with: {' '.join(command[1:])}", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not tarball.is_file():
        raise ModelFetchError(f"`npm pack` failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return tarball


def reassemble(tarball: Path, spec: FetchableModel, target: Path) -> Path:
    """Concatenate the model's chunk files by offset into ``target``, verifying size and sha256."""
    try:
        with tarfile.open(tarball, "r:*") as archive:
            member = archive.extractfile("package/dist/resources.json")
            if member is None:
                raise ModelFetchError(f"{tarball}: package/dist/resources.json is not a file")
            resources = json.load(member)
            if spec.resource not in resources:
                raise ModelFetchError(f"{tarball}: resources.json has no {spec.resource}")
            entry = resources[spec.resource]
            chunks = sorted(entry["chunks"], key=lambda c: int(c["offsets"][0]))
            if int(entry.get("size", spec.size)) != spec.size:
                raise ModelFetchError(f"{spec.resource} is {entry.get('size')} bytes, expected {spec.size}")
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as out:
                partial = Path(out.name)
                try:
                    position = 0
                    for chunk in chunks:
                        start, end = (int(v) for v in chunk["offsets"])
                        if start != position:
                            raise ModelFetchError(f"chunks of {spec.resource} leave a gap at byte {position}")
                        data_member = archive.extractfile(f"package/dist/{chunk['hash']}")
                        if data_member is None:
                            raise ModelFetchError(f"chunk {chunk['hash']} is missing from {tarball}")
                        data = data_member.read()
                        if len(data) != end - start:
                            raise ModelFetchError(
                                f"chunk {chunk['hash']} has {len(data)} bytes, "
                                f"resources.json says {end - start}"
                            )
                        if hashlib.sha256(data).hexdigest() != chunk["hash"]:
                            raise ModelFetchError(f"chunk {chunk['hash']} does not match its sha256 name")
                        out.write(data)
                        digest.update(data)
                        position = end
                    if position != spec.size:
                        raise ModelFetchError(f"reassembled {position} bytes, expected {spec.size}")
                    if digest.hexdigest() != spec.sha256:
                        raise ModelFetchError(
                            f"sha256 mismatch for {spec.filename}: got {digest.hexdigest()}, "
                            f"expected {spec.sha256}; the download is corrupt or not "
                            f"version {spec.npm_version}"
                        )
                except BaseException:
                    out.close()
                    partial.unlink(missing_ok=True)
                    raise
        os.replace(partial, target)
    except (tarfile.TarError, KeyError, OSError) as error:
        raise ModelFetchError(f"cannot read {tarball}: {error}") from error
    return target


def fetch(
    name: str = "isnet",
    tarball: str | Path | None = None,
    directory: Path | None = None,
    spec: FetchableModel | None = None,
) -> Path:
    """The model file, fetched and verified if it is not cached yet. Prints the licence."""
    spec = spec or MODELS.get(name)
    if spec is None:
        raise ModelFetchError(f"unknown model {name!r}; fetchable: {', '.join(sorted(MODELS))}")
    directory = directory or models_dir()
    target = directory / spec.filename
    print(f"licence: {spec.licence}", file=sys.stderr)
    if target.is_file() and target.stat().st_size == spec.size:
        print(f"{spec.name}: already at {target}", file=sys.stderr)
        return target
    source = tarball or os.environ.get(TARBALL_ENV)
    source_path = Path(source) if source else npm_pack(spec, directory / "npm")
    if not source_path.is_file():
        raise ModelFetchError(f"tarball not found: {source_path}")
    reassemble(source_path, spec, target)
    print(f"{spec.name}: verified sha256 {spec.sha256[:12]}…, saved {target}", file=sys.stderr)
    return target


def list_models(directory: Path | None = None) -> list[dict[str, object]]:
    directory = directory or models_dir()
    rows = []
    for spec in MODELS.values():
        path = directory / spec.filename
        rows.append(
            {
                "name": spec.name,
                "file": str(path),
                "present": path.is_file(),
                "preset": spec.preset,
                "size": spec.size,
                "licence": "AGPL-3.0 (img.ly)",
            }
        )
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "list":
        print(f"models folder: {models_dir()} (set {MODELS_ENV} to change)")
        for row in list_models():
            state = "present" if row["present"] else f"missing: {fetch_hint(str(row['name']))}"
            print(f"{row['name']:8} {row['preset']:12} {row['licence']:18} {row['file']}  [{state}]")
        return 0
    try:
        path = fetch(args.name, tarball=args.tarball)
    except ModelFetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    """The ``models`` subcommand (hooked into canvas_ray/cli.py)."""
    models = sub.add_parser("models", help="fetch or list segmentation models (IS-Net ONNX)")
    actions = models.add_subparsers(dest="action", required=True)
    fetch_parser = actions.add_parser("fetch", help="download, reassemble and verify a model (idempotent)")
    fetch_parser.add_argument("name", choices=sorted(MODELS))
    fetch_parser.add_argument("--tarball", help=f"npm tarball already downloaded (or set {TARBALL_ENV})")
    fetch_parser.set_defaults(func=cmd_models)
    list_parser = actions.add_parser("list", help="fetchable models and whether they are cached")
    list_parser.set_defaults(func=cmd_models)
