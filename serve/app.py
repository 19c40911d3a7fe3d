"""Ray Serve app: the model stages as deployments, composed behind one FastAPI ingress.

```
POST /v1/backgrounds ──▶ Ingress: Decode ──▶ SegmentCaptionDeployment (segment, then caption)
     ──▶ Ingress: Prompt ──▶ InpaintDeployment ──▶ Ingress: Composite+Verify ──▶ JSON (or the image bytes)
```

The stage order is the pipeline spec's (:mod:`canvas_ray.spec`); the model stages run in replicas with
dynamic batching (:mod:`serve.deployments`), grouped by ``serve.colocate``
(:func:`canvas_ray.spec.serve_groups`; ``chained`` above, or ``split``, ``models``, ``ingress``: the
models in the ingress, no hand-off). The cheap stages run in the ingress. By concern: parsing
(:mod:`serve.parsing`), keys (:mod:`serve.auth`), load shedding (:mod:`serve.admission`), errors
(:mod:`serve.errors`), responses (:mod:`serve.responses`), metrics and catalog jobs (:mod:`serve.jobs`).

Run it with ``canvas-ray serve --config configs/local.yaml`` or ``serve run configs/serve.yaml``.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route signatures of the ingress class.
import asyncio
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError

from canvas_ray.config import REPO_ROOT, CanvasConfig, load_config
from canvas_ray.io.images import delivery_quality
from canvas_ray.io.outputs import join_uri, safe_name, write_bytes
from canvas_ray.pipeline import items_batch
from canvas_ray.profiles import ProfileBook
from canvas_ray.provenance import ProvenanceContext, check_provenance, encode_with_provenance, read_provenance
from canvas_ray.records import OutputRecord
from canvas_ray.rows import Batch, num_rows
from canvas_ray.schema import Status
from canvas_ray.spec import in_process_stages, make_stage, serve_groups
from canvas_ray.stages.base import StageContext
from canvas_ray.styles import MAX_STYLE_TEXT, StyleBook
from serve.admission import Admission, RateLimiter, with_deadline
from serve.auth import authorize, configured_api_keys
from serve.deployments import REQUEST_COLUMN, ModelDeployment, StageGroup, deployment_options, ingress_options
from serve.errors import ERROR_RESPONSES, ApiError, error_response, install_handlers
from serve.jobs import JobRoutes
from serve.jobs import router as jobs_router
from serve.metrics import ServiceMetrics
from serve.outcomes import inside_seconds, raise_for_input, server_timing
from serve.parsing import ParsedRequest, RequestReader, request_body_openapi
from serve.responses import DELIVERED, GenerateResponse, image_out, output_error, quality_figures, text

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_CONFIG = os.environ.get("CANVAS_RAY_CONFIG", "configs/local.yaml")
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_OF_MIME = {mime: fmt for fmt, mime in MIME.items()}

app = FastAPI(
    title="canvas-ray",
    version="0.1.0",
    description="AI backgrounds for product photos; product pixels are never changed.",
)
install_handlers(app)
app.include_router(jobs_router)  # /v1/jobs: catalog jobs on the cluster (serve/jobs.py)


def serve_limits_config(config: CanvasConfig) -> CanvasConfig:
    """A copy of the config whose decode limits are the (smaller) serving limits."""
    limits = config.limits.model_copy(
        update={
            "max_pixels": min(config.limits.max_pixels, config.serve.max_pixels),
            "max_image_bytes": min(config.limits.max_image_bytes, config.serve.max_upload_bytes),
        }
    )
    return config.model_copy(update={"limits": limits})


@serve.deployment
@serve.ingress(app)
class Ingress(JobRoutes):
    def __init__(
        self,
        config: CanvasConfig,
        models: dict[str, Any],
        api_keys: list[str] | None = None,
    ):
        self.config = serve_limits_config(config)
        self._provenance: tuple[ProvenanceContext, str] | None = None  # built on first use
        self.limits = self.config.serve
        self.styles = StyleBook.from_config(self.config)
        # the stage order comes from the one pipeline spec: each group of serve.colocate runs in a model
        # deployment (a handle, keyed "segment+caption") or, colocate `ingress`, here; the rest here too
        groups = serve_groups(self.config.serve.colocate)
        self.groups = {group[0]: group for group in groups}
        context = StageContext(styles=self.styles)
        self.models: dict[str, Any] = {
            "+".join(group): StageGroup(self.config, group, context)
            if self.config.serve.colocate == "ingress"
            else models["+".join(group)]
            for group in groups
        }
        in_groups = {name for group in groups for name in group}
        self.order = in_process_stages()
        self.stages = {
            name: make_stage(name, self.config, context) for name in self.order if name not in in_groups
        }
        profiles = ProfileBook.load(self.config.output.profiles_file)
        self.reader = RequestReader(self.limits, self.styles, profiles)
        self.api_keys = configured_api_keys(self.config) if api_keys is None else api_keys
        self.ready = False
        self.init_jobs()
        self.admission = Admission(
            self.limits.max_inflight, self.limits.max_queued, self.limits.retry_after_s
        )
        self.metrics = ServiceMetrics()
        rate = self.limits.rate_limit_per_key
        self.rate_limiter = RateLimiter(rate, self.limits.rate_limit_burst) if rate else None

    def batch_sizes(self, stage: str) -> list[int]:
        """Requests per call of a stage this replica holds (``serve.colocate: ingress``), like a model
        deployment's :meth:`~serve.deployments.StageGroup.batch_sizes` (for tests and tuning)."""
        held = [r for r in self.models.values() if isinstance(r, StageGroup) and stage in r.names]
        if not held:
            raise ValueError(f"this ingress holds no {stage!r} stage (serve.colocate is not `ingress`)")
        return held[0].batch_sizes(stage)

    def _authorize(self, request: Request) -> str | None:
        return authorize(request.headers, self.api_keys)

    # -- the pipeline -------------------------------------------------------------------------------

    async def generate(self, parsed: ParsedRequest, rid: str, spent: dict[str, float] | None = None) -> Batch:
        """Run the request's item through the stages; ``spent`` gets each stage's wall seconds as seen
        from here (a model stage's includes its hand-off to and from the deployment and its queueing)."""
        spent = {} if spent is None else spent
        fields, image = parsed.fields, parsed.image
        source = image if image is not None else (fields.image_uri or "").encode()
        item: dict[str, Any] = {
            "item_id": "upload-" + hashlib.sha256(source).hexdigest()[:16],
            "style": " ".join(fields.style.split()),
            "variants": fields.n,
            "aspect_ratios": "|".join(parsed.aspects) or None,
            "profile": "|".join(parsed.profiles) or None,
            "seed": fields.seed,
            "title": fields.title or "",
            "product_box": fields.product_box or "",
            "prompt": fields.prompt or "",  # the request's own prompt, used verbatim by Prompt when given
            REQUEST_COLUMN: rid,  # carried by every stage (Prompt included) to this request's rows
        }
        if image is not None:
            item["image_bytes"] = image
        else:
            item["image_uri"] = fields.image_uri
        if parsed.style_image is not None:  # decoded into `style_image` by Decode, never fetched from a URL
            item["style_image_bytes"] = parsed.style_image
        batch = items_batch([item])
        for name in self.order:  # Fetch leaves uploaded bytes alone; URIs are fetched only when allowlisted
            if name not in self.stages and name not in self.groups:
                continue  # ran in its group's replica
            begun = time.perf_counter()
            group = self.groups.get(name)
            key = "+".join(group) if group else name
            if group:
                try:
                    runner = self.models[key]
                    if isinstance(runner, StageGroup):  # colocate `ingress`: in this replica
                        batch = await runner.run(batch)
                    else:
                        batch = await runner.run.remote(batch)
                except BackPressureError:
                    raise ApiError(
                        503,
                        "overloaded",
                        f"the {key} model deployment is at capacity; retry later",
                        self.limits.retry_after_s,
                    ) from None
            else:
                batch = await asyncio.to_thread(self.stages[name], batch)
            spent[key] = time.perf_counter() - begun
            self.metrics.stage(key, spent[key])
            if group:  # the part of it spent inside the stages, in the replica
                spent[key + ".inside"] = sum(inside_seconds(batch, stage) for stage in group)
            raise_for_input(batch)  # 422 for a bad input, 500 for a failure of ours (e.g. caption)
        return batch

    def _save(self, rid: str, name: str, data: bytes) -> str | None:
        root = self.limits.output_root
        if not root:
            return None
        folder = safe_name(rid, limit=64)
        uri = join_uri(root, folder, safe_name(name, limit=160))
        if "://" not in root:
            base = Path(root).resolve()
            target = Path(uri).resolve()
            if base not in target.parents:  # never outside output_root
                raise ApiError(400, "bad_request", "output path escapes output_root")
            target.parent.mkdir(parents=True, exist_ok=True)
            uri = str(target)
        write_bytes(uri, data, {})
        return uri

    def _encode(self, batch: Batch, index: int, fmt: str) -> bytes:
        """The output encoded with its provenance (IPTC XMP + signed C2PA, as the batch job writes it),
        read back before it is sent: an image without readable provenance is never delivered."""
        if self._provenance is None:
            self._provenance = (ProvenanceContext.from_config(self.config), self.config.fingerprint())
        context, fingerprint = self._provenance
        record = context.record(batch, index, fingerprint)
        quality = delivery_quality(fmt, self.config.output.quality)
        data = encode_with_provenance(batch["result"][index], fmt, quality, record, context.settings)
        problems = check_provenance(read_provenance(data), record)
        if problems:
            raise RuntimeError("provenance: read back: " + "; ".join(problems))
        return data

    # -- routes -------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/v1/stats", summary="this replica's request counts, queue depth and stage latencies")
    async def stats(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return self.metrics.snapshot(self.admission.inflight, self.admission.queued)

    @app.get("/healthz", summary="process is up")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="200 once every model deployment answers", responses={503: {}})
    async def readyz(self) -> JSONResponse:
        if not self.ready:
            try:
                handles = [h for h in self.models.values() if not isinstance(h, StageGroup)]
                pings = [h.ping.remote() for h in handles]
                results = await asyncio.wait_for(asyncio.gather(*pings), timeout=5)
                self.ready = all(results)
            except Exception as error:  # noqa: BLE001 - not ready yet, whatever the reason
                return error_response(503, "not_ready", f"model deployments not ready: {error}"[:500])
        if not self.ready:
            return error_response(503, "not_ready", "model deployments not ready")
        if self.admission.saturated:
            return error_response(
                503,
                "saturated",
                f"every slot is busy and the queue is full ({self.admission.inflight} running, "
                f"{self.admission.queued} waiting)",
                {"Retry-After": str(max(1, round(self.limits.retry_after_s)))},
            )
        return JSONResponse({"status": "ready"})

    @app.get("/v1/styles", summary="style presets", responses={401: {}})
    async def styles_list(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {
            "styles": [
                {"name": name, "description": preset.description}
                for name, preset in self.styles.presets.items()
            ],
            "default": list(self.config.styles.default),
            "aspect_ratios": list(self.config.output.aspect_ratios),
            "max_variants": self.limits.max_variants,
            "max_style_chars": MAX_STYLE_TEXT,
        }

    @app.get("/v1/profiles", summary="output profiles (channel rules)", responses={401: {}})
    async def profiles_list(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        book = self.reader.profiles
        return {"profiles": [book.get(name).model_dump(mode="json") for name in book.names()]}

    @app.post(
        "/v1/backgrounds",
        summary="new backgrounds for a product photo",
        openapi_extra=request_body_openapi(
            {
                "200": {
                    "description": "generated images (JSON), or the image itself when Accept asks for one",
                    "content": {mime: {} for mime in MIME.values()},  # JSON: GenerateResponse
                },
                **{str(code): {"description": about} for code, about in ERROR_RESPONSES.items()},
            }
        ),
        responses={200: {"model": GenerateResponse}},
    )
    async def backgrounds(self, request: Request) -> Response:
        started = time.perf_counter()
        key = self._authorize(request)
        if self.rate_limiter is not None:  # per API key (per client address without keys)
            self.rate_limiter.take(key or (request.client.host if request.client else "-"))
        code = 500
        try:
            async with self.admission.slot():  # bounded: past the queue, 503 + Retry-After at once
                self.metrics.admission(self.admission.inflight, self.admission.queued)
                response = await with_deadline(
                    self._backgrounds(request, started), self.limits.request_timeout_s
                )
            code = response.status_code
            return response
        except ApiError as error:
            code = error.status
            raise
        finally:
            self.metrics.request(code)
            self.metrics.admission(self.admission.inflight, self.admission.queued)

    async def _backgrounds(self, request: Request, started: float) -> Response:
        admitted = time.perf_counter()
        parsed = await self.reader.read(request)
        spent = {"queue": admitted - started, "parse": time.perf_counter() - admitted}
        rid = uuid.uuid4().hex
        batch = await self.generate(parsed, rid, spent)
        # `review` outputs are delivered too, flagged: the mask is not vouched for (quality.mask_review)
        delivered = [i for i in range(num_rows(batch)) if batch["status"][i] in DELIVERED]
        self.metrics.review(sum(batch["status"][i] == Status.REVIEW.value for i in delivered))
        accept = [part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(",")]
        wanted = next((FORMAT_OF_MIME[a] for a in accept if a in FORMAT_OF_MIME), None)
        if wanted is not None and len(delivered) == 1:
            return await self._image_response(batch, delivered[0], wanted, rid, spent, started)
        fmt = parsed.fields.format
        begun = time.perf_counter()
        encoded = await asyncio.to_thread(lambda: [self._encode(batch, i, fmt) for i in delivered])
        spent["encode"] = time.perf_counter() - begun
        # every item derives from its output's typed record (canvas_ray.records.OutputRecord)
        records = OutputRecord.from_batch(batch)
        images = [
            image_out(records[i], data, MIME[fmt], self._save(rid, f"{records[i].output_id}.{fmt}", data))
            for i, data in zip(delivered, encoded, strict=True)
        ]
        body = GenerateResponse(
            request_id=rid,
            caption=records[delivered[0]].caption if delivered else "",
            images=images,
            errors=[output_error(record) for record in records if not record.delivered],
            seconds=round(time.perf_counter() - started, 4),
        )
        headers = {"X-Request-ID": rid, "Server-Timing": server_timing(spent, started)}
        return Response(body.model_dump_json(), media_type="application/json", headers=headers)

    async def _image_response(
        self, batch: Batch, index: int, fmt: str, rid: str, spent: dict[str, float], started: float
    ) -> Response:
        """The one delivered image itself (``Accept: image/...``), its figures in headers."""
        begun = time.perf_counter()
        data = await asyncio.to_thread(self._encode, batch, index, fmt)
        spent["encode"] = time.perf_counter() - begun
        self._save(rid, str(batch["output_id"][index]) + "." + fmt, data)
        headers = {
            "X-Request-ID": rid,
            "Server-Timing": server_timing(spent, started),
            "X-Product-Preserved": "true",
            "X-Status": text(batch["status"][index]),
        }
        figures = quality_figures(OutputRecord.from_row(batch, index))
        headers.update(
            {f"X-{k.replace('_', '-').title()}": str(v) for k, v in figures.items() if v is not None}
        )
        return Response(data, media_type=MIME[fmt], headers=headers)


# --------------------------------------------------------------------------------------------- build


def build_app(config: CanvasConfig, api_keys: list[str] | None = None) -> serve.Application:
    """The bound Serve application for ``config`` (``api_keys`` overrides the configured keys): a model
    deployment per group of ``serve.colocate`` (none for ``ingress``) behind the ingress."""
    config = serve_limits_config(config)  # the replicas and the ingress build their stages alike
    groups = serve_groups(config.serve.colocate)
    model: Any = ModelDeployment
    ingress: Any = Ingress
    if config.serve.colocate == "ingress":
        return ingress.options(**ingress_options(config, groups[0])).bind(config, {}, api_keys)
    bound = {
        "+".join(group): model.options(**deployment_options(group, config)).bind(config, group)
        for group in groups
    }
    return ingress.options(**ingress_options(config)).bind(config, bound, api_keys)


def _config_path(value: str) -> Path:
    """A config path as given, else relative to the repository (Serve may run from another folder)."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def app_builder(args: dict[str, Any]) -> serve.Application:
    """``serve run serve.app:app_builder config=configs/local.yaml`` (or ``args: {config: ...}`` in YAML)."""
    return build_app(load_config(_config_path(str(args.get("config") or DEFAULT_CONFIG))))


def __getattr__(name: str) -> Any:
    """``serve.app:application``: the app for $CANVAS_RAY_CONFIG (for ``serve build``), built on first use."""
    if name == "application":
        return app_builder({})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
