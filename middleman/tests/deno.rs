//! JavaScript and TypeScript notebooks on Deno's kernel, in the sandbox. Deno's kernel speaks
//! TCP only and runs with every permission, so its fence is the jail's: its own loopback,
//! bridged to the sockets Middleman connects to, Landlock (those ports only), seccomp, its own
//! user. Everything a Python cell has works for its cells (outputs, rich display, errors,
//! `prompt()`, interrupts, timeouts, restarts, completion, `.ipynb`), and the attacks of the
//! sandbox's battery fail from its cells in both modes and in the Kubernetes layout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::agent::{AgentProcess, own_uid, require_root};
use common::*;
use middleman::protocol::{AssistAnswer, ClientMessage, ExecutionStatus, Output, ServerEvent};
use session_token::Role;

fn has_data(run: &Run, mime: &str) -> bool {
    run.outputs.iter().any(|o| match o {
        Output::ExecuteResult { data, .. } | Output::DisplayData { data, .. } => {
            data.contains_key(mime)
        }
        _ => false,
    })
}

fn result_text(run: &Run) -> String {
    run.outputs
        .iter()
        .find_map(|o| match o {
            Output::ExecuteResult { data, .. } => data
                .get("text/plain")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// Middleman with Deno's kernel as the js plan runs it: a uid of its own and a 10 MiB heap
/// for the code; `extra` flags after those.
async fn js_plan_server(extra: &[&str]) -> TestServer {
    require_root();
    let uid = own_uid(320_000);
    let mut flags = vec![
        "--kernel",
        "deno",
        "--kernel-uid",
        &uid,
        "--kernel-js-heap-mib",
        "10",
    ];
    flags.extend_from_slice(extra);
    TestServer::start(&flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_cells_work_as_python_cells_do() {
    // The js plan's heap: everyday work fits in it.
    let server = js_plan_server(&["--execution-timeout", "3s"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    // Results, streams and types; state carries over to the next cell.
    let run = c
        .run("const xs: number[] = [1, 2, 3];\nconsole.log('hi');\nconsole.error('careful');\nxs.map((x) => x * 2)")
        .await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{run:?}");
    assert_eq!(result_text(&run), "[ 2, 4, 6 ]", "{run:?}");
    assert!(run.outputs.iter().any(|o| matches!(o, Output::Stream { name, text } if *name == middleman::protocol::StreamName::Stdout && text == "hi\n")), "{run:?}");
    assert!(run.outputs.iter().any(|o| matches!(o, Output::Stream { name, text } if *name == middleman::protocol::StreamName::Stderr && text.contains("careful"))), "{run:?}");
    let run = c.run("xs.length").await;
    assert_eq!(result_text(&run), "3", "{run:?}");
    // Deno's kernel may publish a result after its idle status; every result still belongs to
    // its execution, in order.
    for i in 0..40 {
        let run = c.run(&format!("{i} * 2")).await;
        assert_eq!(result_text(&run), (i * 2).to_string(), "{run:?}");
    }
    // Top-level await.
    let run = c
        .run("await new Promise((resolve) => setTimeout(resolve, 20)); 'waited'")
        .await;
    assert_eq!(result_text(&run), "\"waited\"", "{run:?}");
    // Rich display.
    let run = c.run("Deno.jupyter.html`<b>bold</b>`").await;
    assert!(has_data(&run, "text/html"), "{run:?}");
    let run = c
        .run("await Deno.jupyter.display({ 'text/markdown': '# Title' }, { raw: true })")
        .await;
    assert!(has_data(&run, "text/markdown"), "{run:?}");
    // Errors name what was thrown.
    let run = c.run("throw new TypeError('boom')").await;
    assert_eq!(run.status, Some(ExecutionStatus::Error), "{run:?}");
    assert!(
        run.outputs.iter().any(
            |o| matches!(o, Output::Error { ename, evalue, .. } if ename.contains("TypeError") && evalue.contains("boom"))
        ),
        "{run:?}"
    );
    // prompt() asks the person who ran the cell.
    let id = c
        .submit("const name = prompt('who?');\n`hello ${name}`")
        .await;
    let events = c
        .until(|e| matches!(e, ServerEvent::InputRequest { .. }))
        .await;
    let Some(ServerEvent::InputRequest {
        execution_id,
        prompt,
        ..
    }) = events.last()
    else {
        panic!("no prompt: {events:?}");
    };
    assert!(prompt.contains("who?"), "{prompt}");
    c.send(&ClientMessage::InputReply {
        execution_id: execution_id.clone(),
        value: "ada".into(),
    })
    .await;
    assert_eq!(result_text(&c.collect(&id).await), "\"hello ada\"");
    // An interrupt (a message on control: Deno ignores SIGINT) stops a loop, keeps the state.
    let id = c.submit("console.log('looping');\nwhile (true) {}").await;
    c.until(|e| matches!(e, ServerEvent::Output { .. })).await;
    c.send(&ClientMessage::Interrupt).await;
    let run = c.collect(&id).await;
    assert_eq!(run.status, Some(ExecutionStatus::Interrupted), "{run:?}");
    assert_eq!(result_text(&c.run("xs.length").await), "3");
    // A loop past the plan's time limit is stopped and said so.
    let run = c.run("while (true) {}").await;
    assert_eq!(run.status, Some(ExecutionStatus::TimedOut), "{run:?}");
    assert_eq!(result_text(&c.run("1 + 1").await), "2");
    // Completion comes from the kernel.
    let code = "Deno.readTextF";
    c.send(&ClientMessage::Complete {
        request_id: "c1".into(),
        cell_id: None,
        code: code.into(),
        cursor: code.len() as u32,
    })
    .await;
    let events = c
        .until(|e| matches!(e, ServerEvent::Assist { request_id, .. } if request_id == "c1"))
        .await;
    match events.last() {
        Some(ServerEvent::Assist {
            answer: AssistAnswer::Complete { matches, .. },
            ..
        }) => assert!(
            matches.iter().any(|m| m.text.contains("readTextFile")),
            "{matches:?}"
        ),
        other => panic!("no completion: {other:?}"),
    }
    // The notebook says its language.
    let bearer = format!("Bearer {}", server.token("ada", Role::Editor));
    let (status, body) =
        http_request(server.addr, "/api/notebook", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    let notebook: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(notebook["metadata"]["kernelspec"]["name"], "deno");
    assert_eq!(notebook["metadata"]["kernelspec"]["language"], "typescript");
    assert_eq!(notebook["metadata"]["language_info"]["name"], "typescript");
    // A restart clears the state.
    c.restart().await;
    let run = c.run("typeof xs").await;
    assert_eq!(result_text(&run), "\"undefined\"", "{run:?}");
    server.stop().await;
}

/// Runs `code`, which logs one `name: ok` or `name: LEAK ...` line per check through
/// `report`, and fails listing every leak or missing check.
async fn expect_no_leaks(c: &mut Client, code: &str) {
    let run = c.run(code).await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{run:?}");
    let out = run.stdout();
    let leaks: Vec<&str> = out.lines().filter(|l| l.contains("LEAK")).collect();
    assert!(
        leaks.is_empty(),
        "the sandbox leaked:\n{}\n\nall:\n{out}",
        leaks.join("\n")
    );
    let checks = code.matches("await check(\"").count();
    let reported = out.lines().filter(|l| l.ends_with(": ok")).count();
    assert_eq!(reported, checks, "some checks did not report:\n{out}");
}

/// The attacks: each `check` runs an attempt that must throw (or, for commands, fail).
const PRELUDE: &str = r#"
async function check(name: string, attempt: () => Promise<unknown> | unknown) {
  const start = performance.now();
  try {
    const got = await attempt();
    console.log(`${name}: LEAK ${JSON.stringify(got)?.slice(0, 200)}`);
  } catch (e) {
    console.log(`${name}: ok`);
    console.error(`${name}: ${String(e).slice(0, 120)} (${Math.round(performance.now() - start)} ms)`);
  }
}
async function command(program: string, ...args: string[]) {
  const out = await new Deno.Command(program, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`exit ${out.code}`);
  return new TextDecoder().decode(out.stdout);
}
"#;

fn attacks(secret: &str, host_port: u16, middleman_port: u16, host_socket: &str) -> String {
    let middleman = std::process::id();
    format!(
        r#"{PRELUDE}
await check("read a host secret", () => Deno.readTextFile({secret:?}));
await check("read /etc/shadow", () => Deno.readTextFile("/etc/shadow"));
await check("a command reads the secret", () => command("cat", {secret:?}));
await check("write the system", () => Deno.writeTextFile("/usr/nbplat-owned", "x"));
await check("Middleman's port", () => fetch("http://127.0.0.1:{middleman_port}/readyz").then((r) => r.status));
await check("a host port", async () => {{ const c = await Deno.connect({{ hostname: "127.0.0.1", port: {host_port} }}); c.close(); return "connected"; }});
await check("the internet", async () => {{ const c = await Deno.connect({{ hostname: "1.1.1.1", port: 443 }}); c.close(); return "connected"; }});
await check("a name lookup", () => Deno.resolveDns("example.com", "A"));
await check("listen on a port", () => {{ const l = Deno.listen({{ hostname: "127.0.0.1", port: 0 }}); l.close(); return "listening"; }});
await check("a host unix socket", async () => {{ const c = await Deno.connect({{ transport: "unix", path: {host_socket:?} }}); c.close(); return "connected"; }});
await check("signal Middleman", () => Deno.kill({middleman}, "SIGTERM"));
await check("a command signals Middleman", () => command("kill", "-TERM", "{middleman}"));
await check("Middleman's command line", () => Deno.readTextFile("/proc/{middleman}/cmdline"));
await check("new privileges", () => command("su", "-c", "id"));
"#
    )
}

async fn attack_battery(mode: &[&str]) {
    require_root();
    let host = TempDir::new("deno-host-secrets");
    let secret = host.0.join("signing.pem");
    std::fs::write(&secret, "SECRET-KEY").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = tcp.local_addr().unwrap().port();
    let unix_path = host.0.join("host.sock");
    let _unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
    // Every attempt fails at once: one that hangs is a failure, not a ten-minute wait.
    let mut flags = vec!["--kernel", "deno"];
    flags.extend_from_slice(mode);
    let server = TestServer::start(&flags).await;
    let mut c = server.client("mallory", Role::Editor).await;
    let code = attacks(
        &secret.display().to_string(),
        host_port,
        server.addr.port(),
        &unix_path.display().to_string(),
    );
    expect_no_leaks(&mut c, &code).await;
    // Everyone else is still served, and the kernel still works.
    assert_eq!(http_get(server.addr, "/readyz").await.0, 200);
    assert_eq!(result_text(&c.run("6 * 7").await), "42");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_from_deno_cells_fail_with_an_own_uid() {
    let uid = own_uid(320_000);
    attack_battery(&["--kernel-uid", &uid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_from_deno_cells_fail_as_uid_0() {
    attack_battery(&[]).await;
}

/// A pod's kernel container: no namespaces, the pod's loopback shared with Middleman. Landlock
/// lets the kernel bind and reach its own bridged ports only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_layout_bridges_deno_without_namespaces() {
    require_root();
    let dir = TempDir::new("deno-agent-layout");
    let agent = AgentProcess::start(&dir.0, nix::unistd::geteuid().as_raw());
    let socket = agent.socket.display().to_string();
    let ipc = agent.ipc.display().to_string();
    let server = TestServer::start(&[
        "--kernel",
        "deno",
        "--kernel-agent",
        &socket,
        "--kernel-ipc-dir",
        &ipc,
    ])
    .await;
    let mut c = server.client("ada", Role::Editor).await;
    let code = format!(
        r#"{PRELUDE}
await check("Middleman's port", () => fetch("http://127.0.0.1:{port}/readyz").then((r) => r.status));
await check("listen on a port", () => {{ const l = Deno.listen({{ hostname: "127.0.0.1", port: 0 }}); l.close(); return "listening"; }});
await check("signal Middleman", () => Deno.kill({middleman}, "SIGTERM"));
"#,
        port = server.addr.port(),
        middleman = std::process::id(),
    );
    expect_no_leaks(&mut c, &code).await;
    let id = c.submit("console.log('looping');\nwhile (true) {}").await;
    c.until(|e| matches!(e, ServerEvent::Output { .. })).await;
    c.send(&ClientMessage::Interrupt).await;
    assert_eq!(
        c.collect(&id).await.status,
        Some(ExecutionStatus::Interrupted)
    );
    c.restart().await;
    assert_eq!(result_text(&c.run("1 + 1").await), "2");
    server.stop().await;
}

/// The plan's heap for the code (10 MiB, the first product's default): what fits runs, what
/// does not stops the kernel with words that say so, and the next kernel works. Prints how much
/// the code could hold (docs/sandbox.md records it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heap_limit_is_reported_in_words() {
    let server = js_plan_server(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    // 2 MiB of numbers, kept.
    let run = c
        .run("const kept = new Array(256 * 1024).fill(0.5); kept.length")
        .await;
    assert_eq!(result_text(&run), "262144", "{run:?}");
    // Then 1 MiB more at a time until the heap is full.
    let run = c
        .run("const more: number[][] = [];\nfor (let i = 1; ; i++) { more.push(new Array(128 * 1024).fill(i + 0.5)); console.log(`${i} MiB`); }")
        .await;
    assert_eq!(run.status, Some(ExecutionStatus::KernelDied), "{run:?}");
    let reason = run.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("used more than its JavaScript heap of 10 MiB"),
        "{reason}"
    );
    let held = run.stdout().lines().filter(|l| l.ends_with("MiB")).count();
    eprintln!("the code held 2 MiB, then {held} MiB more before the limit");
    assert!(held < 64, "the heap limit did not hold: {held} MiB more");
    c.until(|e| {
        matches!(
            e,
            ServerEvent::KernelStatus {
                state: middleman::protocol::KernelState::Idle,
                ..
            }
        )
    })
    .await;
    assert_eq!(result_text(&c.run("1 + 1").await), "2");
    server.stop().await;
}
