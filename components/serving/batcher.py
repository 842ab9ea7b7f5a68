"""Dynamic batching: concurrent requests share model runs.

A request puts its texts on an asyncio queue with a future and awaits it. The batcher task takes the
first waiting job and gathers more until the batch holds `max_batch_size` texts or the first job has
waited `max_latency_ms`, then hands the batch to a free inference thread (`run_in_executor`: the event
loop keeps accepting and parsing requests meanwhile) — cut into one part per idle thread when several are
idle — and each job gets its rows. Within a run the
predictor sorts the texts by token length and cuts them where padding would grow (serving/predictors.py).

`workers` inference threads run batches in parallel, each on a single-threaded onnxruntime session (the
server's predictors use one intra-op thread): on small batches a second intra-op thread costs more CPU
than it saves (bench/BENCHMARKS.md: 1 x 24 tokens is no faster on 2 threads), while two batches on two
cores are twice the work. While every worker is busy, requests queue and the next gather takes them at once.

The latency window is only waited when waiting can pay: when the previous batch served more than one
request. A lone client is never delayed; under concurrent load, batches fill up.

Jobs hold the model they were accepted with: a batch gathered across a hot swap runs each model's jobs
on that model, so no request gets answers of two versions.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("domaintune.serving")


class Overloaded(Exception):
    """More texts are waiting than --max-queue allows."""


@dataclass(eq=False)
class Job:
    model: object
    texts: list[str]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, max_batch_size: int, max_latency_ms: float, max_queue: int, metrics, workers: int = 1):
        self.max_batch_size, self.max_latency = max_batch_size, max_latency_ms / 1000
        self.max_queue, self.metrics, self.workers = max_queue, metrics, max(1, workers)
        self.queued_texts = 0
        self.last_requests = 0
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="domaintune-infer")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.workers)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="domaintune-batcher")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, model, texts: list[str]):
        """The predictor's outputs for TEXTS (rows in order), computed in a shared batch."""
        if self.queued_texts + len(texts) > self.max_queue:
            raise Overloaded(f"server is at capacity: {self.queued_texts} texts are waiting (--max-queue "
                             f"{self.max_queue}); retry later")
        job = Job(model, texts, asyncio.get_running_loop().create_future())
        self.queued_texts += len(texts)
        self.metrics.queued.set(self.queued_texts)
        self._queue.put_nowait(job)
        return await job.future

    def _take(self, job: Job) -> Job:
        self.queued_texts -= len(job.texts)
        self.metrics.queued.set(self.queued_texts)
        return job

    async def _gather(self) -> list[Job]:
        jobs = [self._take(await self._queue.get())]
        size = len(jobs[0].texts)
        deadline = jobs[0].queued_at + self.max_latency
        wait = self.max_latency > 0 and self.last_requests > 1
        while size < self.max_batch_size:
            if not self._queue.empty():
                job = self._take(self._queue.get_nowait())
            else:
                remaining = deadline - time.monotonic()
                if not wait or remaining <= 0:
                    break
                try:
                    job = self._take(await asyncio.wait_for(self._queue.get(), remaining))
                except (asyncio.TimeoutError, TimeoutError):
                    break
            jobs.append(job)
            size += len(job.texts)
        return jobs

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()  # gather only when a worker can take the batch
            try:
                jobs = await self._gather()
            except BaseException:
                self._slots.release()
                raise
            self.last_requests = len(jobs)
            for part in await self._spread(jobs):
                task = asyncio.get_running_loop().create_task(self._run_batch(part))
                self._running.add(task)
                task.add_done_callback(self._finished)

    async def _spread(self, jobs: list[Job]) -> list[list[Job]]:
        """The gathered jobs cut into one batch per worker that is idle now (the slot taken for the gather
        included). Under a closed loop of concurrent clients one gather takes every waiting request, and one
        single-threaded session then ran them all while the other core idled: measured, 16 clients got 1.0
        core and 171 req/s (bench/BENCHMARKS.md). Jobs go in length order, so each part pads little."""
        parts = 1
        while parts < len(jobs) and not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            parts += 1
        if parts == 1:
            return [jobs]
        jobs = sorted(jobs, key=lambda job: sum(map(len, job.texts)) / max(1, len(job.texts)))
        total = sum(len(job.texts) for job in jobs)
        cuts, done, out = [total * k / parts for k in range(1, parts)], 0, [[]]
        for job in jobs:
            if len(out) < parts and out[-1] and done >= cuts[len(out) - 1]:
                out.append([])
            out[-1].append(job)
            done += len(job.texts)
        for _ in range(parts - len(out)):  # fewer parts than slots taken (uneven jobs): give the rest back
            self._slots.release()
        return out

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _run_batch(self, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        live = [j for j in jobs if not j.future.done()]  # a timed-out request's job is skipped
        groups: dict[int, list[Job]] = {}
        for job in live:
            groups.setdefault(id(job.model), []).append(job)
        for group in groups.values():
            await self._execute(loop, group)

    async def _execute(self, loop, group: list[Job]) -> None:
        model = group[0].model
        texts = [t for job in group for t in job.texts]
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self.executor, model.predict, texts, self.max_batch_size)
        except Exception as exc:  # the model failed on this batch: every request in it gets the error
            log.error("model run failed", exc_info=True)
            self.metrics.errors.labels("model").inc()
            for job in group:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(texts))
        self.metrics.batch_requests.observe(len(group))
        start = 0
        for job in group:
            rows = outputs[start:start + len(job.texts)]
            start += len(job.texts)
            if not job.future.done():
                job.future.set_result(rows)

    async def drain(self, seconds: float) -> None:
        """Let queued jobs finish (graceful shutdown), then stop the batcher and its thread."""
        deadline = time.monotonic() + seconds
        while (self._running or (self._queue is not None and not self._queue.empty())) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)
