"""The `mimochat` command: up, demo, web, worker, wecom-connect, send, doctor, download."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from bot.core.settings import Settings, SettingsError, load_or_exit, read_dotenv

DEMO_PORT = 8000
DEMO_ACCOUNT = "gh_mimochat_demo"
# Fixed demo credentials: the demo runs in safe (AES) mode so every message is really encrypted.
DEMO_ENV = {
    "WECHAT_TOKEN": "mimochatdemo",
    "WECHAT_APP_ID": "wx0123456789abcdef",
    "WECHAT_APP_SECRET": "demo-secret-0123456789abcdef0123",
    "WECHAT_AES_KEY": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "WECHAT_REPLY_MODE": "auto",
    "MIMOCHAT_MODEL": "tiny",
    "MIMOCHAT_SANDBOX": "1",
    "MIMOCHAT_THINKING_BUDGET": "48",
    "MIMOCHAT_MAX_NEW_TOKENS": "48",
    "MIMOCHAT_GPU_CONCURRENCY": "4",
    "WECOM_BOT_TOKEN": "mimochatdemo",
    "WECOM_BOT_AES_KEY": "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
}

log = logging.getLogger("mimochat")


def demo_environ(
    port: int, environ: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, str]:
    """The demo's settings: built-in defaults, then `.env`, then the environment (which wins)."""
    env = dict(DEMO_ENV, WECHAT_API_BASE=f"http://127.0.0.1:{port}/sandbox/wechat/")
    env.update(read_dotenv((cwd or Path.cwd()) / ".env"))
    env.update(os.environ if environ is None else environ)
    return env


