"""Recording files: a dump of Kafka messages with their original timestamps (format in protos/imask/v1/frames.proto,
`RecordedMessage`): the 8-byte magic, then length-prefixed records."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from imask.v1 import frames_pb2 as pb

MAGIC = b"IMREC001"
MAX_RECORD = 64 * 1024 * 1024


class RecordingError(ValueError):
    pass


class RecordingWriter:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = path.open("wb")
        self._file.write(MAGIC)
        self.count = 0

    def write(self, message: pb.RecordedMessage) -> None:
        data = message.SerializeToString()
        self._file.write(struct.pack(">I", len(data)) + data)
        self.count += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_recording(path: Path) -> Iterator[pb.RecordedMessage]:
    with path.open("rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise RecordingError(f"{path} is not an imask recording (bad magic)")
        while header := f.read(4):
            if len(header) < 4:
                raise RecordingError(f"{path}: truncated record header")
            (length,) = struct.unpack(">I", header)
            if length > MAX_RECORD:
                raise RecordingError(f"{path}: record of {length} bytes is implausible")
            data = f.read(length)
            if len(data) < length:
                raise RecordingError(f"{path}: truncated record")
            yield pb.RecordedMessage.FromString(data)
