"""The figures a process counts: generations, tokens, deliveries, in-flight work."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY

from bot.core import metrics
from tests.helpers import make_answer


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_generation_counts_tokens_speed_and_wait() -> None:
    before = {
        "reasoning": value("mimochat_generated_tokens_total", kind="reasoning"),
        "answer": value("mimochat_generated_tokens_total", kind="answer"),
        "rates": value("mimochat_generation_tokens_per_second_count"),
        "rate_sum": value("mimochat_generation_tokens_per_second_sum"),
        "stop": value("mimochat_generations_total", finish_reason="stop"),
    }
    metrics.generation_done(
        make_answer(
            "u",
            "a",
            reasoning_tokens=30,
            answer_tokens=10,
            generation_seconds=2.0,
            finish_reason="stop",
            queue_wait=0.5,
        )
    )
    assert value("mimochat_generated_tokens_total", kind="reasoning") - before["reasoning"] == 30
    assert value("mimochat_generated_tokens_total", kind="answer") - before["answer"] == 10
    assert value("mimochat_generation_tokens_per_second_count") - before["rates"] == 1
    assert value("mimochat_generation_tokens_per_second_sum") - before["rate_sum"] == 20.0
    assert value("mimochat_generations_total", finish_reason="stop") - before["stop"] == 1


def test_failed_generation_is_counted_by_its_error() -> None:
    before = value("mimochat_generations_total", finish_reason="RuntimeError")
    metrics.generation_done(
        make_answer("u", "sorry", error="generation failed: RuntimeError", generation_seconds=0.1)
    )
    assert value("mimochat_generations_total", finish_reason="RuntimeError") - before == 1


def test_delivery_errors_by_code() -> None:
    cases = [
        (40001, False, "40001", "false"),
        (None, False, "http", "false"),
        (45015, True, "45015", "true"),
    ]
    for code, final, label, final_label in cases:
        before = value("mimochat_delivery_errors_total", code=label, final=final_label)
        metrics.delivery_error(code, final)
        assert value("mimochat_delivery_errors_total", code=label, final=final_label) - before == 1


def test_time_to_answer_from_the_recorded_receipt() -> None:
    before = value("mimochat_time_to_answer_seconds_sum")
    metrics.answered("100.0", 103.5)
    metrics.answered(None)  # an unknown receipt time is not a zero
    assert value("mimochat_time_to_answer_seconds_sum") - before == 3.5


def test_generations_in_flight_counts_concurrent_blocks() -> None:
    inside, release = threading.Barrier(4), threading.Event()

    def work() -> None:
        with metrics.generating():
            inside.wait()
            release.wait(5)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    inside.wait()
    assert metrics.generations_in_flight() == 3
    assert value("mimochat_generations_in_flight") == 3
    release.set()
    for t in threads:
        t.join()
    assert metrics.generations_in_flight() == 0
