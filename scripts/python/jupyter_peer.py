"""A stock Jupyter client of one kernel WebSocket, for the tests (middleman/tests/jupyter.rs).

It builds and signs nothing of its own: messages are jupyter_client's `Session.msg`, framed
with jupyter_server's own serializers (`serialize_msg_to_ws_v1` and friends, what the server
side of JupyterLab uses), over websocket-client. Each scenario checks what a Jupyter client
relies on and exits non-zero with the reason when something is off; on success it prints one
JSON line with what the Rust side checks further.

    python jupyter_peer.py URL TOKEN SCENARIO [OVERSIZE]

SCENARIO is full, legacy, comms, reconnect, viewer or malformed (OVERSIZE: a frame size over the server's message
limit, to check its 1009).

URL is the channels WebSocket (ws://host:port/jupyter/channels); the token goes in
`Authorization: token ...`, as jupyter_server's gateway client sends it.
"""

import json
import os
import sys
import time
import uuid

import websocket
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

V1 = "v1.kernel.websocket.jupyter.org"
TIMEOUT = 60


def fail(why):
    print(f"jupyter_peer: {why}", file=sys.stderr)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


class Peer:
    """One kernel WebSocket, in either wire form."""

    def __init__(self, url, token, v1=True, session_id=None):
        self.session = Session(key=b"", username="peer")
        self.session_id = session_id or uuid.uuid4().hex
        self.v1 = v1
        self.kernel_session = None
        headers = [f"Authorization: token {token}"]
        sep = "&" if "?" in url else "?"
        self.ws = websocket.create_connection(
            f"{url}{sep}session_id={self.session_id}",
            header=headers,
            subprotocols=[V1] if v1 else None,
            timeout=TIMEOUT,
        )
        chosen = self.ws.getsubprotocol()
        check(chosen == (V1 if v1 else None), f"subprotocol {chosen!r} chosen")
        self.backlog = []

    def send(self, channel, msg_type, content, metadata=None, buffers=None):
        msg = self.session.msg(msg_type, content=content, metadata=metadata or {})
        msg["channel"] = channel
        msg["buffers"] = buffers or []
        if os.environ.get("JUPYTER_PEER_TRACE"):
            print(f"-> {channel} {msg_type}", file=sys.stderr)
        pack = lambda part: json.dumps(part, default=str).encode()  # noqa: E731
        if self.v1:
            parts = [pack(msg["header"]), pack(msg["parent_header"]), pack(msg["metadata"]),
                     pack(msg["content"]), *msg["buffers"]]
            self.ws.send_binary(serialize_msg_to_ws_v1(parts, channel))
        elif msg["buffers"]:
            msg["header"]["date"] = str(msg["header"]["date"])
            self.ws.send_binary(serialize_binary_message(msg))
        else:
            msg.pop("buffers")
            self.ws.send(json.dumps(msg, default=str))
        return msg["header"]["msg_id"]

    def recv(self):
        if self.backlog:
            return self.backlog.pop(0)
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            raise ConnectionError(code)
        if self.v1:
            check(opcode == websocket.ABNF.OPCODE_BINARY, "v1 frames are binary")
            channel, parts = deserialize_msg_from_ws_v1(data)
            msg = {
                "channel": channel,
                "header": json.loads(parts[0]),
                "parent_header": json.loads(parts[1]),
                "metadata": json.loads(parts[2]),
                "content": json.loads(parts[3]),
                "buffers": parts[4:],
            }
        elif opcode == websocket.ABNF.OPCODE_BINARY:
            msg = deserialize_binary_message(data)
        else:
            msg = json.loads(data)
            check(msg.get("msg_id") == msg["header"]["msg_id"], "legacy frames carry msg_id")
            check(msg.get("msg_type") == msg["header"]["msg_type"], "and msg_type")
        if os.environ.get("JUPYTER_PEER_TRACE"):
            print(f"<- {msg['channel']} {msg['header']['msg_type']} {json.dumps(msg['content'])[:120]}",
                  file=sys.stderr)
        header = msg["header"]
        for field in ("msg_id", "msg_type", "session", "username", "version", "date"):
            check(isinstance(header.get(field), str), f"header.{field} in {header}")
        return msg

    def replies(self, msg_id, reply_channel="shell", resumed=False):
        """Everything parented to `msg_id` until both its reply and its idle came (`resumed`:
        on a socket that took over from another, whose `busy` the first socket got)."""
        got, reply, idle, other = [], None, False, []
        deadline = time.time() + TIMEOUT
        while reply is None or not idle:
            check(time.time() < deadline, f"no reply and idle for {msg_id}: {got}")
            msg = self.recv()
            if msg["parent_header"].get("msg_id") != msg_id:
                other.append(msg)  # another request's, for whoever waits for it
                continue
            got.append(msg)
            if msg["channel"] == reply_channel and msg["header"]["msg_type"].endswith("_reply"):
                reply = msg
            if msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        self.backlog = other + self.backlog
        statuses = [m["content"]["execution_state"] for m in got if m["header"]["msg_type"] == "status"]
        check((resumed or statuses[:1] == ["busy"]) and statuses[-1:] == ["idle"],
              f"busy first, idle last: {statuses}")
        return reply, got

    def execute(self, code, **kw):
        metadata = kw.pop("metadata", None)
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": True, "stop_on_error": True}
        content.update(kw)
        msg_id = self.send("shell", "execute_request", content, metadata)
        reply, got = self.replies(msg_id)
        outputs = [m for m in got if m["channel"] == "iopub" and m["header"]["msg_type"] != "status"]
        return reply, outputs

    def kernel_info(self):
        reply, _ = self.replies(self.send("shell", "kernel_info_request", {}))
        check(reply["header"]["msg_type"] == "kernel_info_reply", "kernel_info_reply")
        self.kernel_session = reply["header"]["session"]
        return reply["content"]


