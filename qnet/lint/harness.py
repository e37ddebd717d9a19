"""The linter's end of the harness protocol (spec/harness.md): one child process, JSON lines.

``Harness(argv)`` starts the implementation's harness, sends ``hello`` and keeps
the list of operations it offers. ``call(request)`` writes one request line and
waits for the matching response line; it raises :class:`HarnessFault` when the
harness crashed, answered with something that is not a response to this
request, or did not answer within the timeout. After a fault the process is
killed and the next ``call`` starts a fresh one, so one bad vector cannot hide
the results of the others.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from dataclasses import dataclass
from typing import IO, Any, Final, Literal

PROTOCOL: Final = "qnet-harness-v1"

FaultKind = Literal["crash", "garbage", "timeout", "start"]


class HarnessFault(Exception):
    """The harness broke the protocol: ``kind`` says how, ``detail`` what was seen."""

    def __init__(self, kind: FaultKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: FaultKind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Hello:
    name: str
    version: str
    ops: frozenset[str]


_EOF: Final = object()


class Harness:
    """A running harness. Use as a context manager; ``close`` ends the process."""

    def __init__(self, argv: list[str], *, timeout: float = 30.0) -> None:
        self.argv = argv
        self.timeout = timeout
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[object] = queue.Queue()
        self._stderr: list[str] = []
        self._next_id = 1
        self.hello = self._start()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> Hello:
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
            )
        except OSError as exc:
            raise HarnessFault("start", f"cannot run {self.argv[0]!r}: {exc}") from exc
        self._proc = proc
        self._lines = queue.Queue()
        assert proc.stdout is not None and proc.stderr is not None
        threading.Thread(target=_pump, args=(proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=_drain, args=(proc.stderr, self._stderr), daemon=True).start()
        try:
            resp = self._exchange({"op": "hello", "protocol": PROTOCOL})
        except HarnessFault as exc:
            self.close()
            raise HarnessFault("start", f"no answer to hello ({exc})") from exc
        if resp.get("protocol") != PROTOCOL or not isinstance(resp.get("ops"), list):
            self.close()
            raise HarnessFault("start", f"hello answer does not speak {PROTOCOL}: {resp!r:.120}")
        return Hello(
            name=str(resp.get("name", "?")),
            version=str(resp.get("version", "?")),
            ops=frozenset(str(op) for op in resp["ops"]),
        )

    def offers(self, op: str) -> bool:
        return op in self.hello.ops

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request (``op`` and its fields) and return the response object."""
        if self._proc is None:
            self.hello = self._start()
        try:
            return self._exchange(request)
        except HarnessFault:
            self.close()
            raise

    def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        rid = self._next_id
        self._next_id += 1
        try:
            proc.stdin.write(json.dumps({"id": rid, **request}) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise HarnessFault("crash", f"stdin closed ({self._exit_note()})") from exc
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            raise HarnessFault("timeout", f"no answer within {self.timeout:g} s") from None
        if line is _EOF:
            raise HarnessFault("crash", f"stdout closed ({self._exit_note()})")
        assert isinstance(line, str)
        try:
            resp = json.loads(line)
        except ValueError:
            raise HarnessFault("garbage", f"not JSON: {line.strip()[:80]!r}") from None
        if not isinstance(resp, dict):
            raise HarnessFault("garbage", f"not a JSON object: {line.strip()[:80]!r}")
        if resp.get("id") != rid:
            raise HarnessFault("garbage", f"answer id {resp.get('id')!r}, request id {rid}")
        return resp

    def _exit_note(self) -> str:
        proc = self._proc
        if proc is None:
            return "not running"
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "still running"
        tail = self._stderr[-1].strip() if self._stderr else ""
        return f"exit code {code}" + (f", stderr: {tail[:120]}" if tail else "")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pump(stream: IO[str], out: queue.Queue[object]) -> None:
    for line in stream:
        out.put(line)
    out.put(_EOF)


def _drain(stream: IO[str], out: list[str]) -> None:
    for line in stream:
        out.append(line)
        del out[:-20]
