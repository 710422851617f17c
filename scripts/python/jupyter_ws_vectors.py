"""Byte vectors for middleman/src/jupyter/wire.rs, made by jupyter_server's own serializers.

Run in the tools venv (`source scripts/env.sh`, then `python3`, which has jupyter_server):

    python3 scripts/python/jupyter_ws_vectors.py          # (re)writes the vectors
    python3 scripts/python/jupyter_ws_vectors.py --check  # exits 1 when the committed ones differ

Writes into middleman/src/jupyter/vectors/, for each vector NAME, NAME.bin (the frame) and
NAME.json (what jupyter_server's matching deserializer reads back: channel, the four JSON parts
and the buffers as hex):

- v1_execute_request: `v1.kernel.websocket.jupyter.org`, an execute_request on shell, no buffers;
- v1_display_data: v1, a display_data on iopub with two buffers;
- legacy_comm_msg: the legacy binary form (u32 big-endian), a comm_msg on shell with one buffer.

In v1, jupyter_server never serializes JSON itself on the relay path: it copies the kernel's
packed parts. So the v1 parts here are packed the way serde_json writes a `Map` (compact
separators, keys sorted, UTF-8 unescaped), which lets the Rust tests compare our encoding byte
for byte. The legacy binary form is all jupyter_server's (`json.dumps` with its default
separators, insertion order, ASCII escapes), so those tests compare the decoded parts instead.
Every id and date is fixed: the output is deterministic.
"""

import filecmp
import json
import os
import sys
import tempfile

from jupyter_client.jsonutil import json_default
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VECTORS = os.path.join(ROOT, "middleman", "src", "jupyter", "vectors")
SESSION = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def pack(obj) -> bytes:
    """A JSON part as serde_json writes a Map: compact, keys sorted, UTF-8 unescaped."""
    return json.dumps(
        obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def header(msg_id: str, msg_type: str, username: str = "vectors") -> dict:
    return {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "session": SESSION,
        "username": username,
        "date": "2026-12-04T10:20:30.123456Z",
        "version": "5.4",
    }


EXECUTE_REQUEST = {
    "header": header("11111111111111111111111111111111", "execute_request"),
    "parent_header": {},
    "metadata": {"cellId": "cell-1"},
    "content": {
        "code": "print('h\u00e9llo, \u4e16\u754c')\nx = 1",
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": True,
        "stop_on_error": True,
    },
}

DISPLAY_DATA = {
    "header": header("22222222222222222222222222222222", "display_data", "kernel"),
    "parent_header": EXECUTE_REQUEST["header"],
    "metadata": {},
    "content": {
        "data": {"text/plain": "<Figure size 640x480 with 1 Axes>"},
        "metadata": {},
        "transient": {"display_id": "d-1"},
    },
}
DISPLAY_BUFFERS = [bytes([0, 1, 2, 0xFF, 0xFE, 0x80]), b"second buffer"]

COMM_MSG = {
    "header": header("33333333333333333333333333333333", "comm_msg"),
    "msg_id": "33333333333333333333333333333333",
    "msg_type": "comm_msg",
    "parent_header": {},
    "metadata": {},
    "content": {
        "comm_id": "c0ffee00c0ffee00c0ffee00c0ffee00",
        "data": {"method": "update", "state": {"value": None}, "buffer_paths": [["value"]]},
    },
    "channel": "shell",
}
COMM_BUFFERS = [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"]


def parts_json(channel: str, parts: list, buffers: list) -> dict:
    """What a frame decodes to, for NAME.json (`parts`: the four JSON parts, parsed)."""
    header_, parent, metadata, content = parts
    return {
        "channel": channel,
        "header": header_,
        "parent_header": parent,
        "metadata": metadata,
        "content": content,
        "buffers": [bytes(b).hex() for b in buffers],
    }


def v1_vector(msg: dict, channel: str, buffers: list) -> tuple[bytes, dict]:
    if buffers:
        msg_list = [pack(msg[k]) for k in ("header", "parent_header", "metadata", "content")]
        frame = serialize_msg_to_ws_v1(msg_list + buffers, channel)
    else:
        frame = serialize_msg_to_ws_v1(msg, channel, pack)
    got_channel, got_list = deserialize_msg_from_ws_v1(frame)
    decoded = parts_json(got_channel, [json.loads(p) for p in got_list[:4]], got_list[4:])
    assert decoded["channel"] == channel
    assert [bytes.fromhex(b) for b in decoded["buffers"]] == buffers
    return frame, decoded


def legacy_vector(msg: dict, buffers: list) -> tuple[bytes, dict]:
    frame = serialize_binary_message({**msg, "buffers": buffers})
    got = deserialize_binary_message(frame)
    # deserialize_binary_message turns a header's `date` into a datetime; write it back as the
    # string the frame holds.
    for key in ("header", "parent_header"):
        if "date" in got[key]:
            got[key]["date"] = json_default(got[key]["date"])
    parts = [got[k] for k in ("header", "parent_header", "metadata", "content")]
    decoded = parts_json(got["channel"], parts, got["buffers"])
    assert {k: decoded[k] for k in ("header", "parent_header", "metadata", "content")} == {
        k: msg[k] for k in ("header", "parent_header", "metadata", "content")
    }
    assert [bytes(b) for b in got["buffers"]] == buffers
    return frame, decoded


def generate(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    vectors = {
        "v1_execute_request": v1_vector(EXECUTE_REQUEST, "shell", []),
        "v1_display_data": v1_vector(DISPLAY_DATA, "iopub", DISPLAY_BUFFERS),
        "legacy_comm_msg": legacy_vector(COMM_MSG, COMM_BUFFERS),
    }
    for name, (frame, decoded) in vectors.items():
        with open(os.path.join(out_dir, name + ".bin"), "wb") as f:
            f.write(frame)
        with open(os.path.join(out_dir, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(decoded, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        with tempfile.TemporaryDirectory() as tmp:
            generate(tmp)
            names = sorted(os.listdir(tmp))
            have = sorted(os.listdir(VECTORS)) if os.path.isdir(VECTORS) else []
            _, mismatch, errors = filecmp.cmpfiles(tmp, VECTORS, names, shallow=False)
            stale = mismatch + errors + sorted(set(have) - set(names))
        if stale:
            print(
                f"jupyter_ws_vectors: {', '.join(stale)} in {VECTORS} differ from what "
                "jupyter_server makes; run scripts/python/jupyter_ws_vectors.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    generate(VECTORS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
