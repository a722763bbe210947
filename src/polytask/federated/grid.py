"""An in-process Flower ``Grid``: the lightest real way to run a ServerApp against ClientApps.

Why: Flower's Simulation Runtime starts Ray (tens of seconds before the first message on a busy
2-core machine, and the backend is fixed to Ray in flwr 1.42), which is too heavy for tests and
for quick runs. :class:`InProcessGrid` implements Flower's own ``Grid`` interface (the object a
``ServerApp`` talks to) and delivers each message to the real ``ClientApp`` of its destination
node, in this process, one message at a time, with one Flower ``Context`` per node kept between
messages exactly as the runtime keeps it (``node_config`` holds ``partition-id`` and
``num-partitions``, as in the simulation). Messages and replies cross through Flower's protobuf
serialization (``message_to_proto`` / ``message_from_proto``), so what a client receives is a copy
of what a network would carry, never an object shared with the server. A ClientApp that raises
returns an error reply, as the runtime does, and the ServerApp sees it.

What it does not do: run clients concurrently, or isolate them in processes (a client that leaks
module state would leak it here too). Flower's simulation (``engine: simulation``) and deployment
(SuperLink / SuperNodes, ``flwr run``) run the same ServerApp and ClientApp objects.
"""

from __future__ import annotations

import secrets
import time
import traceback
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid"]


class InProcessGrid(Grid):
    """``num_nodes`` virtual SuperNodes running ``client_app`` in this process."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int | None = None) -> None:
        if num_nodes < 1:
            raise ValueError(f"an in-process grid needs at least one node, got {num_nodes}")
        self.client_app = client_app
        run_id = run_id if run_id is not None else secrets.randbits(63)
        # What Flower's Python simulation entry point sets for the process it runs the ServerApp in
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._run = Run.create_empty(run_id=run_id)
        ids = sorted({secrets.randbits(63) or 1 for _ in range(num_nodes)})
        while len(ids) < num_nodes:  # a collision of 63-bit ids: draw again
            ids = sorted(set(ids) | {secrets.randbits(63) or 1})
        self.contexts = {
            node: Context(
                run_id=run_id,
                node_id=node,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(ids)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; keep the reply for ``pull``."""
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self.contexts:
                raise ValueError(f"message to unknown node {node}; nodes: {list(self.contexts)}")
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            received = message_from_proto(message_to_proto(msg))
            received.metadata.__dict__["_delivered_at"] = str(time.time())
            try:
                reply = self.client_app(received, self.contexts[node])
            except Exception as err:  # reported to the ServerApp as the runtime reports it
                reason = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}"
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                    reply_to=received,
                )
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[msg.metadata.message_id] = message_from_proto(message_to_proto(reply))
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
