"""Recordings keep their footage: no overwrite on a restarted stream, a new file when the stream restarts,
offsets that never pass a file still open, and a recorder that pauses on a failed write until space is back.
(A recorder killed mid-file on the real broker: tests/integration/test_recorder.py.)"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import pytest

from imask.frames.envelope import end_of_stream, make_frame
from imask.media import encode_jpeg
from imask.ops import metrics
from imask.ops.settings import RecorderSettings
from imask.recording import Recorder, RecordingError, committable, open_recording, recording_of
from imask.recording import recorder as recorder_module
from imask.streaming.loop import Inbound
from imask.streaming.sink import PartitionKey
from imask.v1 import frames_pb2 as pb


def _frame() -> np.ndarray:
    return np.full((64, 96, 3), 100, np.uint8)


def test_a_restarted_stream_never_overwrites_an_earlier_file(tmp_path: Path) -> None:
    first = open_recording(tmp_path, "lobby", 0, 10.0, _frame())
    first.write(0, _frame(), 1_000)
    assert first.close() == tmp_path / "lobby.mp4"
    second = open_recording(tmp_path, "lobby", 0, 10.0, _frame())  # the ingest restarted: seq 0 again
    second.write(0, _frame(), 2_000)
    assert second.close() == tmp_path / "lobby-2.mp4"
    assert (tmp_path / "lobby.mp4").stat().st_size > 0
    assert recording_of("lobby-2", {"lobby"}) and recording_of("lobby_from7", {"lobby"})
    assert not recording_of("lobby2", {"lobby"})


def test_a_leftover_partial_is_redone_not_kept(tmp_path: Path) -> None:
    lost = open_recording(tmp_path, "dock", 0, 10.0, _frame())  # a recorder crashed while writing this
    lost.write(0, _frame(), 1_000)
    redo = open_recording(tmp_path, "dock", 0, 10.0, _frame())
    assert redo.path == tmp_path / "dock.mp4"  # same name: the redelivered frames complete it


def test_restart_is_told_from_redelivery(tmp_path: Path) -> None:
    rec = open_recording(tmp_path, "gate", 0, 10.0, _frame())
    for seq in range(5):
        rec.write(seq, _frame(), 1_000 + seq)
    assert not rec.restarted(3, 1_003)  # at-least-once: the same frame again
    assert not rec.write(3, _frame(), 1_003) and rec.duplicates == 1
    assert rec.restarted(0, 9_000)  # seq back to 0 but captured later: a new stream


def test_offsets_stop_at_the_first_frame_of_an_open_file(tmp_path: Path) -> None:
    a = open_recording(tmp_path, "a", 0, 10.0, _frame())
    a.partition, a.first_offset = 3, 120
    b = open_recording(tmp_path, "b", 0, 10.0, _frame())
    b.partition, b.first_offset = 1, 40
    assert committable(500, 3, [a, b]) == 120
    assert committable(500, 1, [a, b]) == 40
    assert committable(500, 0, [a, b]) == 500


class _FailingWriter:
    """A cv2.VideoWriter whose writes start failing, as FFmpeg's do when the disk is full."""

    def __init__(self, real: cv2.VideoWriter, fail_after: int) -> None:
        self.real, self.left = real, fail_after

    def write(self, image: np.ndarray) -> bool:
        self.left -= 1
        return self.left >= 0 and self.real.write(image) is not False

    def release(self) -> None:
        self.real.release()


def test_a_frame_that_cannot_be_written_fails_the_file_not_silently(tmp_path: Path) -> None:
    rec = open_recording(tmp_path, "dock", 0, 10.0, _frame())
    rec.first_offset, rec.partition = 7, 0
    rec.writer = _FailingWriter(rec.writer, fail_after=3)  # type: ignore[assignment]
    for seq in range(3):
        assert rec.write(seq, _frame(), 1_000 + seq)
    with pytest.raises(RecordingError, match="could not be written"):
        rec.write(3, _frame(), 1_003)
    assert rec.failed and not rec.partial.exists()  # the space it held is given back
    with pytest.raises(RecordingError):
        rec.write(4, _frame(), 1_004)
    with pytest.raises(RecordingError):
        rec.close()  # never renamed to dock.mp4 as if it were complete
    assert not (tmp_path / "dock.mp4").exists()
    assert committable(50, 0, [rec]) == 7  # offsets stay at its first frame: it is read again


