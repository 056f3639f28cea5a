"""Small parts of delta delivery: the sync's rate cap, the CLI's size and rate parsing, plans."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import zstandard

from imagefactory.catalogue.stores import LocalDirStore
from imagefactory.cli_sites import parse_bytes, parse_rate
from imagefactory.delivery.chunks import Chunk, ChunkedImage, chunk_key, cut, read_stored
from imagefactory.delivery.sites import Site, plan
from imagefactory.delivery.sync import Throttle
from imagefactory.errors import BuildError, UserError


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


def test_a_damaged_factory_chunk_never_leaves_the_factory(tmp_path: Path) -> None:
    """`read_stored` (used by export and sync) checks size and content against the index."""
    store = LocalDirStore("local", tmp_path)
    data = random.Random(3).randbytes(100_000)
    packed = zstandard.ZstdCompressor(level=9).compress(data)
    sha = hashlib.sha256(data).hexdigest()
    good = Chunk(sha, len(data), len(packed))
    store.put_bytes(chunk_key(sha), packed)
    assert read_stored(store, good) == packed
    # same size, one byte changed (a raw zstd block keeps the size): the content check sees it
    store.put_bytes(chunk_key(sha), packed[:-1] + bytes([packed[-1] ^ 1]))
    with pytest.raises(BuildError, match=r"local \(.*\): chunk [0-9a-f]{64}: its content does not") as e:
        read_stored(store, good)
    assert e.value.hint is not None and "chunked/NAME/VERSION.json" in e.value.hint
    store.put_bytes(chunk_key(sha), packed[:-1])
    with pytest.raises(BuildError, match="its index says"):
        read_stored(store, good)
    store.delete(chunk_key(sha))
    with pytest.raises(BuildError, match="is missing from local"):
        read_stored(store, good)


def test_cut_hands_out_chunks_that_stay_valid(tmp_path: Path) -> None:
    """Chunks kept past the next one (a thread pool uploading them) keep their content."""
    raw = tmp_path / "disk.raw"
    raw.write_bytes(random.Random(5).randbytes(3 * 1024 * 1024))
    kept = list(cut(raw))
    assert len(kept) > 10 and b"".join(kept) == raw.read_bytes()
