"""Guard stage cost: ingest with the guards against ingest without them, side by side in one run.

    .venv/bin/python bench/guards.py [--messages 2000] [--terms 10000] [--rounds 5]

Both sides are the real `bot.pipeline.ingest.ingest` on an embedded Redis (ledger claim, block
list, commands, enqueue into an in-memory list); "guarded" adds a per-user rate limit and a
per-user daily quota (two Redis calls) and a refuse list of `--terms` terms matched by the
question check. Rounds alternate so background load hits both; each round sends `--messages`
fresh questions (new users, so the limits count but never refuse). Prints the median
milliseconds per message of each side and the difference: the guard stage's cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.core.contracts import IncomingMessage, Job  # noqa: E402
from bot.core.settings import Settings  # noqa: E402
from bot.core.store import connect, start_embedded  # noqa: E402
from bot.pipeline.ingest import ingest  # noqa: E402

QUESTION = "Could you explain how attention in a transformer works, step by step? 请详细解释一下。"


def run(settings: Settings, messages: int) -> list[float]:
    """Seconds per message for `messages` fresh questions."""
    client = connect(settings.redis_url)
    queued: list[Job] = []
    times = []
    for _ in range(messages):
        m = IncomingMessage(
            channel="wechat",
            user=f"bench_{uuid.uuid4().hex[:10]}",
            account="gh",
            kind="text",
            content=QUESTION,
            msg_id=uuid.uuid4().hex,
        )
        started = time.perf_counter()
        ingest(m, settings=settings, client=client, enqueue=queued.append)
        times.append(time.perf_counter() - started)
    assert len(queued) == messages, "a question was refused: the bench measures passing ones"
    return times


def main() -> None:
    """Measure both sides, alternating, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--terms", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mimochat-bench-guards-"))
    terms = folder / "refuse.txt"
    words = [f"banned{i}term" for i in range(args.terms // 2)]
    words += [f"禁{i}词" for i in range(args.terms - len(words))]
    terms.write_text("\n".join(words) + "\n", encoding="utf-8")
    url = start_embedded(folder)
    plain = Settings(redis_url=url, data_dir=str(folder), wechat_reply_mode="customer_service")
    guarded = plain.replace(rate_limit_user="30/minute;1000/day", safety_lists=f"refuse:{terms}")
    sides: dict[str, list[float]] = {"without guards": [], "with guards": []}
    run(guarded, 50)  # warm-up: builds the automaton, opens connections
    run(plain, 50)
    for _ in range(args.rounds):
        sides["without guards"] += run(plain, args.messages)
        sides["with guards"] += run(guarded, args.messages)
    medians = {name: statistics.median(times) * 1000 for name, times in sides.items()}
    for name, ms in medians.items():
        print(f"{name:>15}: {ms:.3f} ms per message (median of {len(sides[name])})")
    cost = medians["with guards"] - medians["without guards"]
    print(f"guard stage: {cost:.3f} ms per message with {args.terms} terms")


if __name__ == "__main__":
    main()
