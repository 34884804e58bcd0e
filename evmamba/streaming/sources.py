"""Where the loop's events come from: recordings (any event file, dataset samples), stdin and UDP.

A source is an iterable of :class:`Chunk` -- consecutive pieces of one or more recordings -- plus counters
(:attr:`Source.stats`) of what it skipped. Two kinds:

* **replayed** sources (:class:`RecordingSource`: files and dataset samples) know the whole recording and
  cut it into slices of ``chunk_us`` of stream time; the loop paces them by their timestamps
  (:mod:`evmamba.streaming.pacing`);
* **live** sources (:class:`ByteStreamSource` for stdin, :class:`UdpSource`) deliver events when they
  arrive; each chunk is stamped with its arrival time.

Recording boundaries travel with the chunks: ``new_recording`` (the events start a new recording: reset
the classifier first) and ``end`` (the recording ends after these events). Live sources also start a new
recording when time jumps backwards (a sender restarted), instead of rejecting every later event.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.events import SensorSize, empty_events
from ..pipeline.events import validate_events
from . import protocol


@dataclass
class Chunk:
    """A piece of a recording.

    * ``events`` -- ``EVENT_DTYPE`` array, times in µs, sorted, not before the previous chunk's;
    * ``t_end`` -- the recording is complete up to this time (µs, >= the last event), e.g. the end of a
      replay slice: bins that close by then can be emitted; None when unknown (live sources);
    * ``new_recording`` / ``end`` -- recording boundaries (see the module docstring);
    * ``recording`` -- a name for outputs; ``label`` -- the true class index when known;
    * ``arrival`` -- ``time.perf_counter()`` when the chunk arrived (live) or was due (paced replay);
      None for an unpaced replay (the loop then uses the time it takes the chunk).
    """

    events: np.ndarray
    t_end: int | None = None
    new_recording: bool = False
    end: bool = False
    recording: str = ""
    label: int | None = None
    arrival: float | None = None

    @property
    def n_events(self) -> int:
        return int(self.events.shape[0])


@dataclass
class SourceStats:
    """What a source received and skipped; every field is a count."""

    packets: int = 0  # packets (datagrams, stream packets) decoded and accepted
    events: int = 0  # events delivered
    short: int = 0  # packets shorter than their header says, or cut off at the end of a stream
    oversized: int = 0  # packets longer than allowed or than their header says, or announcing more than allowed
    garbage: int = 0  # packets with a bad magic/version/layout (bytes skipped on a byte stream count once)
    invalid: int = 0  # packets whose events break the rules (outside the sensor, unsorted)
    invalid_events: int = 0  # events in those packets
    lost: int = 0  # sequence numbers missing among decoded packets (never arrived, or skipped as malformed)
    time_resets: int = 0  # times the timestamps jumped back (treated as a new recording)
    truncated_bytes: int = 0  # bytes of an unfinished packet at the end of a byte stream

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Source:
    """Base class: iterate to get :class:`Chunk` objects; :meth:`close` stops a blocking source."""

    live = False
    name = "source"

    def __init__(self) -> None:
        self.stats = SourceStats()
        self._closed = False

    def __iter__(self) -> Iterator[Chunk]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True


# ---------------------------------------------------------------------------------------------- replay
@dataclass
class Recording:
    """A recording to replay: ``load()`` returns its events (``EVENT_DTYPE``); ``label`` if known."""

    name: str
    load: Callable[[], np.ndarray]
    label: int | None = None


def slice_recording(events: np.ndarray, chunk_us: int) -> Iterator[tuple[np.ndarray, int]]:
    """Cut a sorted recording into slices ``[t0 + j * chunk_us, t0 + (j + 1) * chunk_us)`` (``t0`` = its
    first event); yields ``(events, slice end in µs)``, skipping empty slices. The last slice ends at its
    last event + 1 µs."""
    if events.size == 0:
        return
    t = events["t"]
    t0, last = int(t[0]), int(t[-1])
    n_slices = (last - t0) // chunk_us + 1
    edges = t0 + chunk_us * np.arange(1, n_slices + 1, dtype=np.int64)
    cuts = np.searchsorted(t, edges, side="left")
    start = 0
    for j, stop in enumerate(cuts):
        stop = int(stop)
        if stop > start:
            end = int(edges[j]) if j < n_slices - 1 else last + 1
            yield events[start:stop], end
        start = stop


class RecordingSource(Source):
    """Replays recordings one after the other in slices of ``chunk_us`` µs of stream time.

    Each recording's events are validated against ``sensor_size`` when loaded (``ValueError`` naming it).
    """

    def __init__(self, recordings: Iterable[Recording], sensor_size: SensorSize, chunk_us: int = 1000,
                 name: str = "recordings"):
        super().__init__()
        if isinstance(chunk_us, bool) or not isinstance(chunk_us, int) or chunk_us < 1:
            raise ValueError(f"{name}: chunk_us must be a positive int (µs); got {chunk_us!r}")
        self.recordings = list(recordings)
        self.sensor_size = sensor_size
        self.chunk_us = chunk_us
        self.name = name

    def __iter__(self) -> Iterator[Chunk]:
        for rec in self.recordings:
            if self._closed:
                return
            events = validate_events(rec.load(), self.sensor_size, rec.name)
            first = True
            pieces = list(slice_recording(events, self.chunk_us)) or [(empty_events(), None)]
            for i, (ev, t_end) in enumerate(pieces):
                if self._closed:
                    return
                self.stats.events += ev.size
                yield Chunk(ev, t_end, new_recording=first, end=i == len(pieces) - 1, recording=rec.name,
                            label=rec.label)
                first = False


def file_recordings(paths: Iterable, sensor_size: SensorSize | None = None) -> list[Recording]:
    """One :class:`Recording` per event file (any format :func:`~evmamba.pipeline.readers.read_events`
    reads); the files are read when replayed."""
    from ..pipeline.readers import read_events

    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such event file")
        out.append(Recording(str(path), lambda path=path: read_events(path, sensor_size)[0]))
    return out


def sample_recordings(dataset_cfg, split: str, indices: Iterable[int]) -> tuple[list[Recording], tuple, list]:
    """Recordings ``indices`` of a dataset split (``build_dataset(dataset_cfg, split)``), with labels.

    Returns ``(recordings, sensor_size, classes)``. Raises ``ValueError`` for an index out of range.
    """
    from ..datasets.registry import build_dataset

    ds = build_dataset(dataset_cfg, split)
    n = len(ds)
    recs = []
    for i in indices:
        if not -n <= i < n:
            raise ValueError(f"dataset {ds.name!r} split {split!r}: sample index {i} outside [0, {n})")
        i = i % n
        label = int(ds.labels[i]) if hasattr(ds, "labels") else None
        recs.append(Recording(f"{ds.name}/{split}/{i}:{ds.source(i)}", lambda i=i: ds[i][0], label))
    return recs, tuple(ds.sensor_size), list(ds.classes)


# ---------------------------------------------------------------------------------------------- live
class _LiveChecker:
    """Checks the events of each live packet: sorted, inside the sensor, and after the previous packet's
    (a backward jump starts a new recording)."""

    def __init__(self, sensor_size: SensorSize, stats: SourceStats, name: str):
        self.sensor_size, self.stats, self.name = sensor_size, stats, name
        self.last_t: int | None = None
        self.pending_new = True

    def accept(self, events: np.ndarray, end: bool, arrival: float) -> Chunk | None:
        try:
            validate_events(events, self.sensor_size, self.name)
        except ValueError:
            self.stats.invalid += 1
            self.stats.invalid_events += events.size
            return None
        new = self.pending_new
        if events.size and self.last_t is not None and int(events["t"][0]) < self.last_t:
            self.stats.time_resets += 1
            new = True
        if events.size:
            self.last_t = int(events["t"][-1])
        self.stats.packets += 1
        self.stats.events += events.size
        self.pending_new = end
        if end:
            self.last_t = None
        return Chunk(events, None, new_recording=new, end=end, recording=self.name, arrival=arrival)


#: The largest packet limit a byte stream accepts (stdin packets may exceed a datagram's 65 507 bytes).
MAX_STREAM_PACKET = 1 << 30


def _check_max_packet(max_packet, source: str, upper: int) -> None:
    if isinstance(max_packet, bool) or not isinstance(max_packet, int) or not 16 <= max_packet <= upper:
        raise ValueError(f"{source}: max_packet must be an int in [16, {upper}] bytes; got {max_packet!r}")


class ByteStreamSource(Source):
    """evmamba packets back to back on a byte stream (stdin, a pipe, a file); see :mod:`.protocol`.

    A bad header makes the reader scan forward to the next magic (the skipped stretch counts once as
    ``garbage``). A header that announces more than ``max_packet`` bytes -- the same limit as for UDP
    datagrams, by default; up to :data:`MAX_STREAM_PACKET` here -- counts as ``oversized`` and the reader
    resynchronises on the next magic too, so a corrupt count never makes it wait for (and buffer) bytes
    that are not coming. A stream that ends inside a
    packet counts ``short`` and ``truncated_bytes``. The END flag ends a recording; the end of the stream
    ends the last one.
    """

    live = True

    def __init__(self, stream, sensor_size: SensorSize, name: str = "stdin", read_size: int = 1 << 16,
                 max_packet: int = protocol.MAX_DATAGRAM):
        super().__init__()
        _check_max_packet(max_packet, name, MAX_STREAM_PACKET)
        self.stream = stream
        self.name = name
        self.read_size = read_size
        self.max_packet = max_packet
        self._check = _LiveChecker(sensor_size, self.stats, name)

    def _read(self) -> bytes:
        read1 = getattr(self.stream, "read1", None)
        return read1(self.read_size) if read1 is not None else self.stream.read(self.read_size)

    def __iter__(self) -> Iterator[Chunk]:
        buf = bytearray()
        eof = False
        in_garbage = False  # inside a stretch of garbage (counted once)
        while not self._closed:
            # Decode every whole packet in the buffer.
            while True:
                if len(buf) < protocol.HEADER_SIZE:
                    break
                try:
                    _, _, count = protocol.decode_header(buf, self.name, self.max_packet)
                except protocol.PacketError as exc:
                    nxt = buf.find(protocol.MAGIC, 1)
                    if exc.kind == "oversized":  # a corrupt count: this packet counts, its bytes are skipped
                        self.stats.oversized += 1
                    else:
                        self.stats.garbage += not in_garbage
                    in_garbage = True  # skipping up to the next magic, already counted
                    if nxt < 0:
                        keep = len(protocol.MAGIC) - 1  # a magic may straddle the next read
                        del buf[: max(0, len(buf) - keep)]
                        break
                    del buf[:nxt]
                    continue
                size = protocol.HEADER_SIZE + protocol.RECORD_SIZE * count
                if len(buf) < size:
                    break
                events, end, _ = protocol.decode_packet(bytes(buf[:size]), self.name)
                del buf[:size]
                in_garbage = False
                chunk = self._check.accept(events, end, time.perf_counter())
                if chunk is not None:
                    yield chunk
            if eof:
                break
            data = self._read()
            if not data:
                eof = True
                if buf:
                    # What is left cannot be a whole packet: the stream ended inside one (or in garbage).
                    head = bytes(buf[: len(protocol.MAGIC)])
                    if protocol.MAGIC.startswith(head) and not in_garbage:
                        self.stats.short += 1
                        self.stats.truncated_bytes += len(buf)
                    else:
                        self.stats.garbage += not in_garbage
                    buf.clear()
                continue
            buf += data
        if not self._check.pending_new:  # the last recording had no END: end it here
            yield Chunk(empty_events(), None, end=True, recording=self.name, arrival=time.perf_counter())


class UdpSource(Source):
    """Datagrams on a UDP socket (``host:port``, e.g. loopback) in ``fmt`` ``"evmamba"`` or ``"jaer"``.

    Datagrams larger than ``max_packet`` bytes are ``oversized`` (the socket reads ``max_packet + 1``
    bytes, so a larger datagram shows up truncated to that size). Sequence-number gaps count as ``lost``.
    ``idle_end_s``: silence this long ends the current recording (None: never). ``port=0`` binds a free
    port: read :attr:`address` after construction. The socket is closed when iteration ends.
    """

    live = True

    def __init__(self, host: str, port: int, sensor_size: SensorSize, fmt: str = "evmamba",
                 max_packet: int = protocol.MAX_DATAGRAM, idle_end_s: float | None = None, poll_s: float = 0.05,
                 rcvbuf: int = 1 << 22):
        super().__init__()
        if fmt not in ("evmamba", "jaer"):
            raise ValueError(f"udp source: format must be 'evmamba' or 'jaer'; got {fmt!r}")
        _check_max_packet(max_packet, "udp source", protocol.MAX_DATAGRAM)
        self.fmt, self.max_packet, self.idle_end_s = fmt, max_packet, idle_end_s
        self.name = f"udp://{host}:{port}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        except OSError:  # pragma: no cover - a limit of the host
            pass
        self.sock.bind((host, port))
        self.sock.settimeout(poll_s)
        self.address = self.sock.getsockname()
        self.name = f"udp://{self.address[0]}:{self.address[1]}"
        self._check = _LiveChecker(sensor_size, self.stats, self.name)
        self._jaer = protocol.JaerDecoder() if fmt == "jaer" else None
        self._last_seq: int | None = None

    def _count_seq(self, seq: int | None) -> None:
        if seq is None:
            return
        if self._last_seq is not None:
            gap = (seq - self._last_seq - 1) & 0xFFFFFFFF
            if 0 < gap < (1 << 16):  # a large "gap" is a restarted sender, not losses
                self.stats.lost += gap
        self._last_seq = seq

    def __iter__(self) -> Iterator[Chunk]:
        buf = bytearray(self.max_packet + 1)
        view = memoryview(buf)
        last_data = time.perf_counter()
        try:
            while not self._closed:
                try:
                    n = self.sock.recv_into(buf)
                except TimeoutError:
                    idle = time.perf_counter() - last_data
                    if self.idle_end_s is not None and not self._check.pending_new and idle >= self.idle_end_s:
                        self._check.pending_new = True
                        self._check.last_t = None
                        yield Chunk(empty_events(), None, end=True, recording=self.name, arrival=time.perf_counter())
                    continue
                except OSError:
                    if self._closed:
                        break
                    raise
                arrival = time.perf_counter()
                last_data = arrival
                if n > self.max_packet:
                    self.stats.oversized += 1
                    continue
                data = bytes(view[:n])
                try:
                    if self._jaer is not None:
                        events, seq = self._jaer.decode(data, self.name)
                        end = False
                    else:
                        events, end, seq = protocol.decode_packet(data, self.name, self.max_packet)
                except protocol.PacketError as exc:
                    setattr(self.stats, exc.kind, getattr(self.stats, exc.kind) + 1)
                    continue
                self._count_seq(seq)
                chunk = self._check.accept(events, end, arrival)
                if chunk is not None:
                    yield chunk
        finally:
            self.sock.close()
        if not self._check.pending_new:
            yield Chunk(empty_events(), None, end=True, recording=self.name, arrival=time.perf_counter())

    def close(self) -> None:
        super().close()


def parse_udp(spec: str) -> tuple[str, int]:
    """``udp://HOST:PORT`` (or ``udp:PORT``, host 127.0.0.1) -> ``(host, port)``; ``ValueError`` otherwise."""
    rest = spec[len("udp://"):] if spec.startswith("udp://") else spec[len("udp:"):]
    host, _, port = rest.rpartition(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--source {spec!r}: expected udp://HOST:PORT with a port in 0..65535")
    return host, int(port)


# -------------------------------------------------------------------------------- sources by name
def _parse_samples(spec: str, default_split: str) -> tuple[str, list[int]]:
    body = spec[len("sample:"):]
    split, _, idx = body.rpartition(":")
    split = split or default_split
    try:
        indices = [int(v) for v in idx.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--source {spec!r}: expected sample:[SPLIT:]I[,J...] with integer indices") from None
    if not indices:
        raise ValueError(f"--source {spec!r}: no sample index given")
    return split, indices


def source_from_specs(specs: Sequence[str], model, *, split: str = "test", chunk_us: int = 1000,
                      udp_format: str = "evmamba", max_packet: int = 65507, idle_end_s: float | None = None,
                      stdin=None):
    """The source that ``evmamba stream --source SPEC ...`` reads, for a model's sensor and classes.

    ``specs``: event files; ``sample:[SPLIT:]I[,J...]`` (samples of the model's dataset, ``split`` by
    default; their sensor and classes must be the model's); ``-`` (evmamba packets on ``stdin``, default
    ``sys.stdin.buffer``) or ``udp://HOST:PORT`` (datagrams in ``udp_format``). A live source stands alone.
    ``model``: a :class:`~evmamba.streaming.loading.StreamModel`. Recordings are replayed in slices of
    ``chunk_us`` of stream time. ``ValueError`` naming the spec for anything else.
    """
    import sys

    sm = model
    live = [s for s in specs if s == "-" or s.startswith("udp:")]
    if live and len(specs) > 1:
        raise ValueError(f"--source: a live source ({live[0]}) cannot be combined with other sources")
    if live:
        spec = live[0]
        if spec == "-":
            return ByteStreamSource(
                sys.stdin.buffer if stdin is None else stdin, sm.sensor_size, name="stdin", max_packet=max_packet
            )
        host, port = parse_udp(spec)
        return UdpSource(host, port, sm.sensor_size, fmt=udp_format, max_packet=max_packet, idle_end_s=idle_end_s)
    recordings = []
    for spec in specs:
        if spec.startswith("sample:"):
            which, indices = _parse_samples(spec, split)
            recs, sensor, classes = sample_recordings(sm.config.get("dataset") or {}, which, indices)
            if tuple(sensor) != tuple(sm.sensor_size):
                raise ValueError(
                    f"--source {spec!r}: the dataset's sensor {sensor} differs from the model's {sm.sensor_size}"
                )
            if [str(c) for c in classes] != list(sm.classes):
                raise ValueError(
                    f"--source {spec!r}: the dataset's classes {[str(c) for c in classes]} differ from the "
                    f"model's {list(sm.classes)} ({sm.path}); labels would be scored against other classes"
                )
            recordings += recs
        else:
            recordings += file_recordings([spec], sm.sensor_size)
    return RecordingSource(recordings, sm.sensor_size, chunk_us=chunk_us, name="recordings")


__all__ = [
    "source_from_specs",
    "ByteStreamSource", "Chunk", "Recording", "RecordingSource", "Source", "SourceStats", "UdpSource",
    "file_recordings", "parse_udp", "sample_recordings", "slice_recording",
]

