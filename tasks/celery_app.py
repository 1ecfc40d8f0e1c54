"""The Celery app: Redis broker, JSON only, late acks, one job at a time per slot."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.serialization import dumps
from kombu.utils.uuid import uuid

from bot.core.contracts import Answer, Envelope, Job
from bot.core.settings import Settings
from bot.core.store import Unavailable, celery_url, connect, resolve_url
from bot.pipeline.ingest import QueueFull
from tasks import deliver, generate
from tasks.names import DELIVER, GENERATE, GPU_QUEUE, IO_QUEUE, QUEUES, ROUTES, WECOM_GENERATE

log = logging.getLogger(__name__)
_PERSISTENT = 2  # AMQP's delivery mode for durable messages, what Celery's queues ask for


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings, with the generation and delivery tasks registered."""
    broker = celery_url(resolve_url(settings))
    app = Celery("mimochat", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        # A worker that dies mid-task hands the job back instead of acking it.
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        task_default_queue=IO_QUEUE,
        task_routes={name: {"queue": queue} for name, queue in ROUTES.items()},
        task_create_missing_queues=False,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            **restore_sweep(settings.visibility_timeout),
            "socket_connect_timeout": 1,
            "socket_timeout": 5,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=False,
        enable_utc=True,
    )
    generate.register(app, settings)
    deliver.register(app, settings)
    return app


