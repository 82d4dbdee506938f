"""The embedded broker: kombu's filesystem transport with atomic message files.

Upstream, `_put` creates `<name>.msg` and then writes it, and `_get` moves a
file out of the queue folder (to the system temp folder: a copy across
filesystems) and then reads it. A reader can therefore see an empty or
half-written message, and the resulting JSONDecodeError kills the worker's
consumer for good (celery/kombu#1551). Here:

- a message is written under a temporary name the readers ignore, flushed,
  and renamed into place, so a `.msg` file is always complete;
- a reader claims a message by renaming it into the processed folder (same
  filesystem: atomic, exactly one reader wins) before reading it;
- exchange tables (`control/*.exchange`, rewritten on every queue bind) are
  updated under a separate lock file and replaced by rename, so a reader never
  sees one empty or half-written;
- a message that still does not decode is set aside in `bad/`, logged and
  skipped: one bad file never stops the worker.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from queue import Empty

from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

log = logging.getLogger("edgefleet.broker")

TMP_PREFIX = ".tmp-"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{round(filesystem.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = Path(self.data_folder_out) / name
        tmp = final.with_name(TMP_PREFIX + name + ".part")
        try:
            with open(tmp, "wb") as fh:
                fh.write(dumps(payload).encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise filesystem.ChannelError(f"Cannot add file {final} to directory") from exc

    def _get(self, queue):
        folder = Path(self.data_folder_in)
        for name in sorted(_messages(folder, queue)):
            claimed = Path(self.processed_folder) / f"{os.getpid()}-{uuid.uuid4().hex}.{name}"
            try:
                (folder / name).rename(claimed)
            except OSError:
                continue  # another reader claimed it first
            try:
                message = loads(claimed.read_bytes().decode("utf-8"))
            except (OSError, ValueError) as exc:
                self._set_aside(claimed, name, exc)
                continue
            if not self.store_processed:
                claimed.unlink(missing_ok=True)
            return message
        raise Empty()

    # --- exchange tables ---------------------------------------------------------------
    def get_table(self, exchange):
        return [filesystem.exchange_queue_t(*q) for q in self._read_table(exchange)]

    def _read_table(self, exchange) -> list:
        try:
            return loads(self._exchange_file(exchange).read_bytes().decode("utf-8") or "[]")
        except FileNotFoundError:
            return []
        except ValueError:
            log.error("broker: exchange table %s unreadable; treated as empty", exchange)
            return []

    @contextmanager
    def _table_lock(self, exchange):
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        with open(file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield file
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write_table(self, file: Path, queues: list) -> None:
        tmp = file.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
        tmp.write_bytes(dumps([list(q) for q in queues]).encode("utf-8"))
        tmp.replace(file)

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_lock(exchange) as file:
            queues = self.get_table(exchange)
            if entry not in queues:
                self._write_table(file, [entry, *queues])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        filesystem.virtual.Channel._delete(
            self, queue, exchange, routing_key, pattern, *args, **kwargs
        )
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_lock(exchange) as file:
            queues = self.get_table(exchange)
            if entry in queues:
                self._write_table(file, [q for q in queues if q != entry])

    def _set_aside(self, claimed: Path, name: str, exc: Exception) -> None:
        bad = Path(self.processed_folder).parent / "bad"
        bad.mkdir(exist_ok=True)
        try:
            claimed.replace(bad / name)
        except OSError:
            claimed.unlink(missing_ok=True)
        log.error("broker: message %s unreadable (%s); set aside in %s", name, exc, bad)

    def _size(self, queue):
        return len(_messages(Path(self.data_folder_in), queue))


class Transport(filesystem.Transport):
    Channel = Channel
    global_state = filesystem.virtual.BrokerState()


def _messages(folder: Path, queue: str) -> list[str]:
    """Complete message files of one queue (temporary `.tmp-…` names never match)."""
    try:
        return [p.name for p in folder.iterdir() if p.name.partition(".")[2] == queue + ".msg"]
    except FileNotFoundError:
        return []


def queue_depth(queue: str, folder: str | Path) -> int:
    """Messages waiting in one queue of the embedded broker (no connection needed)."""
    return len(_messages(Path(folder), queue))
