"""Small parts of delta delivery: the sync's rate cap, the CLI's size and rate parsing, plans."""

from __future__ import annotations

import pytest

from imagefactory.cli_sites import parse_bytes, parse_rate
from imagefactory.delivery.chunks import Chunk, ChunkedImage
from imagefactory.delivery.sites import Site, plan
from imagefactory.delivery.sync import Throttle
from imagefactory.errors import UserError


def test_throttle_keeps_the_average_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    t = Throttle(1800.0, clock=lambda: now[0], sleep=sleep)  # 14.4 kbit/s
    for _ in range(10):
        t(3600)  # 2 s worth each
    assert now[0] == pytest.approx(20.0) and len(slept) == 10
    now[0] += 100  # an idle link earns no burst
    t(1800)
    assert slept[-1] == pytest.approx(1.0) and now[0] == pytest.approx(121.0)
    assert Throttle(None, clock=lambda: 0.0, sleep=sleep)(10**9) is None


@pytest.mark.parametrize(("text", "want"), [("14.4kbit", 1800.0), ("1Mbit", 125000.0), ("200KB", 200000.0),
                                            ("64KiB/s", 65536.0), ("1000", 1000.0)])
def test_rates(text: str, want: float) -> None:
    assert parse_rate(text) == want


def test_sizes_and_bad_sizes() -> None:
    assert parse_bytes("50MB", "--max-bytes") == 50_000_000
    assert parse_bytes("3 MiB", "--max-bytes") == 3 * 1024**2
    with pytest.raises(UserError, match="--max-bytes: 'lots' is not a size"):
        parse_bytes("lots", "--max-bytes")
    with pytest.raises(UserError, match="--rate"):
        parse_rate("fast")


def _image(version: str, chunks: list[tuple[str, int]]) -> ChunkedImage:
    cs = tuple(Chunk(sha * 64, 65536, csize) for sha, csize in chunks)
    return ChunkedImage("img", version, "aa" * 32, 65536 * len(cs), "bb" * 32, "cc" * 64, "dd" * 32, 100, cs,
                        {"table": {}})


def test_a_plan_counts_each_missing_chunk_once() -> None:
    held = _image("1", [("a", 10), ("b", 20), ("c", 30)])
    new = _image("2", [("a", 10), ("b", 20), ("d", 40), ("d", 40)])  # d twice in the disk
    other = _image("3", [("d", 40), ("e", 50)])  # d again: already counted for image 2
    site = Site("edge-1", "/x", "2026-12-06T00:00:00+00:00", ["img:1"])
    p = plan(site, [new, other], [held])
    assert [(i.ref, i.new_chunks, i.chunk_bytes) for i in p.images] == [("img:2", 1, 40), ("img:3", 1, 50)]
    assert set(p.missing) == {"d" * 64, "e" * 64}
    assert p.bytes == 40 + 50 + sum(i.meta_bytes for i in p.images)
    assert plan(Site("edge-2", "/y", "t"), [new], []).images[0].chunk_bytes == 70  # nothing held: a, b, d
