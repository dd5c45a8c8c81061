"""llama.cpp, the logits reference, in a child process: a crash in it fails one test, not the session.

llama-cpp-python builds llama.cpp for the machine it is installed on, and some builds crash on some
CPUs (AMX: see pimoe/llamaref.py). A native crash kills its process with a signal; in-process that is
the whole pytest run. So every test process (each xdist worker) gets one long-lived child that loads
models through pimoe.llamaref.Reference (extra buffer types off) and answers logits requests over a
pipe. If the child dies, the calling test fails with a message naming the signal, the last lines the
child wrote to stderr, and how to rebuild llama-cpp-python; the next request starts a fresh child.

    ref = LlamaRef(path)        # same API as before: .logits(tokens), .decode(tokens), .close()
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = float(os.environ.get("PIMOE_LLAMA_REF_TIMEOUT", "900"))


class ReferenceCrashed(AssertionError):
    """The llama.cpp child died (signal or exit) or stopped answering."""


def _send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)) + data)
    f.flush()


def _read_exact(fd: int, n: int, deadline: float | None = None) -> bytes:
    import time

    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


class _Child:
    """The server process and its pipes."""

    def __init__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="pimoe-llama-ref-", suffix=".log", delete=False)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, cwd=str(ROOT))

    def call(self, *request):
        import time

        try:
            _send(self.proc.stdin, request)
            fd = self.proc.stdout.fileno()
            deadline = time.monotonic() + TIMEOUT_S
            n = struct.unpack("<Q", _read_exact(fd, 8, deadline))[0]
            ok, value = pickle.loads(_read_exact(fd, n, deadline))
        except TimeoutError:
            self.proc.kill()
            self.proc.wait()
            raise ReferenceCrashed(self._death(f"did not answer {request[0]!r} within {TIMEOUT_S:.0f} s "
                                               f"(killed)")) from None
        except (EOFError, BrokenPipeError, OSError):
            self.proc.wait()
            from pimoe.llamaref import describe_exit

            raise ReferenceCrashed(self._death(describe_exit(self.proc.returncode))) from None
        if not ok:
            raise RuntimeError(f"llama.cpp reference: {value}")
        return value

    def _death(self, how: str) -> str:
        from pimoe.llamaref import REBUILD_ADVICE

        tail = Path(self.log.name).read_text(errors="replace").strip().splitlines()[-12:]
        return (f"the llama.cpp reference process {how} while serving this test.\n{REBUILD_ADVICE}\n"
                + ("its last stderr lines:\n  " + "\n  ".join(tail) if tail else "it wrote nothing to stderr"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            try:
                _send(self.proc.stdin, ("quit",))
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


_child: _Child | None = None


def _get_child() -> _Child:
    global _child
    if _child is None or not _child.alive():
        if _child is not None:
            _child.close()
        _child = _Child()
    return _child


def shutdown() -> None:
    global _child
    if _child is not None:
        _child.close()
        _child = None


class LlamaRef:
    """llama.cpp for one model file, set up for exact comparison (F32 KV cache, no flash attention,
    extra buffer types off), served by this test process's reference child."""

    def __init__(self, path, n_ctx: int = 128):
        self.path, self.n_ctx = str(path), n_ctx
        self._handle = None
        self._open()

    def _open(self):
        self._child = _get_child()
        self._handle = self._child.call("open", self.path, self.n_ctx)

    def _call(self, method, *args):
        if self._child is not _child or not self._child.alive():
            self._open()            # the child was replaced after a crash: load the model again
        return self._child.call(method, self._handle, *args)

    def logits(self, tokens):
        """Whole sequence in one batch from an empty cache -> f32 [T, vocab]."""
        return self._call("logits", [int(t) for t in tokens])

    def decode(self, tokens):
        """One token per llama_decode call (incremental decode through the KV cache) -> f32 [T, vocab]."""
        return self._call("decode", [int(t) for t in tokens])

    def info(self) -> dict:
        """How the child loaded the model: {'use_extra_bufts', 'n_vocab', 'n_embd', 'pid'}."""
        return self._call("info")

    def close(self):
        if self._handle is not None and self._child is _child and self._child.alive():
            self._child.call("close", self._handle)
        self._handle = None


def serve() -> int:
    """The child: requests (method, handle?, args...) on stdin, (ok, value) replies on the original stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)          # anything llama.cpp prints to stdout goes to the log, not into the protocol
    inp = sys.stdin.buffer
    from pimoe.llamaref import Reference

    refs: dict[int, Reference] = {}
    while True:
        head = inp.read(8)
        if len(head) < 8:
            return 0
        req = pickle.loads(inp.read(struct.unpack("<Q", head)[0]))
        method = req[0]
        if method == "quit":
            return 0
        try:
            if method == "open":
                ref = Reference(req[1], n_ctx=req[2])
                refs[id(ref)] = ref
                value = id(ref)
            elif method == "crash":                      # for the test of this module
                import signal

                os.kill(os.getpid(), getattr(signal, req[1]))
                value = None
            else:
                ref = refs[req[1]]
                if method == "close":
                    refs.pop(req[1]).close()
                    value = None
                elif method == "info":
                    value = {"use_extra_bufts": bool(ref.params.use_extra_bufts), "n_vocab": ref.n_vocab,
                             "n_embd": ref.n_embd,
                             "pid": os.getpid()}
                else:
                    value = getattr(ref, method)(*req[2:])
            reply = (True, value)
        except Exception as exc:                         # a Python-level failure: the test sees it
            reply = (False, f"{type(exc).__name__}: {exc}")
        _send(out, reply)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        sys.exit(serve())
    sys.exit("usage: python tests/llama_ref.py --serve  (started by the tests)")
