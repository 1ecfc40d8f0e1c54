"""Queue and task names in one place (the web, the workers and the sweeper share them)."""

from __future__ import annotations

GPU_QUEUE = "gpu"
IO_QUEUE = "io"
QUEUES = (GPU_QUEUE, IO_QUEUE)

GENERATE = "mimochat.generate"
DELIVER = "mimochat.deliver"
TYPING = "mimochat.typing"
WECOM_GENERATE = "mimochat.wecom.generate"
WECOM_CHECK = "mimochat.wecom.check"

ROUTES = {
    GENERATE: GPU_QUEUE,
    WECOM_GENERATE: GPU_QUEUE,
    DELIVER: IO_QUEUE,
    TYPING: IO_QUEUE,
    WECOM_CHECK: IO_QUEUE,
}
