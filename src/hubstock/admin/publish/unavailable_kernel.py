"""A kernel that cannot run code and says why: what a published kernel becomes when the modules
it loads no longer load on the node (a module removed, its interpreter gone).

``hubstock publish`` copies this file into each generation (``share/hubstock/``); a kernel that
loads modules runs it, with the server build's python (jupyter_client and pyzmq are there), in
place of the real kernel when ``module load`` fails::

    python unavailable_kernel.py LANGUAGE REASON KERNEL-ARGV...

It speaks the Jupyter messaging protocol just enough for JupyterLab: it answers ``kernel_info``,
and every ``execute_request`` gets an error whose text is REASON, so the user reads in the
notebook what happened and whom to ask, instead of a kernel that dies and restarts in a loop.
The connection file is the kernel argv's argument that ends in ``.json``.

It runs outside hubstock (the server build's python): standard library, jupyter_client and zmq.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _replies(reason: str, language: str) -> dict[str, dict]:
    return {
        "kernel_info_request": {
            "status": "ok",
            "protocol_version": "5.3",
            "implementation": "hubstock-unavailable",
            "implementation_version": "1",
            "language_info": {"name": language},
            "banner": reason,
        },
        "is_complete_request": {"status": "complete"},
        "complete_request": {
            "status": "ok",
            "matches": [],
            "cursor_start": 0,
            "cursor_end": 0,
            "metadata": {},
        },
        "inspect_request": {"status": "ok", "found": False, "data": {}, "metadata": {}},
        "history_request": {"status": "ok", "history": []},
        "comm_info_request": {"status": "ok", "comms": {}},
        "interrupt_request": {"status": "ok"},
    }


def main(argv: list[str]) -> int:
    language, reason, rest = argv[1], argv[2], argv[3:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt has nothing to stop here
    print(reason, file=sys.stderr, flush=True)
    conn = next((a for a in rest if a.endswith(".json") and os.path.isfile(a)), None)
    if conn is None:
        return 1
    import zmq
    from jupyter_client.session import Session

    with open(conn) as f:
        cfg = json.load(f)
    session = Session(key=cfg["key"].encode(), signature_scheme=cfg.get("signature_scheme", "hmac-sha256"))
    ctx = zmq.Context()

    def bind(kind: int, port_key: str) -> zmq.Socket:
        sock = ctx.socket(kind)
        if cfg.get("transport", "tcp") == "ipc":
            sock.bind(f"ipc://{cfg['ip']}-{cfg[port_key]}")
        else:
            sock.bind(f"tcp://{cfg['ip']}:{cfg[port_key]}")
        return sock

    shell, control = bind(zmq.ROUTER, "shell_port"), bind(zmq.ROUTER, "control_port")
    bind(zmq.ROUTER, "stdin_port")
    iopub, hb = bind(zmq.PUB, "iopub_port"), bind(zmq.REP, "hb_port")
    poller = zmq.Poller()
    for s in (shell, control, hb):
        poller.register(s, zmq.POLLIN)
    replies = _replies(reason, language)
    count = 0
    while True:
        for sock, _ in poller.poll():
            if sock is hb:
                hb.send(hb.recv())
                continue
            idents, parts = session.feed_identities(sock.recv_multipart(), copy=True)
            msg = session.deserialize(parts)
            kind = msg["header"]["msg_type"]
            reply_type = kind.replace("_request", "_reply")
            session.send(iopub, "status", {"execution_state": "busy"}, parent=msg)
            if kind == "execute_request":
                count += 1
                error = {"ename": "KernelUnavailable", "evalue": reason, "traceback": [reason]}
                session.send(iopub, "error", error, parent=msg)
                session.send(
                    sock,
                    reply_type,
                    {"status": "error", "execution_count": count, **error},
                    parent=msg,
                    ident=idents,
                )
            elif kind == "shutdown_request":
                session.send(sock, reply_type, msg["content"], parent=msg, ident=idents)
                session.send(iopub, "status", {"execution_state": "idle"}, parent=msg)
                return 0
            else:
                content = replies.get(
                    kind,
                    {
                        "status": "error",
                        "ename": "KernelUnavailable",
                        "evalue": reason,
                        "traceback": [reason],
                    },
                )
                session.send(sock, reply_type, content, parent=msg, ident=idents)
            session.send(iopub, "status", {"execution_state": "idle"}, parent=msg)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
