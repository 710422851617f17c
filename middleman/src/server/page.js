// The minimal try-it page: one code box, executions listed newest first. The web client issue
// replaces it with the notebook.
"use strict";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const execs = new Map();
let ws;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function stripAnsi(s) { return s.replace(/\u001b\[[0-9;]*m/g, ""); }

function execBox(id, code, by) {
  let box = execs.get(id);
  if (!box) {
    const root = el("div", "exec");
    const head = el("div", "head");
    const title = el("span", "", by ? `queued by ${by}` : id);
    const status = el("span", "", "queued");
    head.append(title, status);
    root.append(head, el("pre", "code", code || ""));
    const out = el("div", "out");
    root.append(out);
    $("log").prepend(root);
    box = { root, status, out, lastStream: null };
    execs.set(id, box);
  }
  return box;
}

function render(box, output) {
  if (output.output_type === "stream") {
    if (box.lastStream && box.lastStream.name === output.name) {
      box.lastStream.pre.textContent += output.text;
      return;
    }
    const pre = el("pre", output.name === "stderr" ? "stderr" : "", output.text);
    box.out.append(pre);
    box.lastStream = { name: output.name, pre };
    return;
  }
  box.lastStream = null;
  if (output.output_type === "error") {
    box.out.append(el("pre", "error", stripAnsi(output.traceback.join("\n")) || `${output.ename}: ${output.evalue}`));
    return;
  }
  const node = renderData(output.data || {});
  if (output.display_id) node.dataset.displayId = output.display_id;
  box.out.append(node);
}

function renderData(data) {
  if (data["text/html"]) {
    // Kernel HTML runs in a sandboxed frame without scripts: it cannot reach this page or its token.
    const f = el("iframe");
    f.setAttribute("sandbox", "");
    f.srcdoc = [].concat(data["text/html"]).join("");
    return f;
  }
  if (data["image/png"]) {
    const img = el("img");
    img.src = "data:image/png;base64," + data["image/png"];
    return img;
  }
  if (data["application/json"]) return el("pre", "", JSON.stringify(data["application/json"], null, 2));
  return el("pre", "", [].concat(data["text/plain"] || "").join(""));
}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function onFrame(f) {
  switch (f.type) {
    case "welcome":
      $("who").textContent = `${f.name} (${f.role}) · ${f.kernel.display_name}`;
      if (f.snapshot) setState(f.snapshot.kernel_state);
      break;
    case "kernel_status":
      setState(f.state, f.reason);
      break;
    case "execution_queued":
      execBox(f.execution.id, f.execution.code, f.execution.by);
      break;
    case "execution_started":
      execBox(f.execution_id).status.textContent = "running";
      break;
    case "output":
      render(execBox(f.execution_id), f.output);
      break;
    case "update_display":
      document.querySelectorAll(`[data-display-id="${CSS.escape(f.display_id)}"]`).forEach((n) => {
        const fresh = renderData(f.data);
        fresh.dataset.displayId = f.display_id;
        n.replaceWith(fresh);
      });
      break;
    case "clear_output": {
      const box = execBox(f.execution_id);
      box.out.textContent = "";
      box.lastStream = null;
      break;
    }
    case "output_truncated":
      execBox(f.execution_id).out.append(el("div", "notice", `Output truncated: it passed the ${f.limit_bytes} byte limit.`));
      break;
    case "input_request": {
      const box = execBox(f.execution_id);
      const form = el("form");
      form.append(el("span", "", f.prompt));
      const input = el("input");
      input.type = f.password ? "password" : "text";
      form.append(input);
      form.onsubmit = (e) => { e.preventDefault(); send({ type: "input_reply", execution_id: f.execution_id, value: input.value }); };
      form.dataset.prompt = f.execution_id;
      box.out.append(form);
      input.focus();
      break;
    }
    case "input_resolved":
      document.querySelectorAll(`form[data-prompt="${CSS.escape(f.execution_id)}"]`).forEach((n) => n.remove());
      break;
    case "execution_finished": {
      const box = execBox(f.execution_id);
      box.status.textContent = f.status + (f.execution_count ? ` [${f.execution_count}]` : "") + ` · ${f.duration_ms} ms`;
      if (f.reason && f.status !== "ok") box.out.append(el("div", "notice", f.reason));
      break;
    }
    case "error":
      $("msg").textContent = `${f.code}: ${f.message}`;
      break;
    case "shutdown":
      setState("dead", f.reason);
      break;
  }
}

function setState(state, reason) {
  const s = $("state");
  s.textContent = state + (reason ? ` · ${reason}` : "");
  s.className = state;
}

function connect() {
  if (!token) {
    setState("dead", "no token: open the URL printed by the run command");
    return;
  }
  const proto = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${proto}://${location.host}/ws?token=${encodeURIComponent(token)}`);
  // Binary frames carry the Yjs document sync, which this page does not use.
  ws.onmessage = (e) => {
    if (typeof e.data === "string") onFrame(JSON.parse(e.data));
  };
  ws.onclose = (e) => { setState("disconnected", e.reason || `code ${e.code}`); setTimeout(connect, 2000); };
}

$("run").onclick = () => send({ type: "execute", code: $("code").value });
$("interrupt").onclick = () => send({ type: "interrupt" });
$("restart").onclick = () => send({ type: "restart" });
$("code").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && e.shiftKey) { e.preventDefault(); $("run").click(); }
});
connect();