def test_a_file_whose_index_did_not_fit_is_not_kept(tmp_path: Path) -> None:
    rec = open_recording(tmp_path, "yard", 0, 10.0, _frame())
    for seq in range(5):
        rec.write(seq, _frame(), 1_000 + seq)
    real = rec.writer

    class CutAtClose:  # the disk filled while the MP4's index was written
        def write(self, image: np.ndarray) -> bool:
            return True

        def release(self) -> None:
            real.release()
            with rec.partial.open("r+b") as fh:
                fh.truncate(rec.partial.stat().st_size // 2)

    rec.writer = CutAtClose()  # type: ignore[assignment]
    with pytest.raises(RecordingError, match="of 5 frames readable"):
        rec.close()
    assert not (tmp_path / "yard.mp4").exists() and not rec.partial.exists()


class _Control:
    """The recorder's consumer, as the recorder sees it: what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[PartitionKey, int]]] = []

    def pause(self) -> None:
        self.calls.append(("pause", {}))

    def resume(self) -> None:
        self.calls.append(("resume", {}))

    def rewind(self, offsets: Mapping[PartitionKey, int]) -> None:
        self.calls.append(("rewind", dict(offsets)))


def _recorder(tmp_path: Path) -> tuple[Recorder, _Control, dict[str, object]]:
    control, details = _Control(), dict[str, object]()
    return Recorder(RecorderSettings(output_dir=tmp_path, topic_masked="masked"), control, details), control, details


def _masked(camera: str, seq: int, partition: int, offset: int, end: bool = False) -> Inbound:
    frame = (end_of_stream(camera, seq) if end else
             make_frame(camera, seq, encode_jpeg(_frame(), 90), 96, 64, 1_000_000 + seq, 10.0))
    return Inbound(camera.encode(), pb.MaskedFrame(frame=frame).SerializeToString(), "masked", partition, offset)


def test_recorder_commits_past_a_file_only_once_it_is_closed(tmp_path: Path) -> None:
    recorder, control, details = _recorder(tmp_path)
    for seq in range(5):
        recorder.write(_masked("a", seq, 0, 10 + seq))
        recorder.write(_masked("b", seq, 1, 40 + seq))
    recorder.tick()
    assert recorder.committable() == {("masked", 0): 10, ("masked", 1): 40}  # both files still open
    recorder.write(_masked("a", 5, 0, 15, end=True))
    assert recorder.committable() == {("masked", 0): 16, ("masked", 1): 40}
    assert details["closed"] == [str(tmp_path / "a.mp4")]
    recorder.open["b"].last_write -= recorder.settings.idle_close_s + 1  # idle long enough: closed on a tick
    recorder.tick()
    assert recorder.committable() == {("masked", 0): 16, ("masked", 1): 45}
    assert (tmp_path / "b.mp4").exists() and control.calls == [] and not recorder.paused


def test_recorder_pauses_on_a_failed_write_and_resumes_once_space_is_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder, control, _ = _recorder(tmp_path)
    for seq in range(3):
        recorder.write(_masked("a", seq, 0, 7 + seq))
        recorder.write(_masked("b", seq, 1, 20 + seq))
    recorder.write(_masked("c", 0, 0, 10))
    recorder.write(_masked("c", 1, 0, 11, end=True))  # c is on disk; a, on the same partition, is not
    recorder.open["b"].writer = _FailingWriter(recorder.open["b"].writer, fail_after=0)  # type: ignore[assignment]
    recorder.write(_masked("b", 3, 1, 23))
    # Each partition rewound to its first frame not on disk, then every open file dropped, then consuming paused.
    assert control.calls == [("rewind", {("masked", 0): 7, ("masked", 1): 20}), ("pause", {})]
    assert recorder.paused and recorder.open == {} and metrics.RECORDER_PAUSED._value.get() == 1
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["c.mp4"]  # partials deleted, space given back
    assert recorder.committable() == {("masked", 0): 7, ("masked", 1): 20}

    space = iter([False, True])
    monkeypatch.setattr(recorder_module, "space_back", lambda path, want: next(space))
    recorder.tick()  # the first look at free space is at once: not enough yet
    assert recorder.paused and control.calls[-1] == ("pause", {})
    recorder.tick()  # looked at again only after SPACE_CHECK_S
    assert recorder.paused
    recorder._checked_space -= recorder_module.SPACE_CHECK_S
    recorder.tick()
    assert not recorder.paused and control.calls[-1] == ("resume", {}) and metrics.RECORDER_PAUSED._value.get() == 0
    recorder.write(_masked("a", 0, 0, 7))  # what was not written is read again and recorded
    assert recorder.committable() == {("masked", 0): 7, ("masked", 1): 20}
    assert recorder.open["a"].first_offset == 7


def test_recorder_finishing_holds_offsets_at_a_file_that_fails_to_close(tmp_path: Path) -> None:
    recorder, _, _ = _recorder(tmp_path)
    for seq in range(3):
        recorder.write(_masked("a", seq, 0, 30 + seq))
        recorder.write(_masked("b", seq, 1, 50 + seq))
    broken = recorder.open["b"]
    broken.frames += 1  # the index will not hold every frame written: the close fails
    assert recorder.finish(clean=True) == {("masked", 0): 33, ("masked", 1): 50}
    assert (tmp_path / "a.mp4").exists() and not (tmp_path / "b.mp4").exists() and not broken.partial.exists()


def _small_filesystem(path: Path, size: str) -> bool:
    """A tmpfs of `size` at `path` (needs root: CAP_SYS_ADMIN); False where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_disk_full_raises_and_space_back_records_again(tmp_path: Path) -> None:
    """On a real full filesystem (a 512 KiB tmpfs): the write that no longer fits raises, nothing broken is left,
    and with the space back (the filler deleted) the same frames record completely (20 frames: ~135 KB)."""
    mount = tmp_path / "small"
    if not _small_filesystem(mount, "512k"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        (mount / "filler").write_bytes(b"\0" * 450_000)
        noise = np.random.default_rng(3).integers(0, 255, (120, 160, 3), np.uint8)
        frames = [np.roll(noise, 7 * i, axis=1) for i in range(60)]
        rec = open_recording(mount, "gate", 0, 10.0, frames[0])
        with pytest.raises(RecordingError):
            for seq, image in enumerate(frames):
                rec.write(seq, image, 1_000 + seq)
            rec.close()
        assert list(mount.glob("gate*")) == []
        (mount / "filler").unlink()  # space is back
        again = open_recording(mount, "gate", 0, 10.0, frames[0])
        for seq, image in enumerate(frames[:20]):
            assert again.write(seq, image, 1_000 + seq)
        path = again.close()
        cap = cv2.VideoCapture(str(path))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
        cap.release()
    finally:
        subprocess.run(["umount", str(mount)], check=False)
