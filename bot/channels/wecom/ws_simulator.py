"""The console's "WeCom robot — long connection" channel: a group @mention through the fake
WeCom WebSocket server, and the frames the connector pushed back, as the group sees them.

The message does not go to a webhook: the console asks the fake long-connection server (the
demo's, `bot.channels.wecom.ws_sandbox`) to send the connector an `aibot_msg_callback` with
a plain HTTP GET on its port (`/say`), then reads the fake's chat record (`/chat`): the stream
answering that callback (its frames, growing, then `finish`) and the markdown pushed to the
group by `aibot_send_msg` since. Only a `ws://` URL can be the fake (WeCom's own is `wss://`),
so the console never probes WeCom itself. The fake is found through WECOM_WS_URL (the demo sets
it for its web) or a running demo's file (`bot.cli.running`).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import redis
import requests

from bot.channels.wechat.simulator import SimChannel, SimulationError
from bot.channels.wecom import sandbox
from bot.channels.wecom.simulator import DEFAULT_GROUP, shown
from bot.channels.wecom.streams import HANDOVER_NOTE
from bot.cli import running
from bot.core.contracts import new_id
from bot.core.settings import Settings
from bot.core.store import key

NAME = "wecom_ws"
LABEL = "WeCom robot — long connection"
UNREACHABLE = (
    "no fake WeCom long-connection server is reachable: run `mimochat demo`, or set "
    "WECOM_WS_URL to a fake one (python -m bot.channels.wecom.ws_sandbox)"
)
TIMEOUT = 2.0  # seconds for one call to the fake (it is on this machine)
SIM_TTL = 3600  # seconds a simulation is kept for the console to show


def _http_base(ws_url: str) -> str | None:
    """The fake's HTTP base for a ws:// URL; None for anything else (WeCom's own is wss://)."""
    parts = urlsplit(ws_url.strip())
    if parts.scheme != "ws" or not parts.netloc:
        return None
    return f"http://{parts.netloc}"


def candidates(settings: Settings) -> list[str]:
    """Where a fake may answer: WECOM_WS_URL first, then the running demos' fakes."""
    urls = [settings.wecom_ws_url] + [
        str(d["wecom_ws_url"]) for d in running.demos() if d.get("wecom_ws_url")
    ]
    bases = [b for b in (_http_base(u) for u in urls) if b]
    return list(dict.fromkeys(bases))


def find_fake(settings: Settings, http: Any = requests) -> str | None:
    """The HTTP base of a reachable fake long-connection server, or None."""
    for base in candidates(settings):
        try:
            res = http.get(f"{base}/healthz", timeout=TIMEOUT)
            if res.status_code == 200 and "connected" in res.json():
                return base
        except (requests.RequestException, ValueError):
            continue
    return None


def channel(settings: Settings, http: Any = requests) -> SimChannel:
    """The channel as the simulator offers it: unavailable, with why, when no fake answers."""
    available = find_fake(settings, http) is not None
    note = "" if available else UNREACHABLE
    return SimChannel(NAME, LABEL, available, note, group=True, path="ws")


def _get(http: Any, url: str, params: dict[str, str]) -> dict[str, Any]:
    try:
        res = http.get(url, params=params, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise SimulationError(f"the fake WeCom at {url} did not answer ({exc})") from exc
    if res.status_code != 200:
        raise SimulationError(f"the fake WeCom refused: {res.text.strip()[:300]}")
    data = res.json()
    if not isinstance(data, dict):
        raise SimulationError("the fake WeCom answered something else than a JSON object")
    return data


def simulate(
    settings: Settings,
    client: redis.Redis,
    user: str,
    text: str,
    *,
    chat_id: str = "",
    http: Any = requests,
) -> dict[str, Any]:
    """Have the fake deliver `user`'s @mention in group `chat_id` to the connector; returns
    the simulation (its `sim_id` is what `view` shows)."""
    if not text:
        raise SimulationError("type a message")
    base = find_fake(settings, http)
    if base is None:
        raise SimulationError(UNREACHABLE[0].upper() + UNREACHABLE[1:] + ".")
    user, chat_id = user or "console_user", chat_id or DEFAULT_GROUP
    typed = sandbox.mention(text, settings)
    before = _get(http, f"{base}/chat", {"chatid": chat_id})
    params = {"userid": user, "chatid": chat_id, "text": typed}
    if settings.wecom_bot_id:
        params["bot"] = settings.wecom_bot_id
    try:
        said = _get(http, f"{base}/say", params)
    except SimulationError as exc:
        raise SimulationError(
            f"{exc} (is a connector subscribed? `mimochat demo` runs one)"
        ) from exc
    sim_id = new_id()
    sim: dict[str, Any] = {
        "sim_id": sim_id,
        "channel": NAME,
        "ok": True,
        "verdict": f"sent to the connector as aibot_msg_callback (req_id {said['req_id']})",
        "attempts": [],
        "base": base,
        "user": user,
        "chat_id": chat_id,
        "text": typed,
        "req_id": str(said["req_id"]),
        "pushed_before": len(before.get("pushed") or []),
        "sent_at": time.time(),
    }
    client.set(key("sim", "wecomws", sim_id), json.dumps(sim), ex=SIM_TTL)
    return sim


def view(client: redis.Redis, sim_id: str, http: Any = requests) -> dict[str, Any] | None:
    """What the group saw of one simulation: its stream's frames, then any send_msg pushes;
    None for an unknown (or expired) simulation."""
    raw = client.get(key("sim", "wecomws", sim_id))
    if not raw:
        return None
    sim = json.loads(raw)
    out: dict[str, Any] = {"kind": NAME, **sim, "streams": [], "pushed": [], "error": ""}
    try:
        chat = _get(http, f"{sim['base']}/chat", {"chatid": sim["chat_id"]})
    except SimulationError as exc:
        out.update(error=str(exc), done=True, timeline=[])
        return out
    for s in chat.get("streams") or []:
        if s.get("req_id") == sim["req_id"]:
            content = str(s.get("content", ""))
            handed = bool(s.get("finished")) and content.rstrip().endswith(HANDOVER_NOTE)
            out["streams"].append({**s, "handed_over": handed, **shown(content)})
    for content in (chat.get("pushed") or [])[sim["pushed_before"] :]:
        out["pushed"].append({"content": content, **shown(content)})
    answered = any(s["finished"] and not s["handed_over"] for s in out["streams"])
    out["done"] = answered or bool(out["pushed"])
    out["timeline"] = _timeline(out)
    return out


def _timeline(out: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per frame the group was shown (the fake keeps no times: `after` is blank)."""
    rows = [{"stage": "callback", "after": 0.0, "detail": out["req_id"], "ok": True}]
    for s in out["streams"]:
        for number, chars in enumerate(s.get("frames") or [], 1):
            last = number == len(s["frames"]) and s["finished"]
            detail = f"{chars} chars" + (" · finish" if last else "")
            rows.append(
                {"stage": f"stream frame {number}", "after": None, "detail": detail, "ok": True}
            )
    for number, pushed in enumerate(out["pushed"], 1):
        detail = f"aibot_send_msg, {len(pushed['content'])} chars"
        rows.append({"stage": f"push {number}", "after": None, "detail": detail, "ok": True})
    return rows
