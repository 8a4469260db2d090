"""Dynamic-tile messages name their tensor (wire v2): a worker checks it against the stage."""

from __future__ import annotations

import numpy as np
import pytest

from coinfer.runtime import wire
from coinfer.runtime.transport import InProcHub, Message
from coinfer.runtime.worker import Worker


@pytest.mark.parametrize(("kind", "tensor", "ok"), [("tile", 1, True), ("tile", 2, False),
                                                     ("tile_out", 2, True), ("tile_out", 1, False)])
def test_tile_messages_must_carry_their_stage_tensor(kind: str, tensor: int, ok: bool) -> None:
    with InProcHub() as hub:
        wk = Worker("w0", hub.endpoint("w0"))
        peer = hub.endpoint("p")
        peer.connect("w0", "hub://w0")
        meta, frames = wire.encode_tensor(np.ones((1, 2, 3, 3), np.float32))
        extra = {"device": "p", "ms": 1.0} if kind == "tile_out" else {}
        peer.send("w0", {"kind": kind, "dep": "nodep", "req": 3, "tensor": tensor, "stage": 2, "part": 0,
                         **extra, **meta}, frames)
        m = wk.ep.recv(2000)
        assert isinstance(m, Message)
        wk.handle(m)
        reply = peer.recv(200)
        if ok:  # a well-formed tile for an unknown deployment is a late message: dropped silently
            assert reply is None and wk.errors == 0
        else:
            assert isinstance(reply, Message) and reply.header["code"] == "bad_header"
            assert f"must carry tensor {2 - (kind == 'tile')}" in reply.header["msg"]
        wk.close()
        peer.close()
