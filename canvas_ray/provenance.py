"""Provenance of every generated image: what says, inside the file, that it was generated, and by what.

Two layers, both embedded by :func:`encode_with_provenance` when an output is encoded (batch writer,
Serve responses) and both read back from the written bytes by :func:`read_provenance`:

- **XMP** with the IPTC ``Iptc4xmpExt:DigitalSourceType`` (``compositeWithTrainedAlgorithmicMedia`` for
  diffusion backgrounds, ``compositeSynthetic`` for weight-free studio backdrops and pure-white frames),
  ``xmp:CreatorTool`` and our own ``canvasray:`` fields (config fingerprint, output id, source hash, models).
  Google Merchant Center reads this tag; the EU AI Act Art. 50(2) asks for such machine-readable marking.
- **C2PA** (``c2pa-python``): actions ``c2pa.opened`` (the source photo, a ``parentOf`` ingredient known by
  its SHA-256) and ``c2pa.edited`` with the digital source type and the models, plus a
  ``com.canvas-ray.provenance`` assertion; signed with the operator's key and certificate chain
  (``provenance.key`` / ``provenance.cert`` or ``CANVAS_RAY_C2PA_KEY`` / ``CANVAS_RAY_C2PA_CERT``). Without
  a key nothing is delivered, unless the config says ``provenance.c2pa: unsigned`` (then only XMP is
  embedded and every manifest row records the opt-out).

What was embedded is recorded per output as JSON in the manifest column ``provenance``
(:meth:`Provenance.to_json`); :func:`check_provenance` compares a file with that record.

The record is :mod:`canvas_ray.provenance_record`, the layers :mod:`canvas_ray.provenance_xmp` and
:mod:`canvas_ray.provenance_c2pa`; this module joins them per run (:class:`ProvenanceContext`), per output
(:func:`encode_with_provenance`) and per file read back; every name stays importable from here.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from canvas_ray.profiles import ProvenanceRule

from canvas_ray.config import CanvasConfig, ProvenanceConfig
from canvas_ray.io.images import encode_image
from canvas_ray.provenance_c2pa import (
    ACCEPTED_C2PA_CODES,
    ASSERTION,
    c2pa_definition,
    check_signing,
    read_c2pa,
    sign_c2pa,
    signer_for,
    signing_material,
)
from canvas_ray.provenance_record import (
    IPTC_DIGITAL_SOURCE_TYPE,
    MIME,
    SYNTHETIC,
    TOOL,
    TRAINED,
    Provenance,
    ProvenanceError,
    tool_version,
)
from canvas_ray.provenance_xmp import NS, XMP_FIELDS, file_xmp, parse_xmp, xmp_packet

__all__ = [
    "ACCEPTED_C2PA_CODES",
    "ASSERTION",
    "IPTC_DIGITAL_SOURCE_TYPE",
    "MIME",
    "NS",
    "SYNTHETIC",
    "TOOL",
    "TRAINED",
    "XMP_FIELDS",
    "FoundProvenance",
    "Provenance",
    "ProvenanceContext",
    "ProvenanceError",
    "c2pa_definition",
    "check_provenance",
    "check_signing",
    "encode_with_provenance",
    "file_xmp",
    "parse_xmp",
    "read_provenance",
    "sha256_hex",
    "signer_for",
    "signing_material",
    "tool_version",
    "xmp_packet",
]


@dataclass(frozen=True)
class ProvenanceContext:
    """What every writer of one run needs (built on the driver, shipped with the plan)."""

    settings: ProvenanceConfig
    models: str
    generative: bool  # the inpainter is a trained model (diffusers), not a procedural backdrop
    pure_white_profiles: frozenset[str] = frozenset()
    rules: dict[str, ProvenanceRule] = field(default_factory=dict)  # per profile: the channel's rule

    @classmethod
    def from_config(cls, config: CanvasConfig) -> ProvenanceContext:
        parts = []
        for stage in ("segment", "caption", "inpaint"):
            spec = getattr(config, stage)
            parts.append(f"{stage}={spec.backend}" + (f":{_model_name(spec.model)}" if spec.model else ""))
        white: frozenset[str] = frozenset()
        rules: dict[str, ProvenanceRule] = {}
        if config.output.profiles_file and Path(config.output.profiles_file).is_file():
            from canvas_ray.profiles import ProfileBook

            book = ProfileBook.load(config.output.profiles_file)
            white = frozenset(n for n, p in book.profiles.items() if p.background == "pure_white")
            rules = {n: p.provenance for n, p in book.profiles.items()}
        generative = config.inpaint.backend == "diffusers"
        return cls(config.provenance, "; ".join(parts), generative, white, rules)

    def source_type(self, profile: str = "") -> str:
        if profile in self.pure_white_profiles or not self.generative:
            return SYNTHETIC
        return TRAINED

    def record(self, batch: Any, index: int, fingerprint: str, output_id: str | None = None) -> Provenance:
        """The provenance of output ``index`` of a batch (after Composite)."""

        def text(name: str) -> str:
            if name not in batch:
                return ""
            value = batch[name][index]
            return "" if value is None or (isinstance(value, float) and value != value) else str(value)

        uri = text("image_uri")
        return Provenance(
            digital_source_type=self.source_type(text("profile")),
            output_id=output_id if output_id is not None else text("output_id"),
            config_fingerprint=fingerprint,
            source_sha256=text("source_sha256"),
            source_title=posixpath.basename(uri.split("?")[0]) if uri else "upload",
            models=self.models,
            c2pa="unsigned" if self.settings.c2pa == "unsigned" else "signed",
        )


def _model_name(model: str) -> str:
    return Path(model).name if ("/" in model and Path(model).exists()) else model


def encode_with_provenance(
    image: np.ndarray, fmt: str, quality: int, record: Provenance, settings: ProvenanceConfig
) -> bytes:
    """The image encoded with its XMP and (unless opted out) a signed C2PA manifest; fills ``record``."""
    fmt = "jpeg" if fmt == "jpg" else fmt
    data = encode_image(image, fmt, quality, xmp=xmp_packet(record))
    if settings.c2pa == "unsigned":
        record.c2pa, record.signer = "unsigned", ""
        return data
    return sign_c2pa(data, fmt, record, settings)


@dataclass
class FoundProvenance:
    """What a file says about itself."""

    xmp: dict[str, str]
    c2pa: bool = False
    c2pa_state: str = ""  # Valid | Invalid | Trusted (c2pa's validation state)
    c2pa_failures: list[str] = field(default_factory=list)
    c2pa_source_type: str = ""  # from the c2pa.edited / c2pa.created action
    c2pa_assertion: dict[str, Any] = field(default_factory=dict)
    signer: str = ""

    @property
    def digital_source_type(self) -> str:
        return self.xmp.get("digital_source_type", "").removeprefix(IPTC_DIGITAL_SOURCE_TYPE)


def _sniff(data: bytes) -> str | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def read_provenance(data: bytes) -> FoundProvenance:
    """XMP (Pillow + our parser) and C2PA (c2pa-python's Reader) of written image bytes."""
    xmp = parse_xmp(file_xmp(data))
    fmt = _sniff(data)
    return FoundProvenance(xmp, **(read_c2pa(data, fmt) if fmt is not None else {}))


def check_provenance(
    found: FoundProvenance, expected: Provenance | None, require_c2pa: str = "none", require_iptc: bool = True
) -> list[str]:
    """Problems of a file against what its manifest row says was embedded (and a channel's rules).

    ``require_c2pa``: ``none`` | ``present`` | ``signed`` (a valid manifest; untrusted signers accepted).
    """
    problems: list[str] = []
    if require_iptc or expected is not None:
        if not found.xmp:
            problems.append("no XMP provenance (IPTC DigitalSourceType missing or stripped)")
        elif not found.digital_source_type:
            problems.append("XMP has no IPTC DigitalSourceType")
    if expected is not None and found.xmp:
        if found.digital_source_type and found.digital_source_type != expected.digital_source_type:
            problems.append(
                f"DigitalSourceType is {found.digital_source_type!r}, manifest says "
                f"{expected.digital_source_type!r}"
            )
        for key in ("config_fingerprint", "output_id"):
            if found.xmp.get(key, "") != getattr(expected, key):
                have, want = found.xmp.get(key, ""), getattr(expected, key)
                problems.append(f"XMP {key} {have!r} != manifest {want!r}")
    wants_c2pa = require_c2pa != "none" or (expected is not None and expected.c2pa == "signed")
    if wants_c2pa:
        if not found.c2pa:
            problems.append("no C2PA manifest (missing or stripped)")
        else:
            if found.c2pa_failures:
                problems.append("C2PA manifest does not validate: " + ", ".join(found.c2pa_failures))
            if expected is not None:
                if found.c2pa_source_type != expected.digital_source_type:
                    have, want = found.c2pa_source_type, expected.digital_source_type
                    problems.append(f"C2PA digitalSourceType {have!r} != {want!r}")
                if found.c2pa_assertion.get("output_id") != expected.output_id:
                    problems.append("C2PA manifest is for another output")
                source = found.c2pa_assertion.get("source_sha256")
                if expected.source_sha256 and source != expected.source_sha256:
                    problems.append("C2PA source photo hash differs from the manifest row's")
    return problems


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
