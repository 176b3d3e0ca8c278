"""Shadow mode's disagreement count (imask.pipeline.routed): served and shadow boxes matched greedily by IoU."""

from __future__ import annotations


def test_shadow_disagreement_matches_greedily_by_iou() -> None:
    from imask.pipeline.routed import disagreement

    served = [(0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 30.0, 30.0), (100.0, 100.0, 110.0, 110.0)]
    shadow = [(21.0, 21.0, 31.0, 31.0), (1.0, 1.0, 11.0, 11.0), (0.0, 0.0, 10.0, 9.0), (200.0, 0.0, 210.0, 10.0)]
    # served 0 takes the closer of two candidates (IoU 0.9 over 0.68), served 1 its neighbour, served 2 nothing
    assert disagreement(served, shadow) == (2, 1, 2)
    assert disagreement([], shadow) == (0, 0, 4)
    assert disagreement(served, []) == (0, 3, 0)
    # one shadow box is taken once: the second served box over it stays unmatched
    assert disagreement([(0.0, 0.0, 10.0, 10.0), (0.0, 0.0, 10.0, 10.0)], [(0.0, 0.0, 10.0, 10.0)]) == (1, 1, 0)
