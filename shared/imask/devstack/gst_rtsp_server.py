"""A live RTSP camera simulator on GStreamer's RTSP server; run with the system Python (`/usr/bin/python3`).

Standalone on purpose: the project's virtualenv cannot import `gi`, so this file imports nothing from imask.
`imask.devstack.rtsp_server` starts it and waits for its READY line.

Each mount behaves like a real camera rather than a file server: a feeder pipeline decodes the file in real
time (appsink with sync=true) and loops seamlessly; every RTSP session of that mount shares one encoder fed
through an appsrc, so clients join a running stream at its next keyframe (1 s apart, no B-frames) and several
clients see the same frames. Serving the file directly would restart it for each client and end it for all.

    /usr/bin/python3 gst_rtsp_server.py --port 8554 --mount cam1=clip.mp4 --mount cam2=other.mkv
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENCODER = ("x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max={gop} "
           "bitrate={kbps} byte-stream=true")


class Feeder:
    """Decodes one file at its own pace, forever, and pushes each frame to the appsrcs that want it."""

    def __init__(self, name: str, path: str, width: int) -> None:
        self.name = name
        # A width range: larger frames are scaled down (aspect kept), smaller ones pass unchanged.
        scale = f"videoscale ! video/x-raw,format=I420,width=[16,{width}],pixel-aspect-ratio=1/1" if width \
            else "video/x-raw,format=I420"
        self.pipeline = Gst.parse_launch(
            f'filesrc location="{path}" ! decodebin ! videoconvert ! {scale} ! '
            "appsink name=sink sync=true max-buffers=2 drop=true emit-signals=true")
        self.sink = self.pipeline.get_by_name("sink")
        self.sink.connect("new-sample", self._on_sample)
        self.caps: Gst.Caps | None = None
        self.ready = threading.Event()
        self.srcs: list[Gst.Element] = []
        self.lock = threading.Lock()
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self._on_message)

    def start(self) -> None:
        self.pipeline.set_state(Gst.State.PLAYING)

    def _on_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if self.caps is None:
            self.caps = sample.get_caps()
            self.ready.set()
        with self.lock:
            srcs = list(self.srcs)
        for src in srcs:
            # Fresh timestamps from the appsrc (do-timestamp): the file's own restart at 0 on every loop
            # must not reach the encoder.
            buf = sample.get_buffer().copy()
            buf.pts = Gst.CLOCK_TIME_NONE
            buf.dts = Gst.CLOCK_TIME_NONE
            src.emit("push-buffer", buf)
        return Gst.FlowReturn.OK

    def _on_message(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.EOS:
            self.pipeline.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0)
        elif message.type == Gst.MessageType.ERROR:
            err, _ = message.parse_error()
            print(f"ERROR {self.name}: {err.message}", file=sys.stderr, flush=True)
            GLib.idle_add(lambda: sys.exit(2))

    def attach(self, src: Gst.Element) -> None:
        src.set_property("caps", self.caps)
        with self.lock:
            self.srcs.append(src)

    def detach(self, src: Gst.Element) -> None:
        with self.lock:
            if src in self.srcs:
                self.srcs.remove(src)


def make_factory(feeder: Feeder, gop: int, kbps: int) -> GstRtspServer.RTSPMediaFactory:
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( appsrc name=src is-live=true do-timestamp=true format=time ! videoconvert ! "
                       f"{ENCODER.format(gop=gop, kbps=kbps)} ! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(True)

    def configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name("src")
        feeder.attach(src)
        media.connect("unprepared", lambda _media: feeder.detach(src))

    factory.connect("media-configure", configure)
    return factory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mount", action="append", required=True, metavar="NAME=FILE",
                        help="serve FILE, looping, at rtsp://HOST:PORT/NAME (repeat)")
    parser.add_argument("--gop", type=int, default=25, help="keyframe interval in frames (1 s at 25 fps)")
    parser.add_argument("--kbps", type=int, default=4000, help="H.264 bitrate")
    parser.add_argument("--width", type=int, default=0,
                        help="scale wider frames down to this width (0: as in the file)")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    feeders = []
    for entry in args.mount:
        name, _, path = entry.partition("=")
        feeder = Feeder(name, path, args.width)
        feeder.start()
        feeders.append(feeder)
        mounts.add_factory(f"/{name}", make_factory(feeder, args.gop, args.kbps))
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 2

    def announce() -> bool:
        if all(f.ready.is_set() for f in feeders):
            print(f"READY {server.get_bound_port()}", flush=True)
            return False
        return True

    GLib.timeout_add(20, announce)
    with contextlib.suppress(KeyboardInterrupt):
        loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