def self_command() -> str:
    """How this shell runs `mimochat`: the bare name when PATH finds this very program, else its
    path (`.venv/bin/mimochat` after `make`), so a printed command can be pasted as it is."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else "mimochat"
    if not Path(program).is_file():  # `python -m ...`, or an argv we cannot run again
        return "mimochat"
    found = shutil.which("mimochat")
    if found and os.path.samefile(found, program):
        return "mimochat"
    relative = os.path.relpath(program)
    return relative if not relative.startswith("..") else str(Path(program).resolve())


def _demo_banner(host: str, port: int, settings: Settings) -> None:
    """What a newcomer needs next: where state lives, the commands to try, the warnings to expect."""
    base = f"http://{host}:{port}"
    url = "" if port == DEMO_PORT else f" --url {base}/wechat"
    print(f"  data: {settings.data_path} (embedded Redis, histories, the tiny model)")
    print("    kept between runs; `mimochat demo --fresh` starts from a new, empty data directory")
    print(f"  sandbox outbox: {base}/sandbox/wechat/outbox?touser=USER")
    print(f'  try: {self_command()} send "What is 2+2?"{url}')
    print("    (the tiny model has random weights: its answers are noise; the pipeline is real)")
    print(f"  WeCom group sandbox: POST {base}/sandbox/wecom/send")
    print(f"    then GET {base}/sandbox/wecom/chat?chatid=sandbox_group")
    if settings.admin_token:
        print(f"  console: {base}/admin/ (log in with ADMIN_TOKEN)")
    else:
        print(f"  console: off; start with ADMIN_TOKEN=<16+ characters> to open {base}/admin/")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Celery warns (SecurityWarning) whenever a worker runs as root, whatever the settings;
        # the demo does not hide it: it is right for a deployment.
        print(
            "  running as root: Celery will warn that a worker with superuser privileges is not"
            " recommended.\n    Harmless for this local demo (JSON messages only, Redis on a local"
            " socket); run a deployment as an ordinary user."
        )
    print()


def _run_all(
    env: dict[str, str],
    host: str,
    port: int,
    title: str,
    server: str = "gunicorn",
    wecom_sandbox: list[str] | None = None,
) -> int:
    from bot.cli import running
    from bot.cli.ports import port_problem
    from bot.cli.supervisor import Supervisor, web_argv, worker_argv
    from bot.core.logs import setup_logging
    from bot.core.store import answers, embedded_argv, embedded_url

    # Checked before anything starts; `.env` too, as the children read it under `env`.
    settings = load_or_exit(env, program=title)
    setup_logging(settings)
    if problem := port_problem(host, port):  # e.g. a server left from an earlier run
        print(f"{title}: {problem}", file=sys.stderr)
        return 1
    # Workers get their own grace (running generations) plus time to hand jobs back.
    sup = Supervisor(env=env, grace=settings.shutdown_grace + 10)
    if not settings.redis_url:
        url = env["REDIS_URL"] = embedded_url(settings.data_path)
        if answers(url):  # another mimochat on this data dir runs it: join; it stays theirs
            log.info("joining the embedded Redis at %s", url)
        else:
            # A child like the others: restarted if it dies (its append-only file keeps the
            # queued jobs), dies with this process, and stops after the workers and the web.
            argv = embedded_argv(settings.data_path)
            sup.add("redis", argv, restart=True, ready=lambda: answers(url), stop_last=True)
        settings = settings.replace(redis_url=url)
    web = web_argv(host, port, server, settings.web_processes, settings.web_threads)
    print(f"\n{title} — webhook: http://{host}:{port}/wechat")
    print(f"  web server: {_server_line(web)}")
    for name, value in sorted(settings.redacted().items()):
        print(f"  {name}={value}")
    if settings.sandbox:
        _demo_banner(host, port, settings)
    # `send` and `doctor` in another shell find this demo (and its settings) through this file.
    found = None
    if settings.sandbox:
        found = running.record(
            host, port, settings.data_path, str(settings.redis_url), settings.wecom_ws_url
        )
    # If this process is killed outright, the worker is too (SIGKILL, not the SIGTERM of the
    # others): a warm shutdown would wait on a Redis that may be dying with us, and it loses
    # nothing, since jobs are acknowledged only once done and come back after the visibility
    # timeout. The web drains its requests in a second or two; Redis writes its file.
    worker = worker_argv("gpu,io", settings.gpu_concurrency, "mimochat")
    sup.add("worker", worker, restart=True, death_signal=signal.SIGKILL)
    from bot.cli.wecom_connect import configured, connector_argv

    if wecom_sandbox:  # the demo's fake WeCom long-connection server
        sup.add("wecom-sandbox", wecom_sandbox, restart=True)
        http = settings.wecom_ws_url.replace("ws://", "http://")
        print(f"  WeCom long connection (fake WeCom): {http}/say?chatid=team&userid=alice&text=hi")
        print(f"    then {http}/chat?chatid=team")
    if configured(settings):  # the WeCom long connection (one holder across the deployment)
        print(f"  WeCom long connection: {settings.wecom_ws_url} (bot {settings.wecom_bot_id})")
        sup.add("wecom", connector_argv(), restart=True)
    sup.add("web", web, restart=False)
    try:
        code = sup.run()
    finally:
        if found:
            running.forget(found)
    if sup.reason:  # the last line: why it stopped on its own (a worker's engine did not load)
        print(f"{title} stopped: {sup.reason}", file=sys.stderr)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    """Everything on this machine with the tiny model and the sandbox WeChat API."""
    env = demo_environ(args.port)
    if getattr(args, "fresh", False):
        from bot.cli.running import FRESH_DIR

        # A new empty directory: its own Redis, so no answer, history or count of an earlier run.
        fresh = FRESH_DIR.expanduser() / time.strftime("%Y%m%d-%H%M%S")
        fresh.mkdir(parents=True, exist_ok=True)
        env["MIMOCHAT_DATA_DIR"] = str(fresh)
        print(f"mimochat demo: fresh data directory {fresh} (earlier ones stay in {fresh.parent})")
    from bot.cli.wecom_connect import demo_robot

    fake_wecom = demo_robot(env)  # the long connection too, against a fake WeCom
    # werkzeug starts in a fraction of gunicorn's time; the demo's load is one person typing.
    return _run_all(env, args.host, args.port, "mimochat demo", "werkzeug", fake_wecom)


def cmd_up(args: argparse.Namespace) -> int:
    """Everything on this machine with the real settings."""
    return _run_all(dict(os.environ), args.host, args.port, "mimochat up")


def cmd_web(args: argparse.Namespace) -> int:
    """Only the web server (gunicorn, as in the containers)."""
    settings = load_or_exit(program="mimochat web")  # before Flask is even imported
    from bot.cli.ports import port_problem
    from bot.cli.supervisor import web_argv

    if problem := port_problem(args.host, args.port):
        print(f"mimochat web: {problem}", file=sys.stderr)
        return 1
    argv = web_argv(args.host, args.port, "gunicorn", settings.web_processes, settings.web_threads)
    print(f"mimochat web: {_server_line(argv)}", flush=True)
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def _server_line(argv: list[str]) -> str:
    """Which web server a command line runs, in words, for the banner."""
    if "gunicorn" not in argv:
        return "werkzeug (threaded development server, one process)"
    workers, threads = argv[argv.index("--workers") + 1], argv[argv.index("--threads") + 1]
    return f"gunicorn gthread, {workers} process(es) x {threads} thread(s)"


def cmd_worker(args: argparse.Namespace) -> int:
    """Only a Celery worker (queues gpu,io by default)."""
    from bot.cli.supervisor import worker_argv

    settings = load_or_exit(program="mimochat worker")
    argv = worker_argv(args.queues, args.concurrency or settings.gpu_concurrency, args.name)
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def cmd_wecom_connect(args: argparse.Namespace) -> int:
    """Only the WeCom long connection (WECOM_BOT_ID / WECOM_BOT_SECRET / WECOM_WS_URL)."""
    from bot.cli.wecom_connect import main as connect_main

    return connect_main()


def cmd_send(args: argparse.Namespace) -> int:
    """Post a message to the webhook as WeChat would and print what the user receives."""
    import requests

    from bot.channels.wechat.protocol import message_xml, read_reply, sign_request

    env = dict(os.environ)
    settings = load_or_exit(env, program="mimochat send")
    if args.admin:
        return _send_via_admin(args, settings)
    if not args.url:
        found = _the_demo()
        if found is None:
            return 2
        args.url = f"{found}/wechat"
    if not settings.wechat_token:  # the demo's fixed credentials, on the port we post to
        port = urlsplit(args.url).port or DEMO_PORT
        settings = load_or_exit(demo_environ(port, env), dotenv=False, program="mimochat send")
    xml = message_xml(args.user, args.account, content=args.text)
    parts = urlsplit(args.url)
    outbox = f"{parts.scheme}://{parts.netloc}/sandbox/wechat/outbox"
    before = _outbox(requests, outbox, args.user)
    if before is not None:
        # The sandbox only lets us write to users who wrote first (WeChat's 48-hour window).
        requests.post(
            outbox.replace("/outbox", "/window"), json={"user": args.user}, timeout=5
        ).raise_for_status()
    started = time.perf_counter()
    last = None
    for attempt in range(1 + args.retries):
        signed = sign_request(
            settings.wechat_token,
            xml,
            aes_key=settings.wechat_aes_key,
            app_id=settings.wechat_app_id,
            openid=args.user,
        )
        t0 = time.perf_counter()
        try:
            last = requests.post(
                args.url, params=signed.params, data=signed.body.encode(), timeout=15
            )
        except requests.RequestException as exc:
            print(
                f"cannot reach {args.url}: {type(exc).__name__}. Is the demo running? Start it "
                "with `make demo` (or `mimochat demo`), or pass --url URL of a running webhook.",
                file=sys.stderr,
            )
            return 2
        elapsed_ms = (time.perf_counter() - t0) * 1000
        print(f"try {attempt + 1}: HTTP {last.status_code} in {elapsed_ms:.1f} ms")
    assert last is not None  # the loop runs at least once
    if last.status_code != 200:
        print(f"webhook refused the message: {last.text.strip()}", file=sys.stderr)
        return 1
    reply = read_reply(
        last.text,
        token=settings.wechat_token,
        aes_key=settings.wechat_aes_key,
        app_id=settings.wechat_app_id,
    )
    if reply:
        print(f"passive reply: {reply.get('Content', '')}")
        return 0
    if before is None:
        print(
            "acknowledged; the answer goes out through the customer-service API (no sandbox here)"
        )
        return 0
    answer, first_at = _wait_for_answer(requests, outbox, args.user, len(before), args.timeout)
    if not answer:
        print(f"no answer in the sandbox outbox after {args.timeout:.0f}s", file=sys.stderr)
        return 1
    print(f"answer after {first_at - started:.2f}s ({len(answer)} message(s)):")
    for msg in answer:
        print(f"  {msg['content']}")
    return 0


def _the_demo() -> str | None:
    """The base URL `send` posts to without --url: the one demo running here, else the default.

    None (having said why) when several run: which one is meant is the user's choice.
    """
    from bot.cli.running import demos

    found = demos()
    if len(found) > 1:
        urls = ", ".join(f"{d['url']}/wechat" for d in found)
        print(f"several demos run on this machine ({urls}): pass --url", file=sys.stderr)
        return None
    return found[0]["url"] if found else f"http://127.0.0.1:{DEMO_PORT}"


def _admin_call(args: argparse.Namespace, settings: Settings, method: str, path: str, **kw):  # noqa: ANN001, ANN202
    """One call to the console's API with `Authorization: Bearer $ADMIN_TOKEN`."""
    import requests

    token = settings.admin_token
    if not token:
        raise SystemExit("set ADMIN_TOKEN to use the admin API (--admin)")
    url = args.admin.rstrip("/") + "/admin/api/" + path
    try:
        res = requests.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kw
        )
    except requests.RequestException as exc:
        raise SystemExit(
            f"cannot reach the admin API at {args.admin}: {type(exc).__name__}"
        ) from None
    if res.status_code == 401:
        raise SystemExit("the admin API refused ADMIN_TOKEN (401)")
    if res.status_code == 404 and "console is off" in res.text:
        raise SystemExit("the admin console is off on that server (its ADMIN_TOKEN is empty)")
    try:
        data = res.json()
    except ValueError:
        raise SystemExit(f"the admin API answered HTTP {res.status_code}, not JSON") from None
    if res.status_code >= 400:
        raise SystemExit(f"the admin API answered HTTP {res.status_code}: {data.get('error')}")
    return data


