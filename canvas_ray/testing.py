"""Synthetic inputs shared by the tests and the benchmarks (the tiny models live in ``models/tiny.py``)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def product_image(width: int = 96, height: int = 96, seed: int = 0, backdrop: int = 236) -> np.ndarray:
    """A dark, textured box product on a plain light backdrop (what the ``backdrop`` segmenter expects)."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), backdrop, np.uint8)
    y0, y1, x0, x1 = height // 4, 3 * height // 4, width // 3, 2 * width // 3
    image[y0:y1, x0:x1] = rng.integers(10, 120, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    return image


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def product_png(width: int = 96, height: int = 96, seed: int = 0) -> bytes:
    return png_bytes(product_image(width, height, seed))


def lora_params(unet: Any, adapter: str) -> dict[str, Any]:
    """LoRA parameters of one adapter, keyed like the saved file (``unet.<module>.lora_A.weight``)."""
    out = {}
    for name, param in unet.named_parameters():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.{adapter}."
            if marker in name:
                out["unet." + name.replace(marker, f".{part}.")] = param.detach()
    return out


def signing_certificate(folder: str | Any, name: str = "canvas-ray test signer") -> tuple[Any, Any]:
    """A throw-away C2PA signing identity: an ES256 key and a chain (leaf, then its own CA), written to
    ``folder/signer.key`` and ``folder/chain.pem``; returns those two paths. For tests and local trials only:
    no trust list knows this CA, so readers report the signer as untrusted."""
    import datetime
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "canvas-ray (throw-away)")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "canvas-ray throw-away CA"), org])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), org])

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=not sign,
            crl_sign=not sign,
            encipher_only=False,
            decipher_only=False,
        )

    def base(subject: x509.Name, public: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )

    ca = (
        base(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        base(leaf_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    chain, key_file = out / "chain.pem", out / "signer.key"
    pem = serialization.Encoding.PEM
    chain.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    return key_file, chain


def gpu_shape_overrides(inpaint_backend: str = "studio") -> dict[str, Any]:
    """configs/gpu.yaml's resources and pool sizes with weight-free models (no checkpoints): what the
    multi-node tests and ``benchmarks.cluster`` run. C2PA signing is opted out (no key there)."""
    overrides: dict[str, Any] = {"provenance.c2pa": "unsigned", "quality.candidates": 1}
    overrides["quality.scoring.clip_model"] = None
    for stage, backend in (("segment", "backdrop"), ("caption", "metadata"), ("inpaint", inpaint_backend)):
        overrides.update({f"{stage}.backend": backend, f"{stage}.model": None})
        overrides.update({f"{stage}.dtype": "float32", f"{stage}.device": "cpu"})
    overrides.update({"segment.options": {}, "segment.trust_remote_code": False})
    return overrides
