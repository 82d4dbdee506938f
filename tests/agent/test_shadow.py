"""Shadow evaluation on the agent: the candidate runs beside the active model on the
same inputs and becomes active only when it agrees enough."""

from __future__ import annotations

import pytest

from devices.agent import shadow
from devices.agent.updater import Updater
from tests.agent.conftest import tiny_model


def model(op: str) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], op.lower(), [x], [y])
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    built.ir_version = 8
    return built.SerializeToString()


def install(peer, state, data: bytes, version: int, **extra):
    peer.add_artifact(data)
    peer.offer(peer.manifest([("fp32", data)], version=version, **extra))
    updater = Updater(state, peer_client(peer, state), health_check=lambda paths: None)
    return updater.check_in()


def peer_client(peer, state):
    from devices.agent.client import Client

    return Client(peer.url, state.token, timeout=10)


def active_sha(state) -> str:
    pointer = state.pointer("classifier")
    return pointer["variants"][pointer["active"]]["sha256"]


def test_parse_bounds_and_refusals():
    assert shadow.parse(None) is None and shadow.parse({}) is None
    assert shadow.parse({"min_agreement": 0.9}) == {
        "inferences": 50,
        "seconds": None,
        "min_agreement": 0.9,
    }
    assert shadow.parse({"seconds": 5})["seconds"] == 5.0
    for bad in ([1], {"inferences": -1}, {"min_agreement": 2}, {"seconds": True}):
        with pytest.raises(shadow.ShadowError):
            shadow.parse(bad)


def test_an_agreeing_candidate_switches_a_disagreeing_one_does_not(peer, state):
    import hashlib

    first = tiny_model()  # Relu
    assert install(peer, state, first, 1).outcome == "succeeded"
    same = model("Relu")  # other bytes, same function
    request = {"shadow": {"inferences": 30, "min_agreement": 0.95}}
    assert install(peer, state, same, 2, **request).outcome == "succeeded"
    assert active_sha(state) == hashlib.sha256(same).hexdigest()
    report = peer.statuses[-1]
    assert report["state"] == "succeeded" and report["shadow"]["agreement"] == 1.0
    assert report["shadow"]["metric"] == "top1_agreement" and report["shadow"]["inferences"] == 30
    assert report["shadow"]["active_p50_ms"] > 0 and report["shadow"]["candidate_p50_ms"] > 0

    opposite = model("Neg")  # argmax of -x: almost never the argmax of relu(x)
    assert install(peer, state, opposite, 3, **request).outcome == "failed"
    assert active_sha(state) == hashlib.sha256(same).hexdigest()  # the active model stays
    report = peer.statuses[-1]
    assert report["state"] == "failed" and report["error_code"] == "shadow_agreement"
    assert report["shadow"]["agreement"] < 0.95 and not report["shadow"]["passed"]
    assert "the active model stays" in report["error"]


def test_first_install_has_nothing_to_shadow(peer, state):
    result = install(peer, state, tiny_model(), 1, shadow={"inferences": 5, "min_agreement": 1})
    assert result.outcome == "succeeded" and "shadow" not in peer.statuses[-1]