def _send_via_admin(args: argparse.Namespace, settings: Settings) -> int:
    """`send --admin URL`: the server's simulator sends the message and reports every stage."""
    body = {"user": args.user, "text": args.text}
    if args.url:
        body["url"] = args.url
    if args.channel:
        body["channel"] = args.channel
    if args.group:
        body["chat_id"] = args.group
    sim = _admin_call(args, settings, "POST", "simulate", json=body)
    for a in sim["attempts"]:
        status = f"HTTP {a['status']}" if a["status"] is not None else a["outcome"]
        print(f"try {a['number']}: {status} in {a['seconds'] * 1000:.1f} ms")
    print(sim["verdict"])
    if sim.get("passive_reply"):
        print(f"passive reply: {sim['passive_reply']}")
    if not sim["ok"]:
        return 1
    if sim.get("sim_id"):  # WeCom: the console refreshes the stream; follow what the chat shows
        return _follow_wecom(args, settings, sim["sim_id"])
    if not sim.get("job_id"):
        return 0
    deadline = time.monotonic() + args.timeout
    view: dict = {}
    while time.monotonic() < deadline:
        view = _admin_call(args, settings, "GET", f"simulate/{sim['job_id']}")
        waiting = view["messages"] == [] and view["delivered_via"] == "customer_service"
        settled = view["done"] and not waiting
        if settled:
            break
        time.sleep(0.3)
    _print_timeline(view)
    if not view.get("done"):
        print(f"no answer after {args.timeout:.0f}s", file=sys.stderr)
        return 1
    if view.get("delivered_via") == "customer_service":
        messages = view.get("messages") or [{"content": view.get("answer") or ""}]
    else:  # passive mode: the answer rode on a webhook reply or waits for the next message
        messages = [{"content": view.get("answer") or ""}]
    print(f"answer ({len(messages)} message(s)):")
    for msg in messages:
        print(f"  {msg['content']}")
    return 0 if view.get("delivered_via") else 1


