"""The HTTP API's decisions without a server (imask.httpapi.handling) and the result cache's keys and policy
(imask.maskapi.cache): options, types, negotiation, deadlines, the error -> status map, what is cached under which
key. The app on a listener: tests/integration/test_mask_api_http.py."""

from __future__ import annotations

import grpc
import pytest

from imask.engine import MaskShape, MaskSpec, MaskStyle
from imask.httpapi import handling as h
from imask.maskapi.cache import CacheRequest, bypasses, for_storage, scope_of, storable
from imask.maskapi.servicer import RequestError
from imask.v1 import mask_service_pb2 as mpb

S = grpc.StatusCode


def test_options_from_the_query_string() -> None:
    options, camera, seq = h.parse_options({"style": "solid", "shape": "box", "scale": "1.8", "threshold": "0.07",
                                            "camera": "lobby", "seq": "42"})
    assert (options.style, options.shape, options.mask_scale, camera, seq) == (
        mpb.MASK_STYLE_SOLID, mpb.MASK_SHAPE_BOX, pytest.approx(1.8), "lobby", 42)
    assert options.threshold == pytest.approx(0.07)
    assert h.parse_options({}) == (mpb.MaskOptions(), "", 0)
    for bad in ({"style": "sparkle"}, {"shape": "star"}, {"scale": "big"}, {"scale": "nan"}, {"scale": "inf"},
                {"scale": "0"}, {"threshold": "0"}, {"seq": "x"}, {"seq": "-1"}, {"colour": "red"}):
        with pytest.raises(RequestError) as err:
            h.parse_options(bad)
        assert err.value.code == S.INVALID_ARGUMENT and h.http_status(err.value) == 400, bad


def test_body_types_and_reply_format() -> None:
    assert h.body_kind("image/jpeg") == "jpeg" and h.body_kind("IMAGE/PNG; charset=x") == "png"
    assert h.body_kind("multipart/form-data; boundary=x") == "multipart"
    for bad in ("text/plain", "image/gif", "", None, "application/octet-stream"):
        with pytest.raises(RequestError) as err:
            h.body_kind(bad)
        assert h.http_status(err.value) == 415, bad
    png = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + (8).to_bytes(4, "big") * 2
    jpeg = b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x08\x00\x08"
    assert h.image_format(png, "png") == "png" and h.image_format(png, None) == "png"
    assert h.image_format(jpeg, None) == "jpeg" and h.image_format(b"junk", "jpeg") == "jpeg"  # the decoder says 400
    with pytest.raises(RequestError) as err:
        h.image_format(png, "jpeg")
    assert h.http_status(err.value) == 400


def test_content_negotiation() -> None:
    assert not h.wants_json(None, "image/jpeg") and not h.wants_json("*/*", "image/jpeg")
    assert h.wants_json("application/json", "image/jpeg")
    assert h.wants_json("image/jpeg;q=0.5, application/json", "image/jpeg")
    assert not h.wants_json("application/json;q=0.2, image/jpeg", "image/jpeg")
    assert h.wants_json("application/json, image/png", "image/png")  # a tie: naming JSON at all is deliberate
    assert h.wants_json("application/json, image/*", "image/png")
    assert not h.wants_json("application/json;q=0", "image/png")


def test_deadline_header() -> None:
    assert h.parse_timeout({}) is None
    assert h.parse_timeout({"x-request-timeout-ms": "250"}) == pytest.approx(0.25)
    for bad in ("0", "-5", "x", "nan", str(h.MAX_TIMEOUT_MS + 1)):
        with pytest.raises(RequestError):
            h.parse_timeout({"x-request-timeout-ms": bad})


