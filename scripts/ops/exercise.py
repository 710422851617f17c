"""Drives one Middleman document over its WebSocket so that its metrics appear: the cases a
smoke load does not reach on its own (scripts/test-ops.sh).

    exercise.py ALLOCATION_JSON MIDDLEMAN_URL

ALLOCATION_JSON is grpcurl's output of Allocate (websocketUrl, token); the WebSocket may go
through a gateway. MIDDLEMAN_URL is the pod's own base URL (http://ADDR): its metrics, and the
slow client below, which must meet Middleman's cut-off rather than the gateway's (tested in
the gateway's own tests). Every step checks what
it gets back and exits non-zero on anything unexpected. Steps, and the metrics they make appear:

- a cell edited with set_source and run with execute_cell: document updates and saves;
- `execute` of 6*7 and of print(): executions, execution duration, output bytes;
- input() answered with input_reply: input requests;
- output past the plan's max_output_bytes: output truncations;
- Yjs frames (an edit by a real Yjs peer, an awareness query): messages received of kind yjs,
  document updates;
- a reconnect with session and since: resumes, disconnects;
- a connection with a bad token, through the WebSocket URL and straight to Middleman: refusals
  (the gateway's and Middleman's);
- a restart message: kernel restarts (cause requested);
- a client that stops reading while 6 MB of output go out, connected to Middleman directly:
  after 10 s it is cut off (slow clients, action dropped).
"""

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import websocket  # websocket-client, from the platform's Python environment


