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
"""

from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import posixpath
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import numpy as np

if TYPE_CHECKING:
    from canvas_ray.profiles import ProvenanceRule

from canvas_ray.config import CanvasConfig, ProvenanceConfig
from canvas_ray.io.images import encode_image

TOOL = "canvas-ray"
IPTC_DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = "compositeWithTrainedAlgorithmicMedia"  # a diffusion model painted the background
SYNTHETIC = "compositeSynthetic"  # procedural backdrop or pure white around the real product
ASSERTION = "com.canvas-ray.provenance"
MIME = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
# A signer that no trust list vouches for is the operator's business (their CA); every other failure counts.
ACCEPTED_C2PA_CODES = frozenset({"signingCredential.untrusted"})
NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "canvasray": "http://ns.canvas-ray.org/provenance/1.0/",
}
XMP_FIELDS = {  # Provenance attribute → XMP property
    "digital_source_type": "Iptc4xmpExt:DigitalSourceType",
    "tool": "xmp:CreatorTool",
    "config_fingerprint": "canvasray:ConfigFingerprint",
    "output_id": "canvasray:OutputId",
    "source_sha256": "canvasray:SourceSHA256",
    "models": "canvasray:Models",
}


class ProvenanceError(RuntimeError):
    """Provenance cannot be embedded (no signing key, a bad key); the message says what to configure."""


def tool_version() -> str:
    try:
        return version("canvas-ray")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+unknown"


@dataclass
class Provenance:
    """What is embedded in one output (and recorded in its manifest row)."""

    digital_source_type: str  # the IPTC code, e.g. compositeSynthetic
    output_id: str
    config_fingerprint: str
    source_sha256: str = ""
    source_title: str = ""
    models: str = ""  # "segment=onnx:isnet; caption=metadata; inpaint=studio"
    tool: str = field(default_factory=lambda: f"{TOOL} {tool_version()}")
    xmp: bool = True
    c2pa: str = "signed"  # signed | unsigned (explicit opt-out: provenance.c2pa = unsigned)
    signer: str = ""  # the signing certificate's common name

    @property
    def source_type_uri(self) -> str:
        return IPTC_DIGITAL_SOURCE_TYPE + self.digital_source_type

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Provenance | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


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


# ---- XMP -----------------------------------------------------------------------------------------


def xmp_packet(record: Provenance) -> str:
    values = {
        "digital_source_type": record.source_type_uri,
        "tool": record.tool,
        "config_fingerprint": record.config_fingerprint,
        "output_id": record.output_id,
        "source_sha256": record.source_sha256,
        "models": record.models,
    }
    namespaces = " ".join(f"xmlns:{p}={quoteattr(u)}" for p, u in NS.items() if p not in ("x", "rdf"))
    attributes = "\n    ".join(f"{XMP_FIELDS[k]}={quoteattr(v)}" for k, v in values.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="{NS["x"]}">\n <rdf:RDF xmlns:rdf="{NS["rdf"]}">\n'
        f'  <rdf:Description rdf:about="" {namespaces}\n    {attributes}/>\n'
        ' </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="w"?>'
    )


def parse_xmp(packet: bytes | str | None) -> dict[str, str]:
    """Our fields from an XMP packet (attribute or element form, as other tools may rewrite it)."""
    if not packet:
        return {}
    text = packet.decode("utf-8", "replace") if isinstance(packet, bytes) else packet
    start, end = text.find("<x:xmpmeta"), text.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return {}
    try:
        root = ET.fromstring(text[start : end + len("</x:xmpmeta>")])
    except ET.ParseError:
        return {}
    found: dict[str, str] = {}
    for key, prop in XMP_FIELDS.items():
        prefix, local = prop.split(":")
        qualified = f"{{{NS[prefix]}}}{local}"
        for description in root.iter(f"{{{NS['rdf']}}}Description"):
            value = description.get(qualified)
            if value is None and (child := description.find(qualified)) is not None:
                value = (child.text or "").strip() or None
            if value is not None:
                found[key] = value
                break
    return found


def file_xmp(data: bytes) -> bytes | None:
    """The XMP packet of PNG (iTXt), JPEG (APP1) or WebP (XMP chunk) bytes, as Pillow reads it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            packet = image.info.get("xmp")
    except Exception:  # noqa: BLE001 - an unreadable file has no XMP
        return None
    if isinstance(packet, str):
        return packet.encode()
    return packet


# ---- C2PA ----------------------------------------------------------------------------------------


def _pem(value: str, what: str) -> bytes:
    """A PEM given inline, or the path of a PEM file."""
    if "-----BEGIN" in value:
        return value.encode()
    path = Path(value).expanduser()
    if not path.is_file():
        raise ProvenanceError(f"provenance: {what} file not found: {path}")
    return path.read_bytes()