def types(outputs):
    return [m["header"]["msg_type"] for m in outputs]


def scenario_full(url, token):
    a = Peer(url, token)
    info = a.kernel_info()
    check(info["status"] == "ok" and info["language_info"]["name"] == "python", f"kernel info {info}")
    check("kernel subshells" not in info.get("supported_features", []), "subshells hidden")
    check(info.get("debugger") is False, "no debugger")

    code = (
        "import sys\nfrom IPython.display import display, HTML\n"
        "print('out')\nprint('err', file=sys.stderr)\n"
        "h = display(HTML('<b>x</b>'), display_id=True)\nh.update(HTML('<i>y</i>'))\n6*7"
    )
    reply, outs = a.execute(code, metadata={"cellId": "cell-a"})
    check(reply["content"]["status"] == "ok", f"reply {reply['content']}")
    count = reply["content"]["execution_count"]
    check(isinstance(count, int) and count >= 1, f"execution_count {count}")
    t = types(outs)
    check(t[0] == "execute_input" and outs[0]["content"]["code"] == code, f"execute_input first: {t}")
    check(outs[0]["content"]["execution_count"] == count, "execute_input has the count")
    text = {m["content"]["name"]: "" for m in outs if m["header"]["msg_type"] == "stream"}
    for m in outs:
        if m["header"]["msg_type"] == "stream":
            text[m["content"]["name"]] += m["content"]["text"]
    check(text == {"stdout": "out\n", "stderr": "err\n"}, f"streams {text}")
    display = next(m for m in outs if m["header"]["msg_type"] == "display_data")
    check(display["content"]["transient"]["display_id"], "display_data with a display id")
    update = next(m for m in outs if m["header"]["msg_type"] == "update_display_data")
    check("<i>y</i>" in update["content"]["data"]["text/html"], "the update's data")
    result = next(m for m in outs if m["header"]["msg_type"] == "execute_result")
    check(result["content"]["data"]["text/plain"] == "42" and result["content"]["execution_count"] == count,
          f"result {result['content']}")
    check(all(m["header"]["session"] == a.kernel_session for m in outs), "one kernel session")

    reply, outs = a.execute("1/0", metadata={"cellId": "cell-b"})
    check(reply["content"]["status"] == "error" and reply["content"]["ename"] == "ZeroDivisionError",
          f"error reply {reply['content']}")
    err = next(m for m in outs if m["header"]["msg_type"] == "error")
    check(err["content"]["ename"] == "ZeroDivisionError" and err["content"]["traceback"], "error output")

    reply, outs = a.execute("from IPython.display import clear_output\nprint(1)\nclear_output(wait=True)\nprint(2)")
    check("clear_output" in types(outs), f"clear_output in {types(outs)}")
    clear = next(m for m in outs if m["header"]["msg_type"] == "clear_output")
    check(clear["content"]["wait"] is True, "clear_output(wait=True)")

    # A silent run: answered, no execute_input, and it stays out of the document.
    reply, outs = a.execute("silent_value = 5", silent=True, store_history=False)
    check(reply["content"]["status"] == "ok" and "execute_input" not in types(outs), f"silent {types(outs)}")

    # input(): the prompt goes to the asker only.
    b = Peer(url, token)
    b.kernel_info()
    msg_id = a.send("shell", "execute_request", {"code": "name = input('name? ')\nname", "silent": False,
                                                 "store_history": True, "user_expressions": {},
                                                 "allow_stdin": True, "stop_on_error": True})
    before = []
    while True:
        msg = a.recv()
        if msg["channel"] == "stdin":
            check(msg["header"]["msg_type"] == "input_request" and msg["content"]["prompt"] == "name? ",
                  f"input_request {msg}")
            check(msg["parent_header"]["msg_id"] == msg_id, "parented to the request")
            break
        before.append(msg)
    a.backlog = before + a.backlog
    stdin_reply = a.session.msg("input_reply", content={"value": "Ada"}, parent=msg["header"])
    a.ws.send_binary(serialize_msg_to_ws_v1(
        [json.dumps(p, default=str).encode() for p in
         (stdin_reply["header"], stdin_reply["parent_header"], stdin_reply["metadata"], stdin_reply["content"])],
        "stdin"))
    reply, got = a.replies(msg_id)
    result = next(m for m in got if m["header"]["msg_type"] == "execute_result")
    check(result["content"]["data"]["text/plain"] == "'Ada'", f"input's value {result['content']}")
    # b saw the run (busy, outputs, idle) under a parent it did not send, and no prompt.
    seen_b = []
    while True:
        msg = b.recv()
        seen_b.append((msg["channel"], msg["header"]["msg_type"]))
        if msg["header"]["msg_type"] == "execute_result" and msg["content"]["data"]["text/plain"] == "'Ada'":
            break
    check(("stdin", "input_request") not in seen_b, f"the other client got no prompt: {seen_b}")

    # Side questions.
    reply, _ = a.replies(a.send("shell", "complete_request", {"code": "import os\nos.pa", "cursor_pos": 15}))
    check("os.path" in reply["content"]["matches"] or "path" in reply["content"]["matches"],
          f"completion {reply['content']}")
    reply, _ = a.replies(a.send("shell", "inspect_request", {"code": "len", "cursor_pos": 3, "detail_level": 0}))
    check(reply["content"]["found"] is True, f"inspection {reply['content']}")
    reply, _ = a.replies(a.send("shell", "is_complete_request", {"code": "for i in range(3):"}))
    check(reply["content"]["status"] == "incomplete", f"is_complete {reply['content']}")
    reply, _ = a.replies(a.send("shell", "history_request", {"output": False, "raw": True,
                                                             "hist_access_type": "tail", "n": 5}))
    check(reply["content"]["status"] == "ok", f"history {reply['content']}")

    # Interrupt (control), then restart (control): the variables are gone, the session changes.
    msg_id = a.send("shell", "execute_request", {"code": "import time\ntime.sleep(60)", "silent": False,
                                                 "store_history": True, "user_expressions": {},
                                                 "allow_stdin": True, "stop_on_error": True})
    # Interrupt once the code runs (a signal before the kernel took the request is lost, and
    # the server then restarts the kernel after its grace period).
    before = []
    while True:
        msg = a.recv()
        before.append(msg)
        if msg["header"]["msg_type"] == "execute_input" and msg["parent_header"].get("msg_id") == msg_id:
            break
    a.backlog = before + a.backlog
    time.sleep(0.2)
    started = time.time()
    interrupt, _ = a.replies(a.send("control", "interrupt_request", {}), reply_channel="control")
    check(interrupt["content"]["status"] == "ok", f"interrupt {interrupt['content']}")
    reply, _ = a.replies(msg_id)
    check(reply["content"]["status"] in ("error", "aborted"), f"interrupted {reply['content']}")
    check(time.time() - started < 30, "the interrupt stopped the sleep")

    old_session = a.kernel_session
    restart, _ = a.replies(a.send("control", "shutdown_request", {"restart": True}), reply_channel="control")
    check(restart["content"]["status"] == "ok" and restart["content"]["restart"] is True, f"restart {restart}")
    deadline = time.time() + TIMEOUT
    while True:
        check(time.time() < deadline, "no new kernel after the restart")
        msg = a.recv()
        if (msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                and msg["header"]["session"] != old_session):
            break
    reply, outs = a.execute("name")
    check(reply["content"]["status"] == "error" and reply["content"]["ename"] == "NameError",
          f"after the restart {reply['content']}")

    # shutdown without restart is refused: the document's pod ends by the REST API.
    down, _ = a.replies(a.send("control", "shutdown_request", {"restart": False}), reply_channel="control")
    check(down["content"]["status"] == "error", f"shutdown {down['content']}")
    print(json.dumps({"count": count, "session": a.session_id}))


