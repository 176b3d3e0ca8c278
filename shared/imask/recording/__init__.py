"""Recording masked frames: the MP4 files (`files`) and the recorder's logic on a sink consumer (`recorder`)."""

from imask.recording.files import (
    CameraRecording,
    RecordingError,
    free_bytes,
    open_recording,
    recording_of,
    safe_name,
    space_back,
)
from imask.recording.recorder import Recorder, committable

__all__ = ["CameraRecording", "Recorder", "RecordingError", "committable", "free_bytes", "open_recording",
           "recording_of", "safe_name", "space_back"]
