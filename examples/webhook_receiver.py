"""A minimal receiver for canvas-ray job webhooks: verifies, refuses replays, de-duplicates.

    CANVAS_RAY_WEBHOOK_SECRET=... python examples/webhook_receiver.py --port 9000

and start the server with ``serve.jobs.webhook_allowed_origins: ["http://127.0.0.1:9000"]`` (the same secret
in its environment). Each delivery is checked in this order:

1. ``X-Canvas-Ray-Signature: t=<unix time>,v1=<hex>``: HMAC-SHA256 of ``"<t>." + raw body`` under the shared
   secret, compared in constant time (parse ASCII only; anything malformed is a 401);
2. ``t`` within ``TOLERANCE_S`` (300 s) of this machine's clock, so a captured request cannot be replayed
   later (keep the clock in sync with NTP);
3. ``X-Canvas-Ray-Delivery`` (one id per event, the same on every retry) not seen within the tolerance
   window: a retry or a replay inside the window is answered 200 and not acted on twice.

Answer 2xx fast and do the work elsewhere: the sender retries 5xx, 429 and timeouts with backoff. Standard
library only, so it runs anywhere; the verification is :func:`serve.webhooks.verify_signature`, copied here
so that a receiver needs nothing from canvas-ray.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300
MAX_BODY = 1 << 20
_HEADER = re.compile(r"^t=([0-9]{1,12}),v1=([0-9a-f]{64})$", re.ASCII)
_DELIVERY = re.compile(r"^[0-9a-f]{32}$", re.ASCII)


def verify(secret: bytes, body: bytes, header: str | None, now: float) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` with a timestamp within the tolerance."""
    if not header or not header.isascii():
        return False
    match = _HEADER.match(header)
    if match is None:
        return False
    stamp, given = match.group(1), match.group(2)
    if abs(now - int(stamp)) > TOLERANCE_S:
        return False
    expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), given.encode())


class Deliveries:
    """Delivery ids seen in the last ``2 * TOLERANCE_S`` seconds (older ones would fail the time check)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()

    def first_time(self, delivery: str, now: float) -> bool:
        with self.lock:
            for old in [d for d, at in self.seen.items() if now - at > 2 * TOLERANCE_S]:
                del self.seen[old]
            if delivery in self.seen:
                return False
            self.seen[delivery] = now
            return True


def make_handler(secret: bytes, deliveries: Deliveries) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = self.headers.get("Content-Length", "")
            if not length.isascii() or not length.isdigit() or int(length) > MAX_BODY:
                self._answer(413, "body too large or without a length")
                return
            body = self.rfile.read(int(length))
            now = time.time()
            if not verify(secret, body, self.headers.get("X-Canvas-Ray-Signature"), now):
                self._answer(401, "bad or expired signature")
                return
            delivery = self.headers.get("X-Canvas-Ray-Delivery", "")
            if not _DELIVERY.match(delivery):
                self._answer(400, "no delivery id")
                return
            if not deliveries.first_time(delivery, now):
                self._answer(200, "already received")
                return
            event = json.loads(body)
            print(json.dumps({"event": event.get("event"), "job_id": event.get("job_id")}), flush=True)
            self._answer(204, "")

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret-env", default="CANVAS_RAY_WEBHOOK_SECRET")
    args = parser.parse_args()
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        raise SystemExit(f"set {args.secret_env} to the server's webhook secret")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(secret.encode(), Deliveries()))
    print(f"listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
