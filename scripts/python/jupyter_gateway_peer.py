"""JupyterLab in gateway mode, against a kernel gateway: the test of our Jupyter Server API (§2.1).

It starts a real jupyter_server with `--gateway-url=GATEWAY_URL` (jupyter_server's own gateway
client, what `jupyter lab --gateway-url=...` runs) and drives that local server as JupyterLab's
browser does: REST with `Authorization: token <local>`, then the kernel WebSocket, which the local
server relays to the gateway. So every kernel request here reaches GATEWAY_URL the way a real lab
sends it. Messages are jupyter_client's `Session.msg`, framed as in jupyter_peer.py; legacy frames
are JupyterLab's JSON (no top-level msg_id / msg_type, `buffers: []`), msg_ids are UUIDs.

The lab's relay answers the v1 subprotocol offer with none, so both sockets end up legacy, and
it talks legacy JSON to the gateway with no subprotocol (GatewayWebSocketConnection).

    python jupyter_gateway_peer.py GATEWAY_URL GATEWAY_TOKEN KERNEL_NAME

Each step is checked and timed out after 60 s; a failure says why on stderr, prints the local
server's log and exits 1. On success it prints one JSON line: {"ok": true, "kernel_id", "steps"}.
The local server is always stopped at the end. Set JUPYTER_PEER_TRACE=1 to trace the messages.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import websocket
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

V1 = "v1.kernel.websocket.jupyter.org"
TIMEOUT = 60  # per step
TRACE = bool(os.environ.get("JUPYTER_PEER_TRACE"))


class Failure(Exception):
    pass


def check(cond, why):
    if not cond:
        raise Failure(why)


def trace(line):
    if TRACE:
        print(line, file=sys.stderr)


def dumps(part):
    return json.dumps(part, default=json_default)


def die_with_parent():
    """In the child: SIGTERM when this driver dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


