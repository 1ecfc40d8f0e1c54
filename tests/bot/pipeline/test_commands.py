"""Commands answered without the model."""

from __future__ import annotations

import pytest

from bot.pipeline.commands import match_command


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/help", "help"),
        (" /HELP ", "help"),
        ("帮助", "help"),
        ("/reset", "reset"),
        ("清除记忆", "reset"),
        ("what is /reset?", None),
        ("hello", None),
    ],
)
def test_match_command(text: str, command: str | None) -> None:
    assert match_command(text) == command
