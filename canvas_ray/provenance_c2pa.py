"""The C2PA layer of provenance (``c2pa-python``): the operator's signing key and certificate chain, the
manifest of one output (``c2pa.opened`` the source photo, ``c2pa.edited`` with the digital source type and
the models, our ``com.canvas-ray.provenance`` assertion), signing it into the encoded bytes, reading it
back."""

from __future__ import annotations

import io
import mimetypes
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from canvas_ray.config import ProvenanceConfig
from canvas_ray.provenance_record import (
    IPTC_DIGITAL_SOURCE_TYPE,
    MIME,
    TOOL,
    Provenance,
    ProvenanceError,
    tool_version,
)

ASSERTION = "com.canvas-ray.provenance"
# A signer that no trust list vouches for is the operator's business (their CA); every other failure counts.
ACCEPTED_C2PA_CODES = frozenset({"signingCredential.untrusted"})


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


def sign_c2pa(data: bytes, fmt: str, record: Provenance, settings: ProvenanceConfig) -> bytes:
    """``data`` (encoded as ``fmt``) with a C2PA manifest of ``record`` signed into it; fills ``record``."""
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


def read_c2pa(data: bytes, fmt: str) -> dict[str, Any]:
    """The C2PA fields of :class:`canvas_ray.provenance.FoundProvenance` from image bytes of ``fmt``
    (c2pa-python's Reader); empty when there is no manifest (or none it can read)."""
    import c2pa

    try:
        reader = c2pa.Reader(MIME[fmt], io.BytesIO(data))
    except c2pa.C2paError:
        return {}
    try:
        manifest = reader.get_active_manifest() or {}
        results = reader.get_validation_results() or {}
        found: dict[str, Any] = {"c2pa": bool(manifest), "c2pa_state": reader.get_validation_state() or ""}
    finally:
        reader.close()
    failures = results.get("activeManifest", {}).get("failure", []) if isinstance(results, dict) else []
    found["c2pa_failures"] = sorted({f.get("code", "") for f in failures} - ACCEPTED_C2PA_CODES)
    found["signer"] = str((manifest.get("signature_info") or {}).get("common_name", ""))
    for assertion in manifest.get("assertions", []):
        label, body = assertion.get("label", ""), assertion.get("data", {})
        if label.startswith("c2pa.actions"):
            for action in body.get("actions", []):
                kind = action.get("digitalSourceType")
                if action.get("action") in ("c2pa.edited", "c2pa.created") and kind:
                    found["c2pa_source_type"] = str(kind).removeprefix(IPTC_DIGITAL_SOURCE_TYPE)
        elif label == ASSERTION:
            found["c2pa_assertion"] = dict(body)
    return found
