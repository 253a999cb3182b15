"""The synchronous client: the same API as `Client`, for scripts and
notebooks without an event loop. One background thread runs the asyncio
loop the NATS connection lives on; each call blocks until its answer.

    with SyncClient.connect("nats://127.0.0.1:4222", "alice", key="alice.key") as client:
        job = client.submit("mug.png")
        for event in client.events(job):
            print(event.name)
        client.fetch(job, "out/")
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine, Iterator, Optional, TypeVar

from .client import AUDIENCE, Client, ImageRef, Job, JobRef
from .types import Completed, Event, Fetched, JobStatus, ModelInfo

T = TypeVar("T")


class SyncClient:
    """One agent's blocking client. Create with `SyncClient.connect(...)`."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._client = client
        self._loop = loop
        self._thread = thread

    @classmethod
    def connect(cls, servers: Any, agent: str, key: Any, *, audience: str = AUDIENCE, timeout: float = 30.0,
                isolated: bool = False, **nats_options: Any) -> "SyncClient":
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="orfeas-client", daemon=True)
        thread.start()
        try:
            client = asyncio.run_coroutine_threadsafe(
                Client.connect(servers, agent, key, audience=audience, timeout=timeout, isolated=isolated, **nats_options), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            raise
        return cls(client, loop, thread)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def agent(self) -> str:
        return self._client.agent

    @property
    def aio(self) -> Client:
        """The asynchronous client underneath (its loop runs in another thread)."""
        return self._client

    def close(self) -> None:
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def upload(self, image: Any, name: Optional[str] = None) -> ImageRef:
        return self._run(self._client.upload(image, name))

    def submit(self, image: Any, **kwargs: Any) -> Job:
        return self._run(self._client.submit(image, **kwargs))

    def events(self, job: JobRef, timeout: Optional[float] = None) -> Iterator[Event]:
        events = self._client.events(job, timeout)
        try:
            while True:
                try:
                    yield self._run(events.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose())

    def wait(self, job: JobRef, timeout: Optional[float] = None) -> Completed:
        return self._run(self._client.wait(job, timeout))

    def status(self, job: JobRef, timeout: Optional[float] = None) -> JobStatus:
        return self._run(self._client.status(job, timeout))

    def cancel(self, job: JobRef, timeout: Optional[float] = None) -> JobStatus:
        return self._run(self._client.cancel(job, timeout))

    def manifest(self, job: JobRef, timeout: Optional[float] = None) -> Event:
        return self._run(self._client.manifest(job, timeout))

    def fetch(self, job: JobRef, dest: Any = None, **kwargs: Any) -> Fetched:
        return self._run(self._client.fetch(job, dest, **kwargs))

    def list_models(self, timeout: Optional[float] = None) -> list[ModelInfo]:
        return self._run(self._client.list_models(timeout))
