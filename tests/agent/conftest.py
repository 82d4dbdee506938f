"""Fixtures for agent tests: a real HTTP peer, an enrolled state dir, tiny ONNX models."""

from __future__ import annotations

import pytest

from devices.agent.client import Client
from devices.agent.state import State
from tests.agent.peer import DEVICE_TOKEN, DEVICE_UID, Peer


def tiny_model(*, nan: bool = False) -> bytes:
    """A 1x4 float model: Relu(x), or one whose output is always NaN."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    if nan:
        one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
        nodes = [
            helper.make_node("Abs", ["x"], ["a"]),
            helper.make_node("Add", ["a", "one"], ["b"]),
            helper.make_node("Neg", ["b"], ["c"]),
            helper.make_node("Sqrt", ["c"], ["y"]),
        ]
        graph = helper.make_graph(nodes, "nan", [x], [y], [one])
    else:
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture
def peer():
    with Peer() as running:
        yield running


@pytest.fixture
def state(tmp_path, peer) -> State:
    state = State(tmp_path / "state").ensure()
    state.save_config({"server": peer.url})
    state.save_credential(DEVICE_UID, DEVICE_TOKEN)
    state.pin_key(peer.public_b64)
    return state


@pytest.fixture
def client(peer) -> Client:
    return Client(peer.url, DEVICE_TOKEN, timeout=5)


@pytest.fixture
def good_model() -> bytes:
    return tiny_model()


@pytest.fixture
def nan_model() -> bytes:
    return tiny_model(nan=True)