class Lab:
    """The local jupyter_server in gateway mode, as a subprocess."""

    def __init__(self, gateway_url, gateway_token):
        self.token = secrets.token_hex(16)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="jupyter-gateway-peer-")
        root = os.path.join(self.dir, "root")
        os.mkdir(root)
        self.log_path = os.path.join(self.dir, "server.log")
        self.base = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable, "-m", "jupyter_server",
            f"--gateway-url={gateway_url}",
            f"--GatewayClient.auth_token={gateway_token}",
            "--GatewayClient.request_timeout=45",
            "--GatewayClient.connect_timeout=45",
            f"--ServerApp.token={self.token}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.log_level=DEBUG",
            "--ServerApp.allow_root=True",  # containers and CI run as root
        ]
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=root,
                                     preexec_fn=die_with_parent)

    def wait_ready(self):
        deadline = time.time() + TIMEOUT
        while True:
            check(self.proc.poll() is None, f"the local jupyter_server exited with {self.proc.returncode}")
            try:
                status, body = self.http("GET", "/api")
                if status == 200 and "version" in body:
                    return body["version"]
            except (OSError, urllib.error.URLError):
                pass
            check(time.time() < deadline, "the local jupyter_server did not answer GET /api")
            time.sleep(0.2)

    def http(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        trace(f"{method} {path} -> {status} {raw[:200]!r}")
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


class Peer:
    """One kernel WebSocket to the lab, as JupyterLab's KernelConnection opens it.

    The session id is the client id, in the URL and in every header. With `offer_v1`, the v1
    subprotocol is offered as the browser does; the server may pick none, and then (as in
    JupyterLab) the legacy JSON wire is used. websocket-client's `subprotocols=` would refuse
    such an answer, so the offer goes in the header by hand.
    """

    def __init__(self, lab, kernel_id, offer_v1, session_id=None, token_in_query=False):
        self.session_id = session_id or str(uuid.uuid4())
        self.session = Session(key=b"", username="gateway-peer", session=self.session_id)
        url = f"ws://127.0.0.1:{lab.port}/api/kernels/{kernel_id}/channels?session_id={self.session_id}"
        headers = []
        if token_in_query:
            url += f"&token={lab.token}"
        else:
            headers.append(f"Authorization: token {lab.token}")
        if offer_v1:
            headers.append(f"Sec-WebSocket-Protocol: {V1}")
        try:
            self.ws = websocket.create_connection(url, header=headers, timeout=TIMEOUT)
        except websocket.WebSocketBadStatusException as err:
            raise Failure(f"WebSocket handshake refused: {err.status_code} {err}") from None
        chosen = (self.ws.getheaders() or {}).get("sec-websocket-protocol")
        check(chosen in (None, V1) and (offer_v1 or chosen is None), f"subprotocol {chosen!r} chosen")
        self.protocol = chosen or "legacy"
        self.v1 = chosen == V1
        self.backlog = []
        self.kernel_session = None

    def close(self):
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass

    def send_msg(self, channel, msg):
        trace(f"-> {channel} {msg['header']['msg_type']}")
        if self.v1:
            parts = [dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
            self.ws.send_binary(serialize_msg_to_ws_v1(parts, channel))
        else:
            # JupyterLab's legacy frame: JSON.stringify of its message, which has no top-level
            # msg_id / msg_type (those are jupyter_client's) and an empty `buffers`.
            keys = ("header", "parent_header", "metadata", "content")
            self.ws.send(dumps({**{k: msg[k] for k in keys}, "channel": channel, "buffers": []}))
        return msg["header"]["msg_id"]

    def send(self, channel, msg_type, content, metadata=None, parent=None):
        header = self.session.msg_header(msg_type)
        header["msg_id"] = str(uuid.uuid4())  # as JupyterLab's
        return self.send_msg(channel, self.session.msg(msg_type, content=content, parent=parent, header=header,
                                                       metadata=metadata or {}))

    def recv(self):
        if self.backlog:
            return self.backlog.pop(0)
        try:
            opcode, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            raise Failure("nothing received on the kernel WebSocket for 60 s") from None
        except websocket.WebSocketConnectionClosedException:
            raise Failure("the kernel WebSocket closed without a close frame") from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            raise Failure(f"the kernel WebSocket closed with {code} {data[2:]!r}")
        if self.v1:
            check(opcode == websocket.ABNF.OPCODE_BINARY, "v1 frames are binary")
            channel, parts = deserialize_msg_from_ws_v1(data)
            msg = {"channel": channel, "header": json.loads(parts[0]), "parent_header": json.loads(parts[1]),
                   "metadata": json.loads(parts[2]), "content": json.loads(parts[3]), "buffers": parts[4:]}
        elif opcode == websocket.ABNF.OPCODE_BINARY:
            msg = deserialize_binary_message(data)
        else:
            msg = json.loads(data)
        header = msg.get("header") or {}
        for field in ("msg_id", "msg_type", "session", "username", "version", "date"):
            check(isinstance(header.get(field), str), f"header.{field} missing in {str(msg)[:300]}")
        check(msg.get("channel") in ("shell", "iopub", "stdin", "control"), f"channel of {str(msg)[:300]}")
        trace(f"<- {msg['channel']} {header['msg_type']} {json.dumps(msg['content'])[:120]}")
        return msg

    def replies(self, msg_id, reply_channel="shell", until=None, got=None):
        """Everything parented to `msg_id` until both its reply and its IOPub idle came.

        With `until`, it returns (None, got) at the first message `until` accepts; pass that
        `got` back to go on waiting for the reply.
        """
        got, reply, idle, other = list(got or []), None, False, []
        deadline = time.time() + TIMEOUT
        while reply is None or not idle:
            check(time.time() < deadline,
                  f"no reply and idle for {msg_id}: {[m['header']['msg_type'] for m in got]}")
            msg = self.recv()
            if msg["parent_header"].get("msg_id") != msg_id:
                other.append(msg)  # another request's, or the kernel's own
                continue
            got.append(msg)
            if until and until(msg):
                self.backlog = other + self.backlog
                return None, got
            if msg["channel"] == reply_channel and msg["header"]["msg_type"].endswith("_reply"):
                reply = msg
            if msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        self.backlog = other + self.backlog
        statuses = [m["content"]["execution_state"] for m in got if m["header"]["msg_type"] == "status"]
        check(statuses[:1] == ["busy"] and statuses[-1:] == ["idle"], f"busy first, idle last: {statuses}")
        return reply, got

    def execute_request(self, code, **kw):
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": True, "stop_on_error": True}
        content.update(kw)
        # JupyterLab's notebook sends the cell's id (and these two) in the metadata.
        metadata = {"cellId": str(uuid.uuid4()), "deletedCells": [], "recordTiming": False}
        return self.send("shell", "execute_request", content, metadata)

    def execute(self, code, **kw):
        reply, got = self.replies(self.execute_request(code, **kw))
        check(reply["header"]["msg_type"] == "execute_reply", f"execute_reply, not {reply['header']['msg_type']}")
        outputs = [m for m in got if m["channel"] == "iopub" and m["header"]["msg_type"] != "status"]
        return reply["content"], outputs

    def kernel_info(self):
        reply, _ = self.replies(self.send("shell", "kernel_info_request", {}))
        check(reply["header"]["msg_type"] == "kernel_info_reply", "kernel_info_reply")
        self.kernel_session = reply["header"]["session"]
        return reply["content"]


def types(outputs):
    return [m["header"]["msg_type"] for m in outputs]


def first(outputs, msg_type):
    found = [m for m in outputs if m["header"]["msg_type"] == msg_type]
    check(found, f"no {msg_type} in {types(outputs)}")
    return found[0]["content"]


def run_suite(peer, info):
    """kernel_info, then the outputs JupyterLab renders."""
    kinfo = peer.kernel_info()
    check(kinfo.get("status") == "ok" and kinfo.get("language_info", {}).get("name") == "python",
          f"kernel_info_reply {kinfo}")
    check(kinfo.get("protocol_version"), "kernel_info_reply.protocol_version")

    reply, outs = peer.execute("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n6*7")
    check(reply["status"] == "ok", f"execute_reply {reply}")
    count = reply["execution_count"]
    check(isinstance(count, int) and count >= 1, f"execution_count {count}")
    check(types(outs)[:1] == ["execute_input"], f"execute_input first: {types(outs)}")
    streams = {}
    for m in outs:
        if m["header"]["msg_type"] == "stream":
            streams[m["content"]["name"]] = streams.get(m["content"]["name"], "") + m["content"]["text"]
    check(streams == {"stdout": "hello\n", "stderr": "oops\n"}, f"streams {streams}")
    result = first(outs, "execute_result")
    check(result["data"].get("text/plain") == "42" and result["execution_count"] == count, f"result {result}")

    reply, outs = peer.execute("from IPython.display import display, HTML\ndisplay(HTML('<b>bold</b>'))")
    check(reply["status"] == "ok", f"display's reply {reply}")
    display = first(outs, "display_data")
    check(display["data"].get("text/html") == "<b>bold</b>" and "metadata" in display, f"display_data {display}")

    reply, outs = peer.execute("1/0")
    check(reply["status"] == "error" and reply.get("ename") == "ZeroDivisionError", f"error reply {reply}")
    err = first(outs, "error")
    check(err["ename"] == "ZeroDivisionError" and err["traceback"], f"error output {err}")
    info["protocol"] = peer.protocol
    info["execution_count"] = count


def main(gateway_url, gateway_token, kernel_name):
    steps = []
    state = {"lab": None, "kernel_id": None, "peers": []}
    current = {"name": "start"}

    def on_alarm(*_):
        raise Failure(f"step {current['name']!r} took more than {TIMEOUT} s")

    signal.signal(signal.SIGALRM, on_alarm)
    # A harness's SIGTERM still runs the `finally` below, which stops the local server.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, _: sys.exit(128 + signum))

    def step(name, fn):
        current["name"] = name
        info = {"step": name}
        started = time.time()
        signal.alarm(TIMEOUT)
        try:
            fn(info)
        except Failure as failure:
            raise Failure(f"{name}: {failure}") from None
        except Exception as exc:  # noqa: BLE001
            raise Failure(f"{name}: {type(exc).__name__}: {exc}") from exc
        finally:
            signal.alarm(0)
        info["seconds"] = round(time.time() - started, 2)
        steps.append(info)
        print(f"jupyter_gateway_peer: ok {name} {json.dumps({k: v for k, v in info.items() if k != 'step'})}",
              file=sys.stderr)

    def lab():
        return state["lab"]

    def start(info):
        state["lab"] = Lab(gateway_url, gateway_token)
        info["version"] = lab().wait_ready()
        info["port"] = lab().port

    def kernelspecs(info):
        status, body = lab().http("GET", "/api/kernelspecs")
        check(status == 200, f"GET /api/kernelspecs: {status} {body}")
        specs = body.get("kernelspecs") or {}
        check(kernel_name in specs, f"{kernel_name!r} not in the lab's kernelspecs {sorted(specs)}")
        spec = specs[kernel_name]
        check(spec.get("name") == kernel_name and isinstance(spec.get("spec", {}).get("argv"), list)
              and spec["spec"].get("display_name") and spec["spec"].get("language")
              and isinstance(spec.get("resources"), dict), f"kernelspec {spec}")
        info["default"] = body.get("default")
        info["names"] = sorted(specs)
        info["resources"] = spec["resources"]
        status, body = lab().http("GET", f"/api/kernelspecs/{kernel_name}")
        check(status == 200 and body.get("name") == kernel_name, f"GET /api/kernelspecs/{kernel_name}: {status} {body}")
        # The launcher shows the logos: a listed resource must be served (through the lab).
        for name, path in sorted(info["resources"].items()):
            status, body = lab().http("GET", path)
            check(status == 200 and body, f"the kernelspec's {name} at {path}: {status}")

    def start_kernel(info):
        status, body = lab().http("POST", "/api/kernels", {"name": kernel_name})
        check(status == 201, f"POST /api/kernels: {status} {body}")
        check(isinstance(body, dict) and isinstance(body.get("id"), str), f"kernel model {body}")
        check(body.get("name") == kernel_name, f"the kernel's name {body.get('name')!r}")
        state["kernel_id"] = kid = body["id"]
        info["kernel_id"] = kid
        info["model"] = body
        status, body = lab().http("GET", "/api/kernels")
        check(status == 200 and kid in [k.get("id") for k in body], f"GET /api/kernels: {status} {body}")
        status, body = lab().http("GET", f"/api/kernels/{kid}")
        check(status == 200 and body.get("id") == kid and body.get("name") == kernel_name,
              f"GET /api/kernels/{kid}: {status} {body}")
        for field in ("last_activity", "execution_state", "connections"):
            check(field in body, f"kernel model without {field}: {body}")

    def ws_v1(info):
        peer = Peer(lab(), state["kernel_id"], offer_v1=True)
        state["peers"].append(peer)
        state["a"] = peer
        info["offered"] = V1
        run_suite(peer, info)

    def ws_legacy(info):
        peer = Peer(lab(), state["kernel_id"], offer_v1=False, token_in_query=True)
        state["peers"].append(peer)
        info["offered"] = None
        run_suite(peer, info)
        peer.close()

    def stdin(info):
        peer = state["a"]
        msg_id = peer.execute_request("x = input('name? ')", allow_stdin=True)
        _, got = peer.replies(msg_id, until=lambda m: m["channel"] == "stdin")
        request = got[-1]
        check(request["header"]["msg_type"] == "input_request", f"stdin {request['header']['msg_type']}")
        check(request["content"]["prompt"] == "name? ", f"the prompt {request['content']}")
        peer.send("stdin", "input_reply", {"status": "ok", "value": "Ada"}, parent=request["header"])
        reply, _ = peer.replies(msg_id, got=got)
        check(reply["content"]["status"] == "ok", f"the input's execute_reply {reply['content']}")
        reply, outs = peer.execute("x")
        result = first(outs, "execute_result")
        check(result["data"].get("text/plain") == "'Ada'", f"x is {result['data']}")

    def interrupt(info):
        peer = state["a"]
        msg_id = peer.execute_request("import time; time.sleep(60)")
        _, got = peer.replies(msg_id, until=lambda m: m["header"]["msg_type"] == "execute_input")
        time.sleep(0.5)  # into the sleep: a signal before the kernel took the code may be lost
        started = time.time()
        status, body = lab().http("POST", f"/api/kernels/{state['kernel_id']}/interrupt")
        check(status == 204, f"POST interrupt: {status} {body}")
        reply, outs = peer.replies(msg_id, got=got)
        check(reply["content"]["status"] in ("error", "aborted"), f"the interrupted reply {reply['content']}")
        if reply["content"]["status"] == "error":
            check(reply["content"].get("ename") == "KeyboardInterrupt", f"interrupted with {reply['content']}")
        took = time.time() - started
        check(took < 30, f"the sleep ended {took:.1f} s after the interrupt")
        info["status"] = reply["content"]["status"]
        info["ename"] = reply["content"].get("ename")
        info["after_seconds"] = round(took, 2)

    def restart(info):
        peer = state["a"]
        old_session = peer.kernel_session
        status, body = lab().http("POST", f"/api/kernels/{state['kernel_id']}/restart")
        check(status == 200, f"POST restart: {status} {body}")
        check(isinstance(body, dict) and body.get("id") == state["kernel_id"], f"restart's model {body}")
        # JupyterLab's KernelConnection.restart(): await the 200, then reconnect (same client id)
        # and send kernel_info_request first. A socket the relay closed is reconnected alike.
        peer.close()
        peer = Peer(lab(), state["kernel_id"], offer_v1=True, session_id=peer.session_id)
        state["peers"].append(peer)
        state["a"] = peer
        peer.kernel_info()
        info["kernel_session_changed"] = peer.kernel_session != old_session
        reply, outs = peer.execute("x")
        check(reply["status"] == "error" and reply.get("ename") == "NameError", f"x after the restart: {reply}")
        first(outs, "error")

    def delete(info):
        kid = state["kernel_id"]
        status, body = lab().http("DELETE", f"/api/kernels/{kid}")
        check(status == 204, f"DELETE /api/kernels/{kid}: {status} {body}")
        state["kernel_id"] = None
        for peer in state["peers"]:
            peer.close()
        status, body = lab().http("GET", f"/api/kernels/{kid}")
        check(status == 404, f"GET /api/kernels/{kid} after DELETE: {status} {body}")
        status, body = lab().http("GET", "/api/kernels")
        check(status == 200 and kid not in [k.get("id") for k in body], f"GET /api/kernels after DELETE: {body}")

    def session(info):
        # Opening a notebook: JupyterLab POSTs a session to the lab, which keeps the session and
        # starts the kernel on the gateway (with KERNEL_WORKING_DIR); closing it DELETEs both.
        status, body = lab().http("POST", "/api/sessions", {
            "path": "Untitled.ipynb", "name": "Untitled.ipynb", "type": "notebook", "kernel": {"name": kernel_name}})
        check(status == 201 and isinstance(body, dict), f"POST /api/sessions: {status} {body}")
        kernel = body.get("kernel") or {}
        check(isinstance(kernel.get("id"), str) and kernel.get("name") == kernel_name, f"the session's kernel {body}")
        sid, state["kernel_id"] = body["id"], kernel["id"]
        info["kernel_id"] = kernel["id"]
        peer = Peer(lab(), kernel["id"], offer_v1=True)
        state["peers"].append(peer)
        peer.kernel_info()
        reply, outs = peer.execute("6*7")
        check(first(outs, "execute_result")["data"].get("text/plain") == "42", f"the session's kernel ran {reply}")
        status, body = lab().http("DELETE", f"/api/sessions/{sid}")
        check(status == 204, f"DELETE /api/sessions/{sid}: {status} {body}")
        peer.close()
        status, body = lab().http("GET", f"/api/kernels/{kernel['id']}")
        check(status == 404, f"the session's kernel after DELETE: {status} {body}")
        state["kernel_id"] = None

    kernel_id = None
    try:
        step("start lab (gateway mode)", start)
        step("GET /api/kernelspecs", kernelspecs)
        step("POST /api/kernels", start_kernel)
        kernel_id = state["kernel_id"]
        step("websocket offering v1", ws_v1)
        step("websocket legacy", ws_legacy)
        step("input()", stdin)
        step("REST interrupt", interrupt)
        step("REST restart", restart)
        step("DELETE /api/kernels/<id>", delete)
        step("POST /api/sessions", session)
    except Failure as failure:
        print(f"jupyter_gateway_peer: FAILED {failure}", file=sys.stderr)
        if state["lab"] is not None:
            print(f"---- the local jupyter_server's log ({state['lab'].log_path}) ----", file=sys.stderr)
            print(state["lab"].log_text()[-30000:], file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        for peer in state["peers"]:
            peer.close()
        if state["lab"] is not None:
            if state["kernel_id"]:  # do not leave the kernel running on the gateway
                try:
                    state["lab"].http("DELETE", f"/api/kernels/{state['kernel_id']}")
                except Exception:  # noqa: BLE001
                    pass
            state["lab"].stop()
    shutil.rmtree(state["lab"].dir, ignore_errors=True)
    print(json.dumps({"ok": True, "kernel_id": kernel_id, "steps": steps}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:4]))
