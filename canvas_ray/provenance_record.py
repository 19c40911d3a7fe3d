"""The provenance record of one output (what is embedded in it and recorded in its manifest row), and the
names both layers share: the IPTC source types, the tool, the image MIME types."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version

TOOL = "canvas-ray"
IPTC_DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = "compositeWithTrainedAlgorithmicMedia"  # a diffusion model painted the background
SYNTHETIC = "compositeSynthetic"  # procedural backdrop or pure white around the real product
MIME = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


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