def scenario_legacy(url, token):
    a = Peer(url, token, v1=False)
    info = a.kernel_info()
    check(info["language_info"]["name"] == "python", "kernel info")
    reply, outs = a.execute("6*7")
    result = next(m for m in outs if m["header"]["msg_type"] == "execute_result")
    check(result["content"]["data"]["text/plain"] == "42", "legacy result")
    check(all(m["channel"] == "iopub" for m in outs), "channels named")
    # A binary legacy frame (a message with a buffer) is read too.
    msg_id = a.send("shell", "execute_request", {"code": "7*6", "silent": False, "store_history": True,
                                                 "user_expressions": {}, "allow_stdin": True,
                                                 "stop_on_error": True}, buffers=[b"\x00\x01"])
    reply, got = a.replies(msg_id)
    check(reply["content"]["status"] == "ok", f"binary frame {reply['content']}")
    print(json.dumps({"ok": True}))


COMM_SETUP = """
import comm

def _echo_target(c, open_msg):
    @c.on_msg
    def _reply(msg):
        c.send({"echo": msg["content"]["data"], "n": len(msg["buffers"])},
               buffers=[bytes(reversed(bytes(b))) for b in msg["buffers"]])
    c.send({"opened": open_msg["content"]["data"]})

comm.get_comm_manager().register_target("echo", _echo_target)
"""


