"""MTCNN's ONet, read from facenet-pytorch's wheel without torch (imask.engine.detectors.onet)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from imask.engine.detectors.base import ModelError
from imask.engine.detectors.onet import ONET_SHA256, FaceCheck, onet_graph, packaged_onet_path, read_state


def test_the_packaged_state_reads_as_onets_layers() -> None:
    state = read_state(packaged_onet_path().read_bytes())
    assert state["conv1.weight"].shape == (32, 3, 3, 3) and state["dense5.weight"].shape == (256, 1152)
    assert state["dense6_1.weight"].shape == (2, 256) and all(v.dtype == np.float32 for v in state.values())
    assert all(np.isfinite(v).all() for v in state.values())
    graph = onet_graph(state)
    assert [o.name for o in graph.graph.output] == ["probability"]


def test_anything_but_a_tensor_state_is_refused() -> None:
    with pytest.raises(ModelError, match="not a torch legacy state"):
        read_state(pickle.dumps(42))
    with pytest.raises(ModelError, match="cannot read"):
        read_state(b"not a pickle at all")
    magic = pickle.dumps(0x1950A86A20F9469CFC6C) + pickle.dumps(1001) + pickle.dumps({})
    hostile = magic + b"cos\nsystem\n(S'echo no'\ntR."  # a pickle that would call os.system
    with pytest.raises(ModelError, match="unexpected object"):
        read_state(hostile)


def test_a_file_that_is_not_the_packaged_one_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "onet.pt"
    other.write_bytes(packaged_onet_path().read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match=f"expected {ONET_SHA256}"):
        FaceCheck.load(other)
