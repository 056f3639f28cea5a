"""A tiny Ethernet switch for VMs on one host whose host side stays on 127.0.0.1.

Each VM's second NIC is a qemu stream socket netdev (libvirt `<interface type='client'>`) that
connects to this process on 127.0.0.1:PORT. Frames arrive length-prefixed (4 bytes, big endian:
qemu's socket netdev framing); a learning switch forwards them by destination MAC and floods
broadcast, multicast and unknown destinations. No host bridge, no tap device, no multicast
socket and no address of the host outside loopback is involved, which is what lets cluster VMs
talk to each other on machines where only loopback networking is allowed.

Run: `python -m imagefactory.l2hub --port P [--pid-file F]` (the libvirt cluster target starts it
detached and stops it on `cluster delete`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import struct
from pathlib import Path

log = logging.getLogger("imagefactory.l2hub")
MAX_FRAME = 65536 + 18


class Switch:
    def __init__(self) -> None:
        self.ports: set[asyncio.StreamWriter] = set()
        self.macs: dict[bytes, asyncio.StreamWriter] = {}
        self.frames = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self.ports.add(writer)
        log.info("port up: %s (%d ports)", peer, len(self.ports))
        try:
            while True:
                head = await reader.readexactly(4)
                (length,) = struct.unpack("!I", head)
                if not 14 <= length <= MAX_FRAME:
                    log.warning("%s: bad frame length %d, dropping the port", peer, length)
                    break
                frame = await reader.readexactly(length)
                self.forward(writer, head + frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ports.discard(writer)
            for mac in [m for m, w in self.macs.items() if w is writer]:
                del self.macs[mac]
            writer.close()
            log.info("port down: %s (%d ports)", peer, len(self.ports))

    def forward(self, source: asyncio.StreamWriter, packet: bytes) -> None:
        self.frames += 1
        dst, src = packet[4:10], packet[10:16]
        if not src[0] & 1:
            self.macs[src] = source
        out = self.macs.get(dst) if not dst[0] & 1 else None
        targets = [out] if out is not None else [w for w in self.ports if w is not source]
        for w in targets:
            if w is not source and not w.is_closing():
                w.write(packet)  # a slow port buffers; Ethernet may drop, TCP here does not


async def main_async(port: int, ready: Path | None) -> None:
    switch = Switch()
    server = await asyncio.start_server(switch.serve, "127.0.0.1", port)
    if ready:
        ready.write_text(f"{os.getpid()}\n")
    log.info("switch listening on 127.0.0.1:%d", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    log.info("stopped after %d frames", switch.frames)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid-file", type=Path)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        asyncio.run(main_async(a.port, a.pid_file))
    finally:
        if a.pid_file:
            with contextlib.suppress(OSError):
                a.pid_file.unlink()


if __name__ == "__main__":
    main()
