"""Commands answered without the model."""

from __future__ import annotations

HELP_TEXT = (
    "I am MiMo, Xiaomi's reasoning model. Ask me anything and I will think it through.\n"
    "我是小米 MiMo 推理模型，直接提问即可。\n\n"
    "Commands / 命令:\n"
    "/help (帮助) — this help\n"
    "/reset (清除记忆) — forget our conversation and start fresh\n"
    "/think off|on|deep (/思考 关|开, /深度思考) — answer at once, think, or think longer"
)
RESET_TEXT = "Done — I have forgotten our conversation. 已清除记忆，我们重新开始吧。"
WELCOME_TEXT = (
    "Welcome! I am MiMo, Xiaomi's reasoning model. Send me a question. "
    "欢迎关注！直接发送问题即可，发送 /help 查看帮助。"
)
IMAGE_TEXT = (
    "I read text only for now, so I can't see pictures. Please type your question. "
    "我目前只能阅读文字，请直接输入问题。"
)
EMPTY_VOICE_TEXT = (
    "Sorry, I couldn't make out that voice message. Could you say it again or type it? "
    "抱歉，没听清这段语音，请再说一遍或直接输入文字。"
)

_ALIASES = {
    "/help": "help",
    "help": "help",
    "帮助": "help",
    "/reset": "reset",
    "清除记忆": "reset",
    "/清除记忆": "reset",
}


_THINK = {
    "/think": "",
    "/思考": "",
    "/think off": "off",
    "/think on": "on",
    "/think deep": "deep",
    "/思考 关": "off",
    "/思考 关闭": "off",
    "/思考 开": "on",
    "/思考 开启": "on",
    "/思考 深度": "deep",
    "/不思考": "off",
    "/深度思考": "deep",
}


def think_choice(text: str) -> str | None:
    """For a /think command, the level asked for (`off`, `on`, `deep`; "" to ask); else None."""
    return _THINK.get(" ".join(text.strip().lower().split()))


def match_command(text: str) -> str | None:
    """The command a message is (`help` or `reset`), or None for a question."""
    return _ALIASES.get(text.strip().lower())


STILL_THINKING_TEXT = (
    "I'm still thinking about your question. Send me any message in a moment and the answer "
    "comes with the reply — that message gets answered too. "
    "这个问题我还在思考，稍后发送任意消息即可收到答案（那条消息也会得到回答）。"
)
NOTHING_PENDING_TEXT = "Nothing more is waiting for you. 没有待发送的内容了。"
