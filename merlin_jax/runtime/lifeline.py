"""A dead process ends the whole multi-process run within seconds, with exit status 75.

JAX notices a dead process only by its missed heartbeats (`heartbeat_timeout_seconds` of
`jax.distributed.initialize`, 100 s) and then aborts the others with a fatal error (not a
status a scheduler reads as "restart me"); until then a survivor blocked in a collective or
in orbax's save barrier just waits. Measured here: kill -9 of one of two processes, the other
hung ~98 s.

The lifeline: every process i > 0 holds one TCP connection to process 0 (whose address goes
through JAX's key-value store). When a process dies for any reason (kill -9, OOM killer, a
crash) the kernel closes its sockets and the other end reads EOF at once. A process that ends
its run in order (done, preempted, bad input, NaN: `disarm()`) first says goodbye, so its EOF
means nothing. EOF without goodbye: print one line and `os._exit(75)` (EX_TEMPFAIL, what
main.py returns after a preemption: launch/slurm_job.sh requeues the job, launch/tpu_pod.sh's
restart loop reruns it). Process 0 exiting closes every connection, so a dead process i
brings down all of them. `os._exit` skips orbax's and JAX's exit handlers (they would wait
for the dead process); a half-written checkpoint is a *.orbax-checkpoint-tmp-* directory that
orbax never reads, so the last committed checkpoint is what the rerun resumes from.
A vanished host (no FIN) is noticed by TCP keepalive within ~20 s.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from absl import logging

EXIT_CODE = 75                 # EX_TEMPFAIL: the same status as a preemption
KEY = "merlin_jax/lifeline"    # in JAX's coordination key-value store
_BYE = b"B"
_lock = threading.Lock()
_socks: list[socket.socket] = []
_armed = threading.Event()


def _keepalive(s: socket.socket) -> None:
  s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
  for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
    if hasattr(socket, name):
      s.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _peer_gone(who: str) -> None:
  if not _armed.is_set():     # this process is ending in order itself
    return
  print(f"merlin_jax: {who} of this multi-process run stopped without ending its run "
        f"(killed or crashed): stopping this process too with status {EXIT_CODE} so that "
        "the job is restarted; the rerun resumes from the last checkpoint", file=sys.stderr,
        flush=True)
  os._exit(EXIT_CODE)   # noqa: SLF001 - exit handlers would wait for the dead process


def _watch(conn: socket.socket, who: str) -> None:
  """Reads until EOF; EOF (or a reset) without goodbye = the peer died."""
  while True:
    try:
      data = conn.recv(64)
    except OSError:
      data = b""
    if _BYE in data:
      return
    if not data:
      _peer_gone(who)
      return


def _serve(server: socket.socket, num_processes: int) -> None:
  for _ in range(num_processes - 1):
    try:
      conn, _ = server.accept()
      peer = conn.recv(16).decode(errors="replace").strip() or "?"
    except OSError:
      return
    _keepalive(conn)
    with _lock:
      _socks.append(conn)
    threading.Thread(target=_watch, args=(conn, f"process {peer}"), daemon=True,
                     name=f"lifeline-{peer}").start()
  server.close()


def arm(client, process_id: int, num_processes: int, host: str,
        timeout_s: int = 300) -> None:
  """Starts watching the other processes (no-op for a single process). `client` is JAX's
  DistributedRuntimeClient, `host` the coordinator's host (reachable by every process)."""
  if num_processes <= 1 or _armed.is_set():
    return
  if process_id == 0:
    server = socket.create_server(("", 0), family=socket.AF_INET, backlog=num_processes)
    client.key_value_set(KEY, f"{host}:{server.getsockname()[1]}")
    threading.Thread(target=_serve, args=(server, num_processes), daemon=True,
                     name="lifeline-server").start()
  else:
    address = client.blocking_key_value_get(KEY, timeout_s * 1000)
    h, port = address.rsplit(":", 1)
    conn = socket.create_connection((h, int(port)), timeout=timeout_s)
    conn.settimeout(None)
    _keepalive(conn)
    conn.sendall(f"{process_id}\n".encode())
    with _lock:
      _socks.append(conn)
    threading.Thread(target=_watch, args=(conn, "process 0"), daemon=True,
                     name="lifeline-0").start()
  _armed.set()
  logging.info("lifeline armed: a dead process ends the others with status %d", EXIT_CODE)


def arm_from_jax(timeout_s: int = 300) -> None:
  """`arm` for the run `jax.distributed.initialize` joined (main.py calls it)."""
  import jax
  from jax._src import distributed as jax_distributed   # the client; no public accessor
  state = jax_distributed.global_state
  if jax.process_count() <= 1 or state.client is None:
    return
  host = state.coordinator_address.rsplit(":", 1)[0].strip("[]")
  arm(state.client, jax.process_index(), jax.process_count(), host, timeout_s)


def disarm() -> None:
  """This process ends its run in order: say goodbye, stop watching."""
  if not _armed.is_set():
    return
  _armed.clear()
  with _lock:
    for s in _socks:
      try:
        s.sendall(_BYE)
        s.close()
      except OSError:
        pass
    _socks.clear()
