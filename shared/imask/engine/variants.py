"""Variants: a named, versioned configuration of detector, input size, threshold and mask style.

A/B routing and canaries later pick variants by name; the engine only needs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from imask.engine.context import ContextRule
from imask.engine.detectors.base import DetectorGeometry, DetectorRequest
from imask.engine.detectors.blazeface import BLAZEFACE_FULL_SHA256
from imask.engine.detectors.centerface.model import CENTERFACE_SHA256
from imask.engine.masks import MaskSpec


@dataclass(frozen=True)
class Variant:
    name: str
    version: str
    detector: str = "centerface"
    model_sha256: str = CENTERFACE_SHA256
    # The detector's pixel budget per pass: frames are scaled (either way) to about input_width x input_height
    # pixels keeping their aspect; 720p becomes 640x352, a 416x416 photo 480x480.
    input_width: int = 640
    input_height: int = 360
    # A new face needs this score in a frame without an anchor face (see context_threshold below for the rest).
    # With the crowd context on, WIDER FACE recall is the same from 0.1 to 0.2 (docs/EVALUATION.md) and 0.2 keeps
    # textures clearer (the motorcycle's bolts: 0.9% masked at 0.1).
    threshold: float = 0.2
    track_threshold: float = 0.05  # a face already tracked stays masked down to this score
    mask: MaskSpec = field(default_factory=MaskSpec)
    # A box this large (longer side over this fraction of the frame's shorter side) needs large_face_threshold to
    # start a track: CenterFace scores real close faces >= 0.5, while its large low-score boxes are round things
    # (the moon at 0.28, a cat at 0.08, each masking a third of the picture). Small faces keep the low threshold.
    large_face_fraction: float = 0.25
    large_face_threshold: float = 0.5
    # Crowd context (engine/context.py): in a frame with crowd_count small boxes >= crowd_floor, a new small face
    # needs only context_threshold; 0 turns it off. On WIDER FACE crowds (docs/EVALUATION.md): recall 0.887 ->
    # 0.96 with no face-free picture over 1% masked.
    context_threshold: float = 0.03
    crowd_floor: float = 0.1
    crowd_count: int = 5
    # "int8": the graph quantized at load time (detectors/centerface/quantize.py), ~1.5x faster on CPU; CUDA runs fp32.
    precision: str = "int8"
    max_missed: int = 5  # frames a lost face stays masked
    # Detect on every k-th frame of a camera and move tracks in between (and at once on a scene cut: the mean
    # absolute difference of 32x18 grey thumbnails above scene_cut).
    detect_every: int = 1
    scene_cut: float = 20.0
    max_downscale: float = 2.0  # large frames keep at least half their resolution for the detector (0: off)
    max_upscale: float = 2.0  # small frames are enlarged to the pixel budget, by at most this factor
    flip: bool = False  # also detect on the mirrored frame (test-time augmentation; doubles inference)
    tile: int = 0  # frames >= 1600 px on a side also get native-resolution tiles of this size (0: off)
    # "auto": a camera's orientation is estimated on its first frame and every orientation_every detected frames
    # (engine/orientation.py), and a sideways or upside-down camera's faces are also looked for turned upright;
    # "upright": pictures are taken as they come. A frame's configured rotation is used either way.
    orientation: str = "auto"
    orientation_every: int = 150
    # In a crowd frame, a faint box (under threshold) starts a mask only when a second pass at 1.5x the scale and
    # MTCNN's ONet together vouch for it (and its landmarks are in face order), and boxes only the 1.5x pass found
    # are added the same way; both are masked at their own size (engine/second_look.py). On wider_dev: a seventh
    # of the area masked outside faces (median), recall 0.957 -> 0.960.
    second_look: bool = True
    # Frames unsure of their large faces (nothing at the threshold, or a large box under large_face_threshold) are
    # read again at 192x192, where a face filling the frame is of a size the detector knows (engine/close_up.py).
    close_up: bool = True
    # Set when the variant comes from the model registry: the downloaded (and sha256-checked) model file, and the
    # registered version ("name/3") that frames and metrics then report instead of the settings digest.
    model_path: str = ""
    registry_version: str = ""

    @property
    def context(self) -> ContextRule:
        return ContextRule(threshold=self.context_threshold, crowd_floor=self.crowd_floor, crowd_count=self.crowd_count,
                           large_face_fraction=self.large_face_fraction)

    @property
    def geometry(self) -> DetectorGeometry:
        return DetectorGeometry(pixel_budget=self.input_width * self.input_height, max_upscale=self.max_upscale,
                                max_downscale=self.max_downscale, flip=self.flip, tile=self.tile)

    @property
    def detector_request(self) -> DetectorRequest:
        return DetectorRequest(variant=self.name, family=self.detector, model_sha256=self.model_sha256,
                               model_path=self.model_path, precision=self.precision, input_width=self.input_width,
                               input_height=self.input_height, geometry=self.geometry)

    @property
    def model_version(self) -> str:
        if self.registry_version:
            return self.registry_version
        extras = "".join((
            "/int8" if self.precision == "int8" else "",
            f"/ctx{self.context_threshold:g}" if self.context_threshold else "",
            "/flip" if self.flip else "",
            f"/tile{self.tile}" if self.tile else "",
            f"/every{self.detect_every}" if self.detect_every > 1 else "",
            "/orient" if self.orientation == "auto" else "",
            "/look2" if self.second_look else "",
            "/closeup2" if self.close_up else "",  # 2: large boxes under the bar judged (engine/close_up.py)
        ))
        return (f"{self.detector}@{self.model_sha256[:12]}/{self.input_width}x{self.input_height}"
                f"/t{self.threshold:g}/k{self.track_threshold:g}{extras}")

    def __post_init__(self) -> None:
        if self.orientation not in ("auto", "upright"):
            raise ValueError(f"variant {self.name!r}: orientation must be 'auto' or 'upright', "
                             f"got {self.orientation!r}")
        if self.orientation_every < 1:
            raise ValueError(f"variant {self.name!r}: orientation_every must be >= 1")
        if self.second_look and self.detector not in ("centerface", "centerface-torch"):
            raise ValueError(f"variant {self.name!r}: the second look re-reads frames with CenterFace at 1.5x; "
                             f"detector {self.detector!r} has no second look")
        if self.close_up and self.detector not in ("centerface", "centerface-torch"):
            raise ValueError(f"variant {self.name!r}: the close-up pass re-reads frames with CenterFace at 192x192; "
                             f"detector {self.detector!r} has no close-up pass (close_up=False)")

    def with_overrides(self, **changes: object) -> Variant:
        return replace(self, **changes)  # type: ignore[arg-type]


REGISTRY: dict[str, Variant] = {
    "default": Variant(name="default", version="1"),
    # Cheaper input for many-camera CPU deployments; recall drops on small faces.
    "fast": Variant(name="fast", version="1", input_width=320, input_height=192),
    # Real time on CPU: full detection on every 3rd frame of a camera (and on scene cuts), tracks moved between.
    # Sample clips, every frame checked: referee re-found 80 of 3,990 faces, 0 confidently (every frame: 83, 0);
    # every 4th frame left one confident re-find, every 5th two (docs/EVALUATION.md).
    "realtime": Variant(name="realtime", version="1", detect_every=3),
    # The default without the second look: every faint crowd box masked at the full scale (more of the scene masked,
    # the same recall, less CPU in crowds); the comparison point of the second look's cost.
    "broad": Variant(name="broad", version="1", second_look=False),
    # Low-resolution surveillance (PAL/SD frames, heads of 7-15 px): read at their own size (a 768x576 budget; the
    # default shrinks 576p to 0.72x, heads to 5-11 px, under what CenterFace finds) with the crowd rule at 0.1 (at
    # 0.03 the native scale's textures became 228 masks a frame). OpenCV's vtest.avi (docs/BENCHMARKS.md): the
    # referee re-finds 3 of 170 heads after masking, against the default's 68, for about 1.5x its CPU.
    # The second look is off here: at this scale it cost 3x the CPU for no fewer re-found heads (docs/BENCHMARKS.md).
    "sd": Variant(name="sd", version="1", input_width=768, input_height=576, context_threshold=0.1,
                  second_look=False),
    # Crowds: lower threshold, a mirrored pass, a larger budget and native-resolution tiles on large frames.
    # Recall 0.96 on WIDER crowds for about 3x the default's cost; fires on some textures (docs/EVALUATION.md).
    "crowd": Variant(name="crowd", version="1", threshold=0.05, flip=True, input_width=768, input_height=432,
                     tile=640),
    # The second family (MediaPipe's BlazeFace, full-range model, on LiteRT): one 192x192 pass per frame.
    "blazeface": Variant(name="blazeface", version="1", detector="blazeface", model_sha256=BLAZEFACE_FULL_SHA256,
                         input_width=192, input_height=192, threshold=0.5, track_threshold=0.3,
                         context_threshold=0.0, precision="fp32", orientation="upright", close_up=False,
                         second_look=False),
    # BlazeFace with overlapping 256 px tiles at about native resolution besides the whole-frame pass.
    "blazeface-tiled": Variant(name="blazeface-tiled", version="1", detector="blazeface",
                               model_sha256=BLAZEFACE_FULL_SHA256, input_width=192, input_height=192,
                               threshold=0.5, track_threshold=0.3, tile=256, context_threshold=0.0,
                               precision="fp32", orientation="upright", close_up=False, second_look=False),
}


def default_variant() -> Variant:
    return REGISTRY["default"]


def get_variant(name: str) -> Variant:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(REGISTRY)}") from None
