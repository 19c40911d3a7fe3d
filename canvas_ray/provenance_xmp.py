"""The XMP layer of provenance: an IPTC ``Iptc4xmpExt:DigitalSourceType`` packet with ``xmp:CreatorTool``
and our ``canvasray:`` fields, written into every output and read back (attribute or element form)."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

from canvas_ray.provenance_record import Provenance

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