def fail(message):
    print(f"exercise: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


class Doc:
    def __init__(self, url, token, query=""):
        self.ws = websocket.create_connection(f"{url}?token={token}{query}", timeout=30)
        self.last_seq = 0
        self.binary = []
        self.welcome = self.wait(lambda m: m["type"] == "welcome")

    def recv(self):
        while True:
            frame = self.ws.recv()
            if isinstance(frame, bytes):
                self.binary.append(frame)  # Yjs sync and awareness
                continue
            m = json.loads(frame)
            if "seq" in m:
                self.last_seq = m["seq"]
            return m

    def wait(self, pred, seen=None):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = self.recv()
            if seen is not None:
                seen.append(m)
            if m["type"] == "error":
                fail(f"server error {m}")
            if pred(m):
                return m
        fail("timed out")

    def send(self, **message):
        self.ws.send(json.dumps(message))

    def run(self, code, request_id, on_message=None):
        """`execute`; returns (finished, outputs, events)."""
        self.send(type="execute", code=code, request_id=request_id)
        queued = self.wait(lambda m: m["type"] == "execution_queued" and m.get("request_id") == request_id)
        eid = queued["execution"]["id"]
        events = []

        def done(m):
            if on_message:
                on_message(m)
            return m["type"] == "execution_finished" and m["execution_id"] == eid

        finished = self.wait(done, events)
        outputs = [e["output"] for e in events if e["type"] == "output" and e["execution_id"] == eid]
        return finished, outputs, events


def varuint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varuint(data, i):
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, i


def yjs_edit(doc, cell):
    """An edit made by a real Yjs peer (scripts/node/yjs-peer.cjs, the tests' peer) on the
    server's state from the join (sync step 2), sent as a Yjs update frame."""
    step2 = next((f for f in doc.binary if f[:2] == bytes([0, 1])), None)
    if step2 is None:
        fail("no Yjs sync step 2 after the welcome")
    length, i = read_varuint(step2, 2)
    state = step2[i : i + length]
    peer = os.path.join(os.path.dirname(__file__), "..", "node", "yjs-peer.cjs")
    out = subprocess.run(
        ["node", peer, cell, "\n# edited over Yjs", "ops-yjs-cell"],
        input=base64.b64encode(state),
        capture_output=True,
        check=True,
    )
    update = base64.b64decode(out.stdout)
    doc.ws.send_binary(bytes([0, 2]) + varuint(len(update)) + update)


def stdout(outputs):
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stdout")


def result(outputs):
    for o in outputs:
        if o["output_type"] == "execute_result":
            return o["data"]["text/plain"]
    return None


def metric_present(metrics_url, name):
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        return any(line.startswith(name) for line in r.read().decode().splitlines())


def expect_refused(ws_url, where):
    """Fails unless opening ws_url is answered 401."""
    try:
        websocket.create_connection(ws_url, timeout=10).close()
    except websocket.WebSocketBadStatusException as e:
        if e.status_code != 401:
            fail(f"bad token, {where}: HTTP {e.status_code}")
        return
    fail(f"a bad token was accepted ({where})")


def main():
    alloc = json.load(open(sys.argv[1]))
    middleman = sys.argv[2].rstrip("/")
    url, token = alloc["websocketUrl"], alloc["token"]
    doc = Doc(url, token)
    w = doc.welcome
    if w.get("document") != alloc["documentId"] or not w.get("snapshot"):
        fail(f"unexpected welcome {w}")
    cell = w["snapshot"]["cells"][0]["id"]

    # A slow client: a small receive buffer, and it never reads after its welcome. 100 outputs
    # of 60 kB fill its socket; Middleman cuts it off 10 s later, while the steps below run.
    direct = middleman.replace("http://", "ws://", 1) + "/ws"
    slow = websocket.create_connection(
        f"{direct}?token={token}", timeout=30, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
    )
    slow_since = time.monotonic()
    for i in range(100):
        doc.send(type="execute", code="print('x' * 60000)", request_id=f"flood-{i}")
    for _ in range(100):
        fin = doc.wait(lambda m: m["type"] == "execution_finished")
        if fin["status"] != "ok":
            fail(f"flood: {fin}")
    print("exercise: flood sent to a client that does not read")

    # A cell edited and run: an edit (Yjs update) and a save.
    doc.send(type="set_source", cell_id=cell, source="print('ops check')\n6*7")
    doc.send(type="execute_cell", cell_id=cell, request_id="cell")
    queued = doc.wait(lambda m: m["type"] == "execution_queued" and m.get("request_id") == "cell")
    events = []
    fin = doc.wait(lambda m: m["type"] == "execution_finished" and m["execution_id"] == queued["execution"]["id"], events)
    outs = [e["output"] for e in events if e["type"] == "output"]
    if fin["status"] != "ok" or stdout(outs) != "ops check\n" or result(outs) != "42":
        fail(f"execute_cell: {fin} {outs}")
    print("exercise: execute_cell ok")

    # The console `execute` message.
    fin, outs, _ = doc.run("1+1", "one")
    if fin["status"] != "ok" or result(outs) != "2":
        fail(f"execute 1+1: {fin} {outs}")
    print("exercise: execute ok")

    # input() answered.
    def answer(m):
        if m["type"] == "input_request":
            doc.send(type="input_reply", execution_id=m["execution_id"], value="ops")

    fin, outs, _ = doc.run("name = input('name? ')\nprint('hi', name)", "input", answer)
    if fin["status"] != "ok" or stdout(outs) != "hi ops\n":
        fail(f"input: {fin} {outs}")
    print("exercise: input ok")

    # Output past the cap (the test plan's max_output_bytes is 64 KiB).
    fin, outs, events = doc.run("print('x' * 200000, flush=True)", "big")
    if not any(e["type"] == "output_truncated" for e in events):
        fail(f"no output_truncated: {fin}")
    print("exercise: output truncation ok")

    # Yjs frames: an edit, and a query for awareness states.
    yjs_edit(doc, cell)
    doc.ws.send_binary(bytes([3]))
    doc.send(type="ping", nonce=7)
    doc.wait(lambda m: m["type"] == "pong")

    # Reconnect and resume from the replay buffer.
    session, since = w["session"], doc.last_seq
    doc.ws.close()
    again = Doc(url, token, f"&session={session}&since={since}")
    if again.welcome.get("resumed_from") != since:
        fail(f"not resumed: {again.welcome}")
    print("exercise: resume ok")

    # A refused connection, through the WebSocket URL and straight to Middleman: behind a
    # gateway, the first is refused at the edge and never reaches the pod.
    for where, ws_url in (("through the URL", url), ("directly", direct)):
        expect_refused(f"{ws_url}?token=not-a-token", where)
    print("exercise: refusal ok")

    # A kernel restart, then the kernel works again.
    again.send(type="restart")
    again.wait(lambda m: m["type"] == "kernel_status" and m["state"] == "restarting")
    again.wait(lambda m: m["type"] == "kernel_status" and m["state"] == "idle")
    fin, outs, _ = again.run("'back'", "after-restart")
    if result(outs) != "'back'":
        fail(f"after restart: {fin} {outs}")
    print("exercise: restart ok")
    again.ws.close()

    # The slow client has been cut off by now, or soon.
    while not metric_present(f"{middleman}/metrics", "middleman_slow_clients_total"):
        if time.monotonic() - slow_since > 30:
            fail("the client that did not read was not cut off within 30 s")
        time.sleep(0.5)
    slow.close()
    print(f"exercise: slow client dropped after {time.monotonic() - slow_since:.1f} s")


if __name__ == "__main__":
    main()
