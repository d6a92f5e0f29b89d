"""`mlx-opd studio`: crop vs full answers as a local page, for one model (optionally a base
and a trained adapter side by side).

    mlx-opd studio --model M [--adapter RUN_DIR] [--config RUN_DIR] [--port 7860]

Open or drop a photo, draw the evidence box with the mouse (or type it; none for box-free
views), type the question and options; the page shows each view's answer (plain full
image, student with box and hint, teacher crop), its probability for each option, and the
per-token teacher-student divergence coloured along the full-image answer; with an
adapter, both models' answers per view. The answers are `compare.compare`'s, the same as
`mlx-opd compare` gives for that image, box and question.

Built on Starlette and uvicorn (the `studio` extra: a small ASGI stack that starts in
about a second, weighs a few MB where Gradio brings well over a hundred, and is tested
with an ordinary HTTP client and a real browser). It listens on 127.0.0.1 unless --host
says otherwise. MLX runs in one worker thread: the models load there while the page
already answers (it shows the progress), and questions are answered one at a time.
"""

from __future__ import annotations

import io
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mlx_opd.run.config import CompareConfig

PAGE = Path(__file__).with_name("studio_page.html")


class StudioError(ValueError):
    """A request the page should show as a message (bad image, bad box, ...)."""


@dataclass
class Studio:
    model: str
    adapter: str | None = None
    view_cfg: object = None
    pixels: object = None
    max_tokens: int = CompareConfig.max_tokens
    state: dict = field(default_factory=lambda: {"state": "starting", "message": ""})

    def __post_init__(self):
        from mlx_opd.run.config import PixelConfig, ViewConfig

        self.view_cfg = self.view_cfg or ViewConfig()
        self.pixels = self.pixels or PixelConfig()
        self._pool = ThreadPoolExecutor(max_workers=1)  # all MLX work in one thread
        self._models: dict = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="mlx-opd-studio-")
        self._lock, self._count = threading.Lock(), 0

    def start_loading(self):
        return self._pool.submit(self._load)

    def _load(self) -> None:
        from mlx_opd import models

        try:
            self.state = {"state": "loading", "message": f"loading {self.model}"}
            self._models["base"] = models.load(self.model)
            if self.adapter:
                self.state = {"state": "loading", "message": f"loading {self.adapter}"}
                self._models["adapter"] = models.load(self.model, self.adapter)
            self.state = {"state": "ready", "message": "ready",
                          "models": {k: str(v.adapter_path or v.path)
                                     for k, v in self._models.items()},
                          "needs_box": self.view_cfg.needs_boxes()}
        except Exception as e:  # shown on the page: the server stays up to say it
            self.state = {"state": "error", "message": f"{type(e).__name__}: {e}"}

    def answer(self, image: bytes, box: str, question: str, options: str) -> dict:
        """compare.compare for every loaded model; StudioError for what the user can fix."""
        if self.state["state"] != "ready":
            raise StudioError(f"the model is not ready ({self.state['message']})")
        sample = self._sample(image, box, question, options)
        return self._pool.submit(self._compare, sample).result()

    def _compare(self, sample) -> dict:
        from mlx_opd.evaluation.compare import compare

        return {name: compare(loaded, sample, self.view_cfg, self.pixels, self.max_tokens)
                for name, loaded in self._models.items()}

    def _sample(self, image: bytes, box: str, question: str, options: str):
        from PIL import Image, UnidentifiedImageError

        from mlx_opd.data import make_sample
        from mlx_opd.run.errors import DataError

        if not image:
            raise StudioError("no photo: open or drop one first")
        try:
            im = Image.open(io.BytesIO(image))
            im.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise StudioError("that file is not an image mlx-opd can read (PNG, JPEG, ...)") \
                from None
        if not question.strip():
            raise StudioError("type a question")
        boxes = []
        for part in filter(None, (b.strip() for b in box.split(";"))):
            try:
                boxes.append([float(v) for v in part.split(",")])
            except ValueError:
                raise StudioError(f"box {part!r}: expected x1,y1,x2,y2 in pixels") from None
        opts = [o.strip() for o in options.replace("\n", ",").split(",") if o.strip()]
        with self._lock:  # each request its own file: answers never see another's photo
            self._count += 1
            path = Path(self._tmp.name) / f"photo-{self._count}.png"
            im.convert("RGB").save(path)
            row = {"image": str(path), "question": question.strip(), "options": opts or None,
                   **({"box": boxes[0]} if len(boxes) == 1 else {"boxes": boxes}
                      if boxes else {})}
            try:
                return make_sample(row, path.parent, "the page",
                                   need_boxes=self.view_cfg.needs_boxes())
            except DataError as e:
                raise StudioError(e.what + (f" ({e.fix})" if e.fix else "")) from None


def app(studio: Studio, hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "[::1]")):
    """The ASGI app: the page, the state, and the answers. Requests naming another Host
    are refused (a page elsewhere cannot reach the model through DNS rebinding)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    async def page(request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def state(request):
        return JSONResponse(studio.state)

    async def ask(request):
        form = await request.form()
        upload = form.get("image")
        data = await upload.read() if hasattr(upload, "read") else b""
        try:
            result = await run_in_threadpool(studio.answer, data, str(form.get("box", "")),
                                             str(form.get("question", "")),
                                             str(form.get("options", "")))
        except StudioError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except Exception as e:  # the page says what happened; the server keeps serving
            return JSONResponse({"error": f"{type(e).__name__}: {e}"}, status_code=500)
        return JSONResponse(result)

    return Starlette(routes=[Route("/", page), Route("/api/state", state),
                             Route("/api/ask", ask, methods=["POST"])],
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))])


def server(studio: Studio, host: str = CompareConfig.host, port: int = CompareConfig.port):
    """A uvicorn server for the app (call .run(), or run it in a thread in tests)."""
    import uvicorn

    loopback = ("127.0.0.1", "localhost", "[::1]")
    hosts = loopback if host in ("127.0.0.1", "localhost", "::1") else ("*",)  # asked for
    return uvicorn.Server(uvicorn.Config(app(studio, hosts), host=host, port=port,
                                         log_level="warning"))