def signing_material(settings: ProvenanceConfig) -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM) from the config or its environment variables."""
    cert = settings.cert or os.environ.get(settings.cert_env, "")
    key = settings.key or os.environ.get(settings.key_env, "")
    if not cert or not key:
        raise ProvenanceError(
            "provenance: no C2PA signing key: set provenance.key and provenance.cert (PEM files: the "
            f"private key, the certificate chain leaf first) or {settings.key_env} / {settings.cert_env}; "
            "to deliver without a C2PA manifest, opt out explicitly with provenance.c2pa: unsigned"
        )
    return _pem(cert, "certificate"), _pem(key, "private key")


@dataclass
class _Signing:
    context: Any
    signer_name: str


@lru_cache(maxsize=4)
def _signing(cert: bytes, key: bytes, alg: str, timestamp_url: str | None) -> _Signing:
    import c2pa
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        leaf = x509.load_pem_x509_certificates(cert)[0]
        names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else leaf.subject.rfc4514_string()
        signer = c2pa.Signer.from_info(
            c2pa.C2paSignerInfo(getattr(c2pa.C2paSigningAlg, alg.upper()), cert, key, timestamp_url)
        )
        settings = c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        return _Signing(c2pa.Context(settings, signer), name)
    except Exception as error:  # noqa: BLE001 - a bad key or certificate: say so once, clearly
        raise ProvenanceError(f"provenance: cannot load the C2PA signing key/certificate: {error}") from None


def signer_for(settings: ProvenanceConfig) -> _Signing:
    cert, key = signing_material(settings)
    return _signing(cert, key, settings.alg, settings.timestamp_url)


def check_signing(settings: ProvenanceConfig) -> str:
    """Fail fast (on the driver) when outputs could not be signed; the signer's name, or "unsigned"."""
    if settings.c2pa == "unsigned":
        return "unsigned"
    return signer_for(settings).signer_name


def c2pa_definition(record: Provenance, fmt: str) -> dict[str, Any]:
    source = "source-photo"
    agent = {"name": TOOL, "version": tool_version()}
    return {
        "claim_generator_info": [agent],
        "title": record.output_id,
        "format": MIME[fmt],
        "ingredients": [
            {
                "title": record.source_title or "source photo",
                "format": mimetypes.guess_type(record.source_title)[0] or "application/octet-stream",
                "relationship": "parentOf",
                "instance_id": f"sha256:{record.source_sha256}" if record.source_sha256 else "unknown",
                "label": source,
            }
        ],
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {"action": "c2pa.opened", "parameters": {"ingredientIds": [source]}},
                        {
                            "action": "c2pa.edited",
                            "digitalSourceType": record.source_type_uri,
                            "softwareAgent": agent,
                            "description": "background replaced; the product's pixels are the source's",
                            "parameters": {
                                "models": record.models,
                                "config_fingerprint": record.config_fingerprint,
                            },
                        },
                    ]
                },
            },
            {
                "label": ASSERTION,
                "data": {
                    "output_id": record.output_id,
                    "config_fingerprint": record.config_fingerprint,
                    "source_sha256": record.source_sha256,
                    "digital_source_type": record.digital_source_type,
                    "models": record.models,
                    "tool": record.tool,
                },
            },
        ],
    }


def encode_with_provenance(
    image: np.ndarray, fmt: str, quality: int, record: Provenance, settings: ProvenanceConfig
) -> bytes:
    """The image encoded with its XMP and (unless opted out) a signed C2PA manifest; fills ``record``."""
    fmt = "jpeg" if fmt == "jpg" else fmt
    data = encode_image(image, fmt, quality, xmp=xmp_packet(record))
    if settings.c2pa == "unsigned":
        record.c2pa, record.signer = "unsigned", ""
        return data
    import c2pa

    signing = signer_for(settings)
    builder = c2pa.Builder(c2pa_definition(record, fmt), signing.context)
    out = io.BytesIO()
    try:
        builder.sign(MIME[fmt], io.BytesIO(data), out)
    finally:
        builder.close()
    record.c2pa, record.signer = "signed", signing.signer_name
    return out.getvalue()


# ---- reading back --------------------------------------------------------------------------------


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
    found = FoundProvenance(parse_xmp(file_xmp(data)))
    fmt = _sniff(data)
    if fmt is None:
        return found
    import c2pa

    try:
        reader = c2pa.Reader(MIME[fmt], io.BytesIO(data))
    except c2pa.C2paError:
        return found  # no manifest (or none we can read)
    try:
        manifest = reader.get_active_manifest() or {}
        results = reader.get_validation_results() or {}
        found.c2pa = bool(manifest)
        found.c2pa_state = reader.get_validation_state() or ""
    finally:
        reader.close()
    failures = results.get("activeManifest", {}).get("failure", []) if isinstance(results, dict) else []
    found.c2pa_failures = sorted({f.get("code", "") for f in failures} - ACCEPTED_C2PA_CODES)
    found.signer = str((manifest.get("signature_info") or {}).get("common_name", ""))
    for assertion in manifest.get("assertions", []):
        label, body = assertion.get("label", ""), assertion.get("data", {})
        if label.startswith("c2pa.actions"):
            for action in body.get("actions", []):
                kind = action.get("digitalSourceType")
                if action.get("action") in ("c2pa.edited", "c2pa.created") and kind:
                    found.c2pa_source_type = str(kind).removeprefix(IPTC_DIGITAL_SOURCE_TYPE)
        elif label == ASSERTION:
            found.c2pa_assertion = dict(body)
    return found


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