def _print_timeline(view: dict) -> None:
    for row in view.get("timeline", []):
        # Stages are stamped by different processes' clocks: a few ms "before" the start is 0.
        after = "" if row["after"] is None else f"+{max(0.0, row['after']):.2f}s "
        print(f"  {row['stage']:<12} {after}{row['detail']}")


def _follow_wecom(args: argparse.Namespace, settings: Settings, sim_id: str) -> int:
    """Wait for a simulated WeCom message to settle; print its timeline and what the chat shows."""
    deadline = time.monotonic() + args.timeout
    view: dict = {}
    while time.monotonic() < deadline:
        view = _admin_call(args, settings, "GET", f"simulate/{sim_id}")
        if view["done"]:
            break
        time.sleep(0.3)
    _print_timeline(view)
    chat = view.get("chat") or {}
    shown = chat.get("response_url") or chat.get("stream") or {}
    if not view.get("done"):
        print(f"the stream did not finish in {args.timeout:.0f}s", file=sys.stderr)
        return 1
    print(f"answer ({view.get('delivered_via') or 'not delivered'}):")
    print(f"  {shown.get('answer') or chat.get('text') or ''}")
    return 0 if view.get("delivered_via") or chat.get("text") else 1


def _outbox(requests_mod, url: str, user: str) -> list | None:  # noqa: ANN001
    try:
        res = requests_mod.get(url, params={"touser": user}, timeout=5)
    except requests_mod.RequestException:
        return None
    return res.json() if res.status_code == 200 else None


