"""A fake robot `/wecom` over real HTTP for the fake WeCom's tests: it opens each callback with
the robot's codec, records the payloads and answers as the test says."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from bot.channels.wecom.protocol import ProtocolError, WeComCodec
from tests.helpers import WECOM_AES_KEY, WECOM_TOKEN, free_port

# answer(payload, call number) -> (HTTP status, reply to seal | raw body | None for empty)
Answer = Callable[[dict, int], tuple[int, Any]]


@contextmanager
def robot(answer: Answer) -> Iterator[tuple[str, list[dict]]]:
    """Serve a fake /wecom; yields its URL and the decrypted payloads it received."""
    codec = WeComCodec(WECOM_TOKEN, WECOM_AES_KEY)
    seen: list[dict] = []

    @Request.application
    def app(request: Request) -> Response:
        try:
            plain = codec.open(dict(request.args), request.get_data())
        except ProtocolError as exc:
            return Response(exc.reason, exc.status)
        seen.append(json.loads(plain))
        status, reply = answer(seen[-1], len(seen))
        if status != 200 or isinstance(reply, str):
            return Response(reply, status)
        if reply is None:
            return Response("")
        return Response(json.dumps(codec.seal(reply)), mimetype="application/json")

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/wecom", seen
    finally:
        server.shutdown()
        thread.join(5)
