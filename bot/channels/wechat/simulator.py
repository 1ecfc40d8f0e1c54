"""The console's chat simulator and URL-verification tester: the platform's side of the wire.

It builds the exact request WeChat's servers make (signature, timestamp, nonce, AES in safe
mode), posts it to a webhook — the local one or the public URL of a deployment, through its
proxy — and behaves like WeChat when the webhook is slow: a try that has not answered in 5 s
is abandoned and the same message (same MsgId) is sent again, up to 3 more times. The protocol
itself lives in `bot/channels/`; this module only drives it over HTTP. The WeCom robot's
channels build their callbacks in `bot.channels.wecom.simulator` and are sent by the same `send`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
import requests

from bot.channels.wechat.protocol import message_xml, read_reply, sign_request, sign_url_check
from bot.core import jobs
from bot.core.settings import Settings
from bot.core.store import key

RETRY_AFTER = 5.0  # WeChat abandons a try that has not answered in 5 s (URL check too)
SIM_TTL = 86400
BODY_SHOWN = 500  # characters of a webhook's answer shown to the operator
DEFAULT_ACCOUNT = "gh_mimochat_console"


class SimulationError(Exception):
    """The simulation cannot be built (unknown channel, missing setting, bad URL)."""


@dataclass(frozen=True)
class SimChannel:
    """A platform the simulator speaks as."""

    name: str
    label: str
    available: bool
    note: str = ""
    group: bool = False  # asks for a group id too
    path: str = "/wechat"  # the webhook it speaks to on a mimochat server


CHANNELS: dict[str, SimChannel] = {
    c.name: c
    for c in (
        SimChannel("wechat_plain", "Official Account — plaintext mode", True),
        SimChannel("wechat_aes", "Official Account — safe mode (AES)", True),
        SimChannel("wecom_single", "WeCom robot — single chat", True, path="/wecom"),
        SimChannel("wecom_group", "WeCom robot — group, @mention", True, group=True, path="/wecom"),
    )
}


@dataclass
class Outgoing:
    """One message as a platform sends it; `signed()` signs it afresh for each try."""

    channel: str
    user: str
    msg_id: str
    signed: Callable[[], tuple[dict[str, str], str]]
    open_reply: Callable[[str], dict[str, Any]]
    path: str = "/wechat"
    content_type: str = "text/xml"
    # Reads the webhook's last answer into the simulation's verdict (the platform's view).
    judge: Callable[[Simulation, Outgoing, requests.Response | None], None] | None = None


def check_url(url: str) -> str:
    """An http(s) URL with a host, or SimulationError."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SimulationError(f"not an http(s) URL: {url!r}")
    return url