def scenario_comms(url, token):
    """Comms both ways with binary buffers (what ipywidgets is made of)."""
    a = Peer(url, token)
    a.kernel_info()
    reply, _ = a.execute(COMM_SETUP, silent=True, store_history=False)
    check(reply["content"]["status"] == "ok", f"setup {reply['content']}")
    comm_id = uuid.uuid4().hex

    def expect(msg_type, parent_id, why):
        deadline = time.time() + TIMEOUT
        while True:
            check(time.time() < deadline, f"no {msg_type}: {why}")
            msg = a.recv()
            if msg["header"]["msg_type"] == msg_type and msg["parent_header"].get("msg_id") == parent_id:
                return msg

    opened = a.send("shell", "comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {"hello": 1}})
    msg = expect("comm_msg", opened, "the kernel's answer to comm_open")
    check(msg["content"]["data"] == {"opened": {"hello": 1}}, f"comm_open answer {msg['content']}")
    sent = a.send("shell", "comm_msg", {"comm_id": comm_id, "data": {"x": 2}}, buffers=[b"\x01\x02\x03"])
    msg = expect("comm_msg", sent, "the echo of a comm_msg with a buffer")
    check(msg["content"]["data"] == {"echo": {"x": 2}, "n": 1}, f"echo {msg['content']}")
    check([bytes(b) for b in msg["buffers"]] == [b"\x03\x02\x01"], f"buffers {msg['buffers']}")
    # The kernel's statuses for a comm request come back to it (clients wait for idle).
    msg = expect("status", sent, "idle after the comm_msg")
    # A comm the kernel opens while a cell runs is parented to that cell's request.
    msg_id = a.send("shell", "execute_request", {
        "code": "import comm\nc = comm.create_comm(target_name='client_target', data={'a': 1}, buffers=[b'xyz'])",
        "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": True,
        "stop_on_error": True})
    msg = expect("comm_open", msg_id, "a kernel-side comm_open")
    check(msg["content"]["target_name"] == "client_target" and msg["content"]["data"] == {"a": 1},
          f"kernel comm_open {msg['content']}")
    check([bytes(b) for b in msg["buffers"]] == [b"xyz"], f"kernel comm_open buffers {msg['buffers']}")
    closed = a.send("shell", "comm_close", {"comm_id": comm_id, "data": {}})
    expect("status", closed, "idle after comm_close")
    print(json.dumps({"ok": True}))


def scenario_reconnect(url, token):
    """A client that goes away and comes back with its session_id misses nothing."""
    session = uuid.uuid4().hex
    a = Peer(url, token, session_id=session)
    a.kernel_info()
    msg_id = a.send("shell", "execute_request", {"code": "import time\ntime.sleep(1)\n40+2", "silent": False,
                                                 "store_history": True, "user_expressions": {},
                                                 "allow_stdin": True, "stop_on_error": True})
    while not (a.recv()["header"]["msg_type"] == "status"):
        pass
    a.ws.close()
    time.sleep(1.5)  # the run ends while no socket is open
    b = Peer(url, token, session_id=session)
    reply, got = b.replies(msg_id, resumed=True)
    check(reply["content"]["status"] == "ok", f"the reply after the gap {reply['content']}")
    result = next(m for m in got if m["header"]["msg_type"] == "execute_result")
    check(result["content"]["data"]["text/plain"] == "42", f"the result after the gap {result['content']}")
    # A pending prompt is shown again to the client that comes back.
    msg_id = b.send("shell", "execute_request", {"code": "x = input('again? ')\nx", "silent": False,
                                                 "store_history": True, "user_expressions": {},
                                                 "allow_stdin": True, "stop_on_error": True})
    while b.recv()["channel"] != "stdin":
        pass
    b.ws.close()
    c = Peer(url, token, session_id=session)
    while True:
        msg = c.recv()
        if msg["channel"] == "stdin":
            check(msg["content"]["prompt"] == "again? " and msg["parent_header"]["msg_id"] == msg_id,
                  f"the prompt shown again {msg}")
            break
    answer = c.session.msg("input_reply", content={"value": "back"}, parent=msg["header"])
    c.ws.send_binary(serialize_msg_to_ws_v1(
        [json.dumps(p, default=str).encode() for p in
         (answer["header"], answer["parent_header"], answer["metadata"], answer["content"])], "stdin"))
    reply, got = c.replies(msg_id, resumed=True)
    result = next(m for m in got if m["header"]["msg_type"] == "execute_result")
    check(result["content"]["data"]["text/plain"] == "'back'", f"the answer after reconnecting {result['content']}")
    print(json.dumps({"ok": True}))


def scenario_viewer(url, token):
    a = Peer(url, token)
    a.kernel_info()
    reply, outs = a.execute("1+1")
    check(reply["content"]["status"] == "error" and reply["content"]["ename"] == "NbplatRefused",
          f"a viewer's run {reply['content']}")
    print(json.dumps({"ok": True}))


def expect_close(peer, frame, code, binary=True):
    if binary:
        peer.ws.send_binary(frame)
    else:
        peer.ws.send(frame)
    try:
        while True:
            peer.recv()
    except ConnectionError as closed:
        check(closed.args[0] == code, f"closed with {closed.args[0]}, not {code}")
    except websocket.WebSocketConnectionClosedException:
        fail("closed without a close frame")


def scenario_malformed(url, token, oversize=0):
    expect_close(Peer(url, token), b"\x07\x00\x00\x00\x00\x00\x00\x00garbage", 1007)
    expect_close(Peer(url, token), b"not json", 1007, binary=False)  # text in v1
    expect_close(Peer(url, token, v1=False), "{\"header\": 1}", 1007, binary=False)
    # iopub is not a client's channel.
    peer = Peer(url, token)
    msg = peer.session.msg("status", content={"execution_state": "idle"})
    parts = [json.dumps(p, default=str).encode() for p in
             (msg["header"], msg["parent_header"], msg["metadata"], msg["content"])]
    expect_close(peer, serialize_msg_to_ws_v1(parts, "iopub"), 1007)
    # A header over 4 KiB (it would be copied into every message the request causes).
    peer = Peer(url, token)
    msg = peer.session.msg("kernel_info_request", content={})
    msg["header"]["padding"] = "x" * 5000
    parts = [json.dumps(p, default=str).encode() for p in
             (msg["header"], msg["parent_header"], msg["metadata"], msg["content"])]
    expect_close(peer, serialize_msg_to_ws_v1(parts, "shell"), 1007)
    # Over the message limit (the server's, when the caller gives it).
    if oversize:
        expect_close(Peer(url, token), b"\x00" * oversize, 1009)
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    url, token, scenario = sys.argv[1:4]
    if scenario == "malformed":
        scenario_malformed(url, token, int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    else:
        {"full": scenario_full, "legacy": scenario_legacy, "viewer": scenario_viewer,
         "comms": scenario_comms, "reconnect": scenario_reconnect}[scenario](url, token)
