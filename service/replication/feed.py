"""Waking whoever streams a growing log: WatchEvents' watchers (the audit log grew) and
StreamIndex's followers (the index changed)."""

import asyncio


class Feed:
    """Wakes watchers when a log has grown past a position. Lives on the event loop."""

    def __init__(self) -> None:
        self.position = 0
        self.closed = False
        self._grown = asyncio.Event()

    def close(self) -> None:
        """Ends every watch: the server is stopping."""
        self.closed = True
        self._grown.set()

    def advance(self, position: int) -> None:
        if position > self.position:
            self.position = position
            self._grown.set()
            self._grown = asyncio.Event()

    async def beyond(self, position: int) -> None:
        while self.position <= position and not self.closed:
            await self._grown.wait()