def build(
    settings: Settings, channel: str, user: str, text: str, account: str = DEFAULT_ACCOUNT
) -> Outgoing:
    """The message `user` sends on `channel`, signed (and encrypted) like the platform does."""
    spec = CHANNELS.get(channel)
    if spec is None:
        raise SimulationError(f"unknown channel {channel!r}; one of {', '.join(CHANNELS)}")
    if not spec.available:
        raise SimulationError(f"{spec.label}: {spec.note}")
    if spec.path != "/wechat":
        raise SimulationError(f"{spec.label}: built by bot.channels.wecom.simulator")
    if not user or not text:
        raise SimulationError("a user id and a message are needed")
    if not settings.wechat_token:
        raise SimulationError("WECHAT_TOKEN is not set: the webhook cannot check any signature")
    aes_key = settings.wechat_aes_key if channel == "wechat_aes" else ""
    if channel == "wechat_aes" and not aes_key:
        raise SimulationError("safe mode needs WECHAT_AES_KEY (the EncodingAESKey)")
    msg_id = str(time.time_ns() // 1000)  # WeChat's MsgIds are 64-bit numbers
    xml = message_xml(user, account, content=text, msg_id=msg_id)

    def signed() -> tuple[dict[str, str], str]:
        req = sign_request(
            settings.wechat_token,
            xml,
            aes_key=aes_key,
            app_id=settings.wechat_app_id,
            openid=user,
        )
        return req.params, req.body

    def open_reply(body: str) -> dict[str, str]:
        return read_reply(
            body,
            token=settings.wechat_token,
            aes_key=settings.wechat_aes_key,
            app_id=settings.wechat_app_id,
        )

    return Outgoing(channel, user, msg_id, signed, open_reply)


@dataclass
class Attempt:
    """One try of one message: what the webhook did with it."""

    number: int
    status: int | None
    seconds: float
    outcome: str  # answered | timeout | unreachable
    body: str = ""


@dataclass
class Simulation:
    """What the simulated platform saw: every try, the passive reply, and what it means."""

    channel: str
    user: str
    url: str
    msg_id: str
    text: str
    sent_at: float
    attempts: list[Attempt] = field(default_factory=list)
    passive_reply: str | None = None
    reply_error: str = ""
    verdict: str = ""
    ok: bool = False
    job_id: str | None = None
    # WeCom: the simulation's own id (its chat record), the group, and the decrypted reply.
    sim_id: str = ""
    chat_id: str = ""
    reply: dict[str, Any] | None = None
    stream_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def send(
    out: Outgoing,
    url: str,
    text: str,
    *,
    retry_after: float = RETRY_AFTER,
    attempts: int = 3,
    http: Any = requests,
) -> Simulation:
    """Post the message as the platform would: a try slower than `retry_after` (or a 5xx) is
    followed by the same message again, `attempts` tries in all (WECHAT_PLATFORM_TIMEOUT and
    WECHAT_ATTEMPTS are the settings that say what WeChat does)."""
    check_url(url)
    sim = Simulation(out.channel, out.user, url, out.msg_id, text, time.time())
    last = None
    for number in range(1, max(1, attempts) + 1):
        params, body = out.signed()
        started = time.perf_counter()
        try:
            res = http.post(
                url,
                params=params,
                data=body.encode(),
                headers={"Content-Type": out.content_type, "User-Agent": "Mozilla/4.0"},
                timeout=(min(3.0, retry_after), retry_after),
                allow_redirects=False,  # WeChat does not follow redirects
            )
        except requests.Timeout:
            sim.attempts.append(Attempt(number, None, _since(started), "timeout"))
            continue
        except requests.RequestException as exc:
            sim.attempts.append(
                Attempt(number, None, _since(started), "unreachable", type(exc).__name__)
            )
            break  # a refused connection is not retried quickly by anyone useful
        last = res
        sim.attempts.append(
            Attempt(number, res.status_code, _since(started), "answered", res.text[:BODY_SHOWN])
        )
        if res.status_code < 500:
            break  # 5xx: WeChat tries again, like after a timeout
    (out.judge or _judge)(sim, out, last)
    if len(sim.attempts) > 1:
        sim.verdict += (
            f" (after {len(sim.attempts) - 1} retr{'y' if len(sim.attempts) == 2 else 'ies'})"
        )
    return sim


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def _judge(sim: Simulation, out: Outgoing, res: requests.Response | None) -> None:
    """Fill in the passive reply and a verdict in plain words."""
    if res is None:
        if sim.attempts and sim.attempts[-1].outcome == "unreachable":
            sim.verdict = f"cannot reach {sim.url} ({sim.attempts[-1].body})"
        else:
            sim.verdict = (
                f"no answer in time on any of {len(sim.attempts)} tries: "
                "WeChat gives up and the user sees “该公众号暂时无法提供服务，请稍后再试”"
            )
        return
    status = res.status_code
    if status == 403:
        sim.verdict = (
            "the webhook refused the signature: its WECHAT_TOKEN differs from this console's, "
            "or the clocks are more than WECHAT_TIMESTAMP_WINDOW apart"
        )
    elif status == 400 and out.channel == "wechat_aes":
        sim.verdict = (
            f"the webhook refused the encrypted message ({res.text.strip()[:120]}): "
            "check WECHAT_AES_KEY and WECHAT_APP_ID on both sides"
        )
    elif status in (301, 302, 303, 307, 308):
        sim.verdict = f"the URL redirects ({status}); WeChat does not follow redirects"
    elif status != 200:
        sim.verdict = f"the webhook answered HTTP {status}: {res.text.strip()[:120]}"
    else:
        try:
            fields = out.open_reply(res.text)
        except Exception as exc:  # any garbage the webhook sent back is the finding here
            sim.reply_error = f"WeChat could not read the reply ({type(exc).__name__})"
            sim.verdict = sim.reply_error
            return
        sim.ok = True
        if fields:
            sim.passive_reply = fields.get("Content", "")
            sim.verdict = f"passive reply after {sim.attempts[-1].seconds:.2f} s"
        else:
            sim.verdict = (
                f"acknowledged in {sim.attempts[-1].seconds * 1000:.0f} ms; the answer follows "
                "through the customer-service API"
            )


def find_job(client: redis.Redis, channel: str, user: str, msg_id: str) -> str | None:
    """The job the webhook made for this message, if it made one."""
    for row in jobs.recent(client, 100):
        same = row.get("msg_id") == msg_id and row.get("user") == user
        if same and row.get("channel", channel) == channel:
            return row["job_id"]
    return None


def save(client: redis.Redis, sim: Simulation) -> None:
    """Keep a simulation under its own id (WeCom) or its job id, for the console to show."""
    if name := sim.sim_id or sim.job_id:
        client.set(key("sim", name), json.dumps(sim.to_dict(), ensure_ascii=False), ex=SIM_TTL)


def load(client: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """A saved simulation, or None."""
    raw = client.get(key("sim", job_id))
    return json.loads(raw) if raw else None


def _sandbox_base(settings: Settings) -> str | None:
    base = settings.wechat_api_base.rstrip("/")
    return base if base.endswith("/sandbox/wechat") else None  # real WeChat keeps no outbox


def open_sandbox_window(settings: Settings, user: str, http: Any = requests) -> bool:
    """Tell the sandbox WeChat API that `user` wrote, as WeChat knows when a user messages the
    account: it opens the 48-hour customer-service window (else the sandbox answers 45015)."""
    base = _sandbox_base(settings)
    if base is None:
        return False
    try:
        return http.post(f"{base}/window", json={"user": user}, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def sandbox_outbox(
    settings: Settings, user: str, since: float = 0.0, http: Any = requests
) -> list[dict] | None:
    """Customer-service messages the sandbox WeChat API recorded for `user` (None: no sandbox)."""
    base = _sandbox_base(settings)
    if base is None:
        return None
    try:
        res = http.get(f"{base}/outbox", params={"touser": user}, timeout=3)
        messages = res.json() if res.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None
    if not isinstance(messages, list):
        return None
    return [m for m in messages if float(m.get("at", 0)) >= since - 1.0]


def verify_url(url: str, token: str, *, timeout: float = RETRY_AFTER, http: Any = requests) -> dict:
    """The GET `echostr` handshake WeChat makes when the server URL is saved, with a diagnosis."""
    check_url(url)
    params = sign_url_check(token)
    out: dict[str, Any] = {
        "url": url,
        "timestamp": params["timestamp"],
        "nonce": params["nonce"],
        "echostr": params["echostr"],
        "signature": params["signature"],
        # How the signature was made, without the token itself.
        "method": "sha1 of the sorted token, timestamp and nonce, joined",
        "status": None,
        "body": "",
        "seconds": None,
        "ok": False,
    }
    started = time.perf_counter()
    try:
        res = http.get(
            url, params=params, timeout=(min(3.0, timeout), timeout), allow_redirects=False
        )
    except requests.Timeout:
        out["diagnosis"] = f"no answer within {timeout:.0f} s: WeChat gives up after 5 s"
        return out
    except requests.RequestException as exc:
        out["diagnosis"] = f"cannot reach the URL ({type(exc).__name__}): DNS, firewall or port?"
        return out
    out["seconds"] = _since(started)
    out["status"], out["body"] = res.status_code, res.text[:BODY_SHOWN]
    body = res.text
    if res.status_code == 200 and body == params["echostr"]:
        out["ok"] = True
        out["diagnosis"] = "the server echoed echostr: WeChat will accept this URL"
    elif res.status_code == 200 and body.strip() == params["echostr"]:
        out["diagnosis"] = "the echostr came back with extra whitespace: WeChat wants it exactly"
    elif res.status_code == 200 and params["echostr"] in body:
        out["diagnosis"] = (
            "the echostr came back wrapped (quotes, HTML or JSON): WeChat wants the raw echostr"
        )
    elif res.status_code == 403:
        out["diagnosis"] = (
            "the server refused the signature: the token on the server is not the one used here "
            "(the Token field of 基本配置 must equal WECHAT_TOKEN), or its clock is off"
        )
    elif res.status_code in (301, 302, 303, 307, 308):
        where = res.headers.get("Location", "?")
        out["diagnosis"] = f"the URL redirects to {where}: WeChat does not follow redirects"
    elif res.status_code == 404:
        out["diagnosis"] = "not found: check the path (mimochat serves /wechat) and the proxy"
    elif res.status_code >= 500:
        out["diagnosis"] = f"the server failed (HTTP {res.status_code}): see its logs"
    else:
        out["diagnosis"] = f"HTTP {res.status_code} instead of the echostr"
    return out