def _wait_for_answer(
    requests_mod,
    url: str,
    user: str,
    seen: int,
    timeout: float,  # noqa: ANN001
) -> tuple[list, float]:
    """New outbox messages once they stop coming, and when the first one arrived."""
    deadline = time.monotonic() + timeout
    new: list = []
    first_at = quiet_since = 0.0
    while time.monotonic() < deadline:
        messages = (_outbox(requests_mod, url, user) or [])[seen:]
        if len(messages) > len(new):
            new, quiet_since = messages, time.perf_counter()
            first_at = first_at or quiet_since
        elif new and time.perf_counter() - quiet_since > 1.0:
            break
        time.sleep(0.05)
    return new, first_at


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the configuration and every dependency; non-zero exit names what is wrong."""
    from bot.console.doctor import Check, run_checks

    # Which settings are checked is said first (on stderr with --json, which stays parseable).
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # the settings not allowed are the findings; nothing else runs
        results = [Check(line.split("=", 1)[0], False, line) for line in exc.lines]
    else:
        if args.admin:
            say(f"checking the server at {args.admin} (its own settings, through its admin API)")
            params = {"url": args.webhook} if args.webhook else {}
            data = _admin_call(args, settings, "GET", "doctor", params=params)
            results = [Check(**c) for c in data["checks"]]
        else:
            settings = _doctor_settings(settings, say)
            results = run_checks(settings, webhook_url=args.webhook)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2))
    else:
        for r in results:
            print(f"[{r.label}] {r.name}: {r.detail}")
    return 0 if all(r.ok for r in results) else 1


def _doctor_settings(settings: Settings, say: Callable[[str], None]) -> Settings:
    """The settings `doctor` checks: this shell's, or, when it has no WeChat settings of its own
    and a demo runs here, that demo's (its built-in settings, its `.env`, its Redis)."""
    from bot.cli.running import demos

    found = [] if settings.wechat_token else demos()
    if len(found) != 1:
        say(
            "checking this shell's settings (environment and ./.env); to check a running "
            "server's own settings: mimochat doctor --admin URL (with its ADMIN_TOKEN)"
        )
        return settings
    demo = found[0]
    env = demo_environ(int(demo["port"]), dict(os.environ), cwd=Path(demo["cwd"]))
    env.update(MIMOCHAT_DATA_DIR=demo["data_dir"], REDIS_URL=demo["redis_url"])
    say(
        f"checking the settings of the demo running at {demo['url']} (pid {demo['pid']}): its "
        "built-in settings, its .env and this shell's environment; to ask the demo itself: "
        f"mimochat doctor --admin {demo['url']} (with its ADMIN_TOKEN)"
    )
    return load_or_exit(env, dotenv=False, program="mimochat doctor")


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch model weights into the Hugging Face cache with a progress bar."""
    from bot.engine.transformers.download import download

    try:
        path = download(args.model)
    except (ValueError, RuntimeError) as exc:
        print(f"mimochat download: {exc}", file=sys.stderr)
        return 1
    print(f"model ready at {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `mimochat`."""
    parser = argparse.ArgumentParser(prog="mimochat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("demo", cmd_demo), ("up", cmd_up), ("web", cmd_web)):
        p = sub.add_parser(name, help=fn.__doc__)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=DEMO_PORT)
        if name == "demo":
            p.add_argument(
                "--fresh",
                action="store_true",
                help="start from a new, empty data directory (under ~/.cache/mimochat/fresh/)",
            )
        p.set_defaults(func=fn)
    p = sub.add_parser("worker", help=cmd_worker.__doc__)
    p.add_argument("--queues", default="gpu,io")
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--name", default="mimochat")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("wecom-connect", help=cmd_wecom_connect.__doc__)
    p.set_defaults(func=cmd_wecom_connect)
    p = sub.add_parser("send", help=cmd_send.__doc__)
    p.add_argument("text")
    p.add_argument("--user", default="o_demo_user")
    p.add_argument("--account", default=DEMO_ACCOUNT)
    p.add_argument(
        "--url",
        default=None,
        help="webhook (default: the demo running on this machine, else "
        f"http://127.0.0.1:{DEMO_PORT}/wechat)",
    )
    p.add_argument("--admin", metavar="URL", help="send through this server's admin API")
    p.add_argument(
        "--channel", help="with --admin: wechat_plain | wechat_aes | wecom_single | wecom_group"
    )
    p.add_argument("--group", help="with --channel wecom_group: the group's chat id")
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="post the same message N more times, as WeChat does when a try is slow "
        "(WeChat makes 3 tries in all: --retries 2)",
    )
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("doctor", help=cmd_doctor.__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--admin", metavar="URL", help="run the checks on this server (admin API)")
    p.add_argument("--webhook", metavar="URL", help="also try the URL-verification handshake")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("download", help=cmd_download.__doc__)
    p.add_argument("model", nargs="?", default="XiaomiMiMo/MiMo-7B-RL")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
