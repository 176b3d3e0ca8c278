"""mask-api's engine thread (imask.maskapi.executor) survives an exception in the engine."""

from __future__ import annotations

import asyncio

from conftest import BrokenEngine
from imask.engine import EngineResult, FrameInput, MaskingEngine
from imask.maskapi.executor import EngineExecutor, EngineFailed
from imask.types import Image


def test_executor_survives_an_engine_exception(engine: MaskingEngine, astronaut_image: Image) -> None:
    executor = EngineExecutor(BrokenEngine(engine, {0}))  # type: ignore[arg-type]
    spec = engine.variant.mask

    async def two_calls() -> tuple[BaseException | None, EngineResult]:
        first: BaseException | None = None
        try:
            await executor.submit(FrameInput("a", 0, astronaut_image), spec, None, None)
        except EngineFailed as exc:
            first = exc
        result, _ = await asyncio.wait_for(executor.submit(FrameInput("a", 1, astronaut_image), spec, None, None),
                                           timeout=30)
        return first, result

    try:
        failed, result = asyncio.run(two_calls())
    finally:
        executor.close()
    assert isinstance(failed, EngineFailed)
    assert len(result.faces) == 1 and not result.fail_closed
