"""Structured log lines: formats, the bound request id, users' text gated, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot.core import logs
from bot.core.settings import Settings

SECRET = "app-secret-0123456789abcdef"
AES = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
TOKEN = "SANDBOX_tok3n-value-0123456789"


@pytest.fixture
def capture(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """A handler with the project's formatter on the `mimochat` loggers (format: the param)."""
    fmt = getattr(request, "param", "logfmt")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.StructuredFormatter(fmt))
    handler.addFilter(logs.RedactSecrets())
    logger = logging.getLogger("mimochat")
    logger.addHandler(handler)
    old_level, old_user_text = logger.level, logs._options["user_text"]
    logger.setLevel(logging.INFO)
    logs.clear()
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logs._options["user_text"] = old_user_text
        logs.clear()


def parse_logfmt(line: str) -> dict[str, str]:
    """key=value pairs of one logfmt line (values may be quoted with \\ escapes)."""
    out, i = {}, 0
    while i < len(line):
        eq = line.index("=", i)
        k = line[i:eq]
        i = eq + 1
        if line[i] == '"':
            i += 1
            value = []
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                    value.append({"n": "\n", "t": "\t", "r": "\r"}.get(line[i], line[i]))
                else:
                    value.append(line[i])
                i += 1
            i += 2
            out[k] = "".join(value)
        else:
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            out[k], i = line[i:end], end + 1
    return out


@pytest.mark.parametrize("capture", ["logfmt", "json"], indirect=True)
def test_stage_line_carries_the_bound_request_id(capture: io.StringIO, request) -> None:  # noqa: ANN001
    fmt = request.node.callspec.params["capture"]
    logs.bind(request_id="req-1")
    logs.stage("generated", job_id="job-1", answer_tokens=12, note='say "hi" = ok')
    (line,) = capture.getvalue().splitlines()
    row = json.loads(line) if fmt == "json" else parse_logfmt(line)
    assert row["stage"] == "generated"
    assert row["request_id"] == "req-1"
    assert row["job_id"] == "job-1"
    assert str(row["answer_tokens"]) == "12"
    assert row["note"] == 'say "hi" = ok'
    assert row["level"] == "INFO"


@pytest.mark.parametrize(("allowed", "shown"), [(False, False), (True, True)])
def test_user_text_only_when_allowed(capture: io.StringIO, allowed: bool, shown: bool) -> None:
    logs._options["user_text"] = allowed
    logs.stage("received", user="o_1", text="my private question")
    line = capture.getvalue()
    assert ("my private question" in line) is shown
    assert "user=o_1" in line


def test_exceptions_stay_on_one_line(capture: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("mimochat.test").exception("failed")
    lines = capture.getvalue().splitlines()
    assert len(lines) == 1
    assert "RuntimeError: boom" in parse_logfmt(lines[0])["exc"]


@pytest.mark.parametrize(
    "leak",
    [
        f"GET /cgi-bin/message/custom/send?access_token={TOKEN}&x=1",
        f'{{"access_token": "{TOKEN}", "expires_in": 7200}}',
        f"token fetch ?grant_type=client_credential&appid=wx1&secret={SECRET}",
        f"key is {AES}",
        f"stored token {TOKEN} in redis",
    ],
)
def test_secrets_never_reach_the_log(capture: io.StringIO, leak: str) -> None:
    logs.setup_logging(Settings(wechat_app_secret=SECRET, wechat_aes_key=AES))
    logs.add_secret(TOKEN)
    logging.getLogger("mimochat.test").warning("%s", leak)
    try:
        raise ValueError(leak)
    except ValueError:
        logging.getLogger("mimochat.test").exception("in a traceback")
    text = capture.getvalue()
    assert text.count("\n") == 2
    for secret in (SECRET, AES, TOKEN):
        assert secret not in text


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="MIMOCHAT_LOG_FORMAT"):
        logs.StructuredFormatter("xml")