def test_errors_map_to_http_statuses_and_headers() -> None:
    cases = {
        RequestError(S.INVALID_ARGUMENT, "bad"): 400,
        RequestError(S.INVALID_ARGUMENT, "big", reason="too_large"): 413,
        RequestError(S.UNAUTHENTICATED, "who"): 401,
        RequestError(S.PERMISSION_DENIED, "no"): 403,
        RequestError(S.RESOURCE_EXHAUSTED, "slow down", reason="rate_limit", retry_after_s=7): 429,
        RequestError(S.RESOURCE_EXHAUSTED, "busy", reason="queue_full", retry_after_s=1): 429,
        RequestError(S.UNAVAILABLE, "loading", reason="not_ready", retry_after_s=1): 503,
        RequestError(S.DEADLINE_EXCEEDED, "late"): 504,
        RequestError(S.INTERNAL, "engine"): 500,
        RequestError(S.UNKNOWN, "?"): 500,
        h.HttpError(415, "gif", "unsupported_type"): 415,
    }
    assert {str(e): h.http_status(e) for e in cases} == {str(e): status for e, status in cases.items()}
    limited = h.error_headers(RequestError(S.RESOURCE_EXHAUSTED, "x", reason="rate_limit", retry_after_s=7))
    assert limited["Retry-After"] == "7"
    assert "Retry-After" not in h.error_headers(RequestError(S.INVALID_ARGUMENT, "x"))
    assert h.error_headers(RequestError(S.UNAUTHENTICATED, "x"))["WWW-Authenticate"].startswith("Bearer")
    assert h.error_body(RequestError(S.INTERNAL, "boom")) == {"status": 500, "code": "INTERNAL", "message": "boom"}


def test_reply_headers_and_json() -> None:
    reply = mpb.MaskReply(image=b"\xff\xd8", variant="default", model_version="centerface@x", fail_closed=True,
                          fail_closed_reason="detector_timeout", width=4, height=3, seq=9)
    d = reply.detections.add(x1=1, y1=2, x2=3, y2=4, score=0.9)
    d.landmarks.add(x=1.5, y=2.5)
    headers = h.reply_headers(reply, "miss")
    assert headers["X-Faces-Masked"] == "1" and headers["X-Fail-Closed-Reason"] == "detector_timeout"
    assert headers["X-Model-Version"] == "centerface@x" and headers["X-Cache"] == "miss"
    assert headers["Cache-Control"] == "no-store"
    body = h.reply_json(reply, "hit")
    assert body["detections"] == [{"box": [1, 2, 3, 4], "score": pytest.approx(0.9), "landmarks": [[1.5, 2.5]],
                                   "track_id": 0, "held": False}]
    assert (body["faces_masked"], body["cache"], body["seq"], body["fail_closed"]) == (1, "hit", 9, True)
    assert "image" not in body
    assert "X-Fail-Closed-Reason" not in h.reply_headers(mpb.MaskReply(), "off")


def _request(**changes: object) -> CacheRequest:
    base: dict[str, object] = {"image_sha256": "a" * 64, "model_version": "centerface@1/640x360", "spec": MaskSpec(),
                               "threshold": None, "encoding": "jpeg", "scope": scope_of("imk_alice")}
    return CacheRequest(**{**base, **changes})  # type: ignore[arg-type]


def test_cache_keys_change_with_everything_a_reply_depends_on() -> None:
    base = _request()
    assert base.key("p:cache") == _request().key("p:cache") and base.key("p:cache").startswith("p:cache:")
    others = [_request(image_sha256="b" * 64), _request(model_version="centerface@2/640x360"),
              _request(spec=MaskSpec(style=MaskStyle.SOLID)), _request(spec=MaskSpec(shape=MaskShape.BOX)),
              _request(spec=MaskSpec(scale=1.6)), _request(threshold=0.07), _request(encoding="png"),
              _request(encoding="none"), _request(scope=scope_of("imk_bob")), _request(scope=scope_of(None))]
    keys = {r.key("p:cache") for r in others}
    assert len(keys) == len(others) and base.key("p:cache") not in keys
    assert "imk_alice" not in base.key("p:cache") and scope_of(None) == "anonymous"  # never the key itself


def test_cache_policy() -> None:
    assert bypasses("no-cache") and bypasses("max-age=0, No-Store") and not bypasses("") and not bypasses("max-age=9")
    good = mpb.MaskReply(image=b"x" * 100, seq=5)
    good.timings.end_to_end_ms = 12
    assert storable(good, 1024) == "" and storable(good, 50) == "too_large"
    assert storable(mpb.MaskReply(fail_closed=True), 1024) == "fail_closed"
    stored = mpb.MaskReply.FromString(for_storage(good))
    assert stored.image == good.image and stored.seq == 0 and stored.timings.end_to_end_ms == 0

