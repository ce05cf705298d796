"""Running the app under uvicorn, with a draining shutdown.

NOTE: on SIGTERM (or Ctrl-C) the server first drains: /health turns 503 and new requests get
503, requests in flight run to completion for up to `drain_timeout_s`, then uvicorn stops and
the lifespan shuts the engine process down. A second signal stops at once.
"""

import asyncio
import logging

import uvicorn

from fleetlm.engine.config import EngineArgs
from fleetlm.engine.entrypoints.openai.api_server import create_app
from fleetlm.engine.entrypoints.openai.settings import ServerSettings

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.drain_timeout_s = drain_timeout_s
        self.drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame) -> None:
        context = getattr(self.config.app.state, "context", None)
        if self.drain_task is not None or context is None:
            super().handle_exit(sig, frame)  # second signal, or nothing to drain: stop now
            return
        context.draining = True
        logger.info(
            "draining: %d requests in flight (up to %.0f s)",
            context.num_in_flight,
            self.drain_timeout_s,
        )
        self.drain_task = asyncio.get_event_loop().create_task(self._drain(context))

    async def _drain(self, context) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while context.num_in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if context.num_in_flight:
            logger.warning("drain timeout: %d requests still in flight", context.num_in_flight)
        self.should_exit = True


def run_server(settings: ServerSettings, engine_args: EngineArgs) -> None:
    app = create_app(settings, engine_args)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    DrainingServer(config, settings.drain_timeout_s).run()