def restore_sweep(visibility_timeout: int) -> dict[str, int]:
    """How often workers look for jobs whose worker died: about a tenth of the timeout.

    kombu's default sweep runs every ~100 s, which would leave a short timeout (a test's, or a
    deployment of fast generations) waiting far longer than it says.
    """
    period = max(1, min(100, visibility_timeout // 10))
    interval = min(10, period)
    return {"unacked_restore_interval": interval, "unacked_restore_throttle": period // interval}


# KEYS: the queue. ARGV: the most that may wait (0: no limit), the message. {pushed, waiting}.
_PUSH_IF_ROOM = """
local waiting = redis.call('LLEN', KEYS[1])
local limit = tonumber(ARGV[1])
if limit > 0 and waiting >= limit then return {0, waiting} end
redis.call('LPUSH', KEYS[1], ARGV[2])
return {1, waiting}
"""


def _repr(payload: dict[str, Any]) -> dict[str, str]:
    """What the message's headers show of its arguments: the job's id, not its text.

    Celery's default, a safe repr of the whole payload, costs about a millisecond of CPU per
    publish (a fifth of an ingest) and copies the user's question into the headers.
    """
    job = payload.get("job")
    ident = payload.get("job_id") or (job.get("job_id") if isinstance(job, dict) else "") or ""
    return {"argsrepr": f"[{ident!r}]", "kwargsrepr": "{}"}


class _Capture:
    """Stands in for kombu's Redis publish batch: keeps the commands a publish would run.

    kombu's Redis channel frames the message as for any publish and hands its final Redis
    commands (one LPUSH) to the batch; the Producer or the ledger pushes it in a script instead.
    """

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        """What kombu's Redis channel calls with each command of the message."""
        self.commands.append((name, args))


class Producer:
    """What the webhook uses to enqueue: publishes durably or raises (then the webhook says 503)."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self.max_queue = settings.max_queue
        self._url = resolve_url(settings)
        self._redis: redis.Redis | None = None
        # WeChat's and WeCom's questions go the same way: the task name follows the reply mode.
        self.generation = Generation(self)
        self.wecom_generation = self.generation

    def _client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = connect(self._url)
        return self._redis

    def queue_length(self, queue: str = GPU_QUEUE) -> int:
        """Jobs waiting in a queue (not yet taken by a worker)."""
        return int(self._client().llen(queue))

    def _send(self, name: str, payload: dict[str, Any], queue: str) -> None:
        try:
            self.app.send_task(name, args=[payload], queue=queue, retry=False, **_repr(payload))
        except (OperationalError, redis.RedisError, OSError) as exc:
            raise Unavailable(f"cannot enqueue on {queue}: {type(exc).__name__}") from exc

    def _check_room(self) -> None:
        """Raise QueueFull when MIMOCHAT_MAX_QUEUE questions already wait for a GPU."""
        if self.max_queue:
            try:
                waiting = self.queue_length(GPU_QUEUE)
            except (redis.RedisError, OSError) as exc:
                raise Unavailable(
                    f"cannot read the {GPU_QUEUE} queue: {type(exc).__name__}"
                ) from exc
            if waiting >= self.max_queue:
                raise QueueFull(f"{waiting} waiting, limit {self.max_queue}")

    def envelope(self, job: Job) -> Envelope | None:
        """The generation message for `job`, built by Celery and kombu but not pushed (the
        ledger's enqueue script pushes it); None if kombu hands over anything but one LPUSH.

        Celery builds the task message (`create_task_message`, protocol 2) and kombu's Redis
        channel frames it (`prepare_message`, `basic_publish` into a capture batch), the very
        calls `send_task` ends in. What is skipped is the routing and producer layers in
        between (option merging, queue and exchange copies, signals): the queue is known, and
        they cost ~150 us of the ~190 us a `send_task` takes here (bench/ingest.py).
        """
        payload = job.wire()
        task_id = uuid()
        amqp = self.app.amqp
        message = amqp.create_task_message(
            task_id,
            _generate_name(job),
            [payload],
            {},
            reply_to=self.app.thread_oid,
            root_id=task_id,
            **_repr(payload),
        )
        content_type, encoding, body = dumps(message.body, serializer="json")
        properties = {**message.properties, "delivery_mode": _PERSISTENT}
        capture = _Capture()
        try:
            # A pooled connection's channel, not a pooled producer: kombu revives a producer
            # on every acquire (~30 us); framing into a capture batch needs only the channel.
            with self.app.pool.acquire(block=True) as connection:
                channel = connection.default_channel
                framed = channel.prepare_message(
                    body, None, content_type, encoding, message.headers, properties
                )
                # Celery's direct queues publish on the anonymous exchange, keyed by queue.
                channel.basic_publish(framed, "", GPU_QUEUE, _publish_batch=capture)
        except (OperationalError, redis.RedisError, OSError, TypeError) as exc:
            # TypeError: a transport whose basic_publish takes no batch (not kombu's Redis).
            log.debug("no envelope for %s: %s", GPU_QUEUE, type(exc).__name__)
            if not isinstance(exc, TypeError):
                raise Unavailable(f"cannot build the {GPU_QUEUE} message") from exc
            return None
        if len(capture.commands) != 1:
            return None
        command, args = capture.commands[0]
        if command != "lpush" or len(args) != 2:
            return None
        return Envelope(queue=str(args[0]), body=args[1], limit=self.max_queue)

    def publish(self, job: Job) -> None:
        """Put one generation job on the gpu queue; QueueFull past MIMOCHAT_MAX_QUEUE waiting.

        The room check and the push are one script (no other publish slips in between), with
        the message `envelope` builds; where there is none (another transport), the check and
        Celery's own publish are two round trips.
        """
        envelope = self.envelope(job)
        if envelope is None:
            self._check_room()
            self._send(_generate_name(job), job.wire(), GPU_QUEUE)
            return
        try:
            pushed, waiting = self._client().eval(
                _PUSH_IF_ROOM, 1, envelope.queue, envelope.limit, envelope.body
            )
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"cannot enqueue on {GPU_QUEUE}: {type(exc).__name__}") from exc
        if not pushed:
            raise QueueFull(f"{waiting} waiting, limit {self.max_queue}")

    def delivery(self, result: Answer) -> None:
        """Put one delivery job on the io queue (raises Unavailable if Redis is down)."""
        self._send(DELIVER, result.wire(), IO_QUEUE)


def _generate_name(job: Job) -> str:
    return WECOM_GENERATE if job.reply_mode == "stream" else GENERATE


class Generation:
    """What ingest enqueues with: call it to publish a job, or ask it for the job's envelope
    (`bot.pipeline.ingest.Publisher`), which ingest pushes inside the ledger's script."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def __call__(self, job: Job) -> None:
        """Publish now (room-checked); QueueFull past MIMOCHAT_MAX_QUEUE waiting."""
        self.producer.publish(job)

    def envelope(self, job: Job) -> Envelope | None:
        """The job's message, unsent (see `Producer.envelope`)."""
        return self.producer.envelope(job)
