"""`mimochat wecom-connect`: the WeCom long-connection connector as a process of its own.

This is the adapter between `bot.channels.wecom.connector` (asyncio, no Celery) and the
Celery producer it enqueues with — the same `Producer.wecom_generation` the `/wecom` webhook
uses. `mimochat up` / `demo` run it as a child when WECOM_BOT_ID and WECOM_BOT_SECRET are set;
`python -m bot.cli.wecom_connect` runs it alone (reading the environment and `.env`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from bot.core.settings import Settings, load_or_exit

log = logging.getLogger("mimochat.wecom")
DEMO_BOT_ID = "mimochat-demo-robot"
DEMO_BOT_SECRET = "mimochat-demo-secret"


def connector_argv() -> list[str]:
    """The command line the supervisor starts the connector with."""
    return [sys.executable, "-m", "bot.cli.wecom_connect"]


def demo_robot(env: dict[str, str]) -> list[str] | None:
    """For `mimochat demo` with no robot of its own: a fake WeCom on a free port, and the
    settings that point the connector at it (set in `env`); returns the fake's command line."""
    if env.get("WECOM_BOT_ID") or env.get("WECOM_WS_URL"):
        return None  # settings given in the environment or .env win over the demo's own
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env.update(
        WECOM_BOT_ID=DEMO_BOT_ID,
        WECOM_BOT_SECRET=DEMO_BOT_SECRET,
        WECOM_WS_URL=f"ws://127.0.0.1:{port}",
    )
    bot = f"{DEMO_BOT_ID}:{DEMO_BOT_SECRET}"
    return [
        sys.executable,
        "-m",
        "bot.channels.wecom.ws_sandbox",
        "--port",
        str(port),
        "--bot",
        bot,
    ]


def configured(settings: Settings) -> bool:
    """Whether the long connection is set up (an id and a secret)."""
    return bool(settings.wecom_bot_id and settings.wecom_bot_secret)


def run(settings: Settings) -> int:
    """Run the connector until SIGTERM or SIGINT; 2 when it is not configured."""
    from bot.channels.wecom.connector import Connector
    from bot.core.store import connect, resolve_url
    from tasks.celery_app import Producer

    if not configured(settings):
        print(
            "mimochat wecom-connect: set WECOM_BOT_ID and WECOM_BOT_SECRET (the robot's "
            "long-connection credentials in WeCom's admin page)",
            file=sys.stderr,
        )
        return 2
    producer = Producer(settings)
    client = connect(resolve_url(settings))
    owner = f"{socket.gethostname()}:{os.getpid()}"
    connector = Connector(settings, client, producer.wecom_generation, owner=owner)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "wecom connector %s for bot %s at %s",
            owner,
            settings.wecom_bot_id,
            settings.wecom_ws_url,
        )
        await connector.run(stop)

    asyncio.run(main())
    return 0


def main() -> int:
    """Entry point of `python -m bot.cli.wecom_connect`."""
    from bot.core.logs import setup_logging

    settings = load_or_exit(program="mimochat wecom-connect")
    setup_logging(settings)
    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
