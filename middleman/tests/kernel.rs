//! Middleman against a real ipykernel: outputs, input, interrupts, timeouts, crashes. One file:
//! each test is one kernel behaviour over the same helpers (`common/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use doc_protocol::{
    ClientMessage, ExecutionStatus, InputOutcome, KernelState, Output, ServerEvent, StreamName,
};
use session_token::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_result_and_counts() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let run = c.run("print('hello')\nprint('world', flush=True)").await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok));
    assert_eq!(run.stdout(), "hello\nworld\n");
    let run = c.run("1+1").await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok));
    assert_eq!(run.execution_count, Some(2));
    match &run.outputs[..] {
        [
            Output::ExecuteResult {
                execution_count,
                data,
                ..
            },
        ] => {
            assert_eq!(*execution_count, Some(2));
            assert_eq!(data["text/plain"], "2");
        }
        other => panic!("unexpected outputs {other:?}"),
    }
    let run = c.run("import sys; print('oops', file=sys.stderr)").await;
    assert!(
        matches!(&run.outputs[..], [Output::Stream { name: StreamName::Stderr, text }] if text == "oops\n")
    );
    // The helper's flush (nbplat_flush.py) is in place, and skipping the flushes of empty
    // streams loses nothing: a display, text on both streams and the result all arrive, in order.
    let run = c
        .run(
            "import sys\nfrom IPython.display import display\n\
             assert type(sys.stdout).flush._nbplat\n\
             display('shown'); print('out'); print('err', file=sys.stderr); 7",
        )
        .await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{:?}", run.outputs);
    match &run.outputs[..] {
        [
            Output::DisplayData { data, .. },
            Output::Stream {
                name: StreamName::Stdout,
                text: out,
            },
            Output::Stream {
                name: StreamName::Stderr,
                text: err,
            },
            Output::ExecuteResult { data: result, .. },
        ] => {
            assert_eq!(data["text/plain"], "'shown'");
            assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
            assert_eq!(result["text/plain"], "7");
        }
        other => panic!("unexpected outputs {other:?}"),
    }
    // Busy then idle are visible.
    assert!(run.events.iter().any(|e| matches!(
        e,
        ServerEvent::KernelStatus {
            state: KernelState::Busy,
            ..
        }
    )));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_display_html_image_json_and_updates() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let code = r#"
import base64, struct, zlib
from IPython.display import display, HTML, Image, JSON, update_display
def png(w, h):
    raw = b''.join(b'\x00' + b'\xff\x00\x00' * w for _ in range(h))
    def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')
display(HTML('<b>bold</b>'))
display(Image(data=png(4, 3)))
display(JSON({'a': [1, 2]}))
display('v1', display_id='prog')
update_display('v2', display_id='prog')
"#;
    let run = c.run(code).await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{run:?}");
    let datas: Vec<_> = run
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::DisplayData { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(datas.len(), 4, "{datas:?}");
    assert_eq!(datas[0]["text/html"], "<b>bold</b>");
    let png = datas[1]["image/png"].as_str().unwrap();
    assert!(png.starts_with("iVBORw0KGgo"), "base64 PNG: {png}");
    assert_eq!(datas[2]["application/json"]["a"][1], 2);
    assert!(
        matches!(&run.outputs[3], Output::DisplayData { display_id: Some(id), .. } if id == "prog")
    );
    let update = run.events.iter().find_map(|e| match e {
        ServerEvent::UpdateDisplay {
            display_id, data, ..
        } => Some((display_id.clone(), data.clone())),
        _ => None,
    });
    let (id, data) = update.expect("update_display forwarded");
    assert_eq!(id, "prog");
    assert_eq!(data["text/plain"], "'v2'");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_traceback_aborts_the_queue() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let failing = c.submit("def f():\n    return 1/0\nf()").await;
    let behind = c.submit("print('never')").await;
    let run = c.collect(&failing).await;
    assert_eq!(run.status, Some(ExecutionStatus::Error));
    match run.outputs.last() {
        Some(Output::Error {
            ename, traceback, ..
        }) => {
            assert_eq!(ename, "ZeroDivisionError");
            // IPython colours tracebacks: strip the ANSI codes before looking for the source line.
            let plain: String = strip_ansi(&traceback.join("\n"));
            assert!(plain.contains("return 1/0"), "{plain}");
        }
        other => panic!("expected an error output, got {other:?}"),
    }
    let aborted = c.collect(&behind).await;
    assert_eq!(aborted.status, Some(ExecutionStatus::Aborted));
    assert!(aborted.outputs.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_round_trip_and_cancel_on_interrupt() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let id = c.submit("name = input('name? ')\nprint('hi', name)").await;
    let events = c
        .until(|e| matches!(e, ServerEvent::InputRequest { .. }))
        .await;
    match events.last() {
        Some(ServerEvent::InputRequest {
            execution_id,
            prompt,
            password,
        }) => {
            assert_eq!(execution_id, &id);
            assert_eq!(prompt, "name? ");
            assert!(!password);
        }
        _ => unreachable!(),
    }
    c.send(&ClientMessage::InputReply {
        execution_id: id.clone(),
        value: "Ada".into(),
    })
    .await;
    let run = c.collect(&id).await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok));
    assert!(run.stdout().contains("hi Ada"), "{run:?}");
    assert!(run.events.iter().any(|e| matches!(
        e,
        ServerEvent::InputResolved {
            outcome: InputOutcome::Answered,
            ..
        }
    )));

    // A prompt nobody answers is cancelled by an interrupt.
    let id = c.submit("input('waiting: ')").await;
    c.until(|e| matches!(e, ServerEvent::InputRequest { .. }))
        .await;
    c.send(&ClientMessage::Interrupt).await;
    let run = c.collect(&id).await;
    assert_eq!(run.status, Some(ExecutionStatus::Interrupted));
    assert!(run.events.iter().any(|e| matches!(
        e,
        ServerEvent::InputResolved {
            outcome: InputOutcome::Cancelled,
            ..
        }
    )));
    // Answering after the fact is refused clearly.
    c.send(&ClientMessage::InputReply {
        execution_id: id,
        value: "late".into(),
    })
    .await;
    let e = c.until(|e| matches!(e, ServerEvent::Error { .. })).await;
    assert!(matches!(
        e.last(),
        Some(ServerEvent::Error {
            code: doc_protocol::ErrorCode::NoPendingInput,
            ..
        })
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_stops_a_busy_loop_and_keeps_the_kernel() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    c.run("marker = 42").await;
    let id = c
        .submit("print('looping', flush=True)\nwhile True: pass")
        .await;
    c.until(|e| matches!(e, ServerEvent::Output { .. })).await;
    c.send(&ClientMessage::Interrupt).await;
    let run = c.collect(&id).await;
    assert_eq!(run.status, Some(ExecutionStatus::Interrupted));
    assert!(
        run.outputs
            .iter()
            .any(|o| matches!(o, Output::Error { ename, .. } if ename == "KeyboardInterrupt")),
        "{run:?}"
    );
    // Same kernel: state survived.
    let after = c.run("print(marker)").await;
    assert_eq!(after.stdout(), "42\n");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_ignoring_sigint_is_killed_and_the_kernel_restarted() {
    let server = TestServer::start(&["--interrupt-grace", "1s"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('stubborn', flush=True)\nwhile True: time.sleep(0.05)";
    let id = c.submit(code).await;
    c.until(|e| matches!(e, ServerEvent::Output { .. })).await;
    c.send(&ClientMessage::Interrupt).await;
    let run = c.collect(&id).await;
    assert_eq!(run.status, Some(ExecutionStatus::Interrupted));
    assert!(
        run.reason.as_deref().unwrap_or("").contains("restarted"),
        "{run:?}"
    );
    c.until(|e| {
        matches!(
            e,
            ServerEvent::KernelStatus {
                state: KernelState::Idle,
                ..
            }
        )
    })
    .await;
    let after = c.run("'signal' in dir()").await;
    assert!(
        matches!(&after.outputs[..], [Output::ExecuteResult { data, .. }] if data["text/plain"] == "False"),
        "fresh kernel: {after:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_limit_times_out() {
    let server = TestServer::start(&["--execution-timeout", "1s", "--interrupt-grace", "2s"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let run = c.run("import time\ntime.sleep(60)").await;
    assert_eq!(run.status, Some(ExecutionStatus::TimedOut));
    assert!(
        run.reason.as_deref().unwrap_or("").contains("limit of 1 s"),
        "{run:?}"
    );
    let after = c.run("1+1").await;
    assert_eq!(after.status, Some(ExecutionStatus::Ok));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_death_is_reported_and_recovered_then_given_up() {
    let server = TestServer::start(&["--max-restarts", "1", "--restart-window", "10m"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let run = c.run("import os\nos._exit(1)").await;
    assert_eq!(run.status, Some(ExecutionStatus::KernelDied));
    assert!(
        run.reason
            .as_deref()
            .unwrap_or("")
            .contains("exited with code 1"),
        "{run:?}"
    );
    let ev = c
        .until(|e| {
            matches!(
                e,
                ServerEvent::KernelStatus {
                    state: KernelState::Idle,
                    ..
                }
            )
        })
        .await;
    assert!(ev.iter().any(|e| matches!(e, ServerEvent::KernelStatus { state: KernelState::Restarting, reason: Some(r), .. } if r.contains("code 1"))));
    assert_eq!(c.run("1+1").await.status, Some(ExecutionStatus::Ok));

    // A segfault: reported with its cause; the second death passes the limit of one restart.
    let run = c.run("import ctypes\nctypes.string_at(0)").await;
    assert_eq!(run.status, Some(ExecutionStatus::KernelDied));
    assert!(
        run.reason
            .as_deref()
            .unwrap_or("")
            .contains("segmentation fault"),
        "{run:?}"
    );
    c.until(|e| {
        matches!(
            e,
            ServerEvent::KernelStatus {
                state: KernelState::Dead,
                ..
            }
        )
    })
    .await;
    assert_eq!(http_get(server.addr, "/readyz").await.0, 503);
    c.send(&ClientMessage::Execute {
        code: "1".into(),
        request_id: None,
        stop_on_error: true,
    })
    .await;
    let e = c.until(|e| matches!(e, ServerEvent::Error { .. })).await;
    assert!(matches!(
        e.last(),
        Some(ServerEvent::Error {
            code: doc_protocol::ErrorCode::KernelDead,
            ..
        })
    ));
    // A person's restart brings it back.
    c.restart().await;
    assert_eq!(c.run("1+1").await.status, Some(ExecutionStatus::Ok));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flood_is_capped_and_coalesced() {
    let server = TestServer::start(&["--max-output-bytes", "65536"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let run = c.run("for i in range(300000): print(i)").await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok));
    assert!(run.truncated, "truncation notice sent");
    let text = run.stdout();
    assert!(text.len() <= 65536, "capped: {}", text.len());
    assert!(text.starts_with("0\n1\n2\n"), "kept the beginning");
    // Coalesced: far fewer frames than prints.
    let frames = run.outputs.len();
    assert!(frames < 200, "{frames} stream frames for 300000 prints");
    // Non-UTF-8 bytes written to the raw file descriptor never break a frame: ipykernel captures
    // fd 1 and the invalid bytes arrive as U+FFFD. (Its fd capture races with `print`, so the
    // order of the two pieces is not asserted.)
    let run = c
        .run("import os\nos.write(1, b'bad \\xff\\xfe bytes\\n')\nprint('ok')")
        .await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{run:?}");
    let out = run.stdout();
    assert!(out.contains("ok"), "{run:?}");
    assert!(out.contains("bad \u{fffd}\u{fffd} bytes"), "{run:?}");
    server.stop().await;
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_kernel_is_caught_by_the_heartbeat() {
    let server = TestServer::start(&["--heartbeat-interval", "300ms"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    // SIGSTOP: the process neither exits nor answers; only the heartbeat can tell.
    let run = c
        .run("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)")
        .await;
    assert_eq!(run.status, Some(ExecutionStatus::KernelDied));
    assert!(
        run.reason.as_deref().unwrap_or("").contains("heartbeat"),
        "{run:?}"
    );
    c.until(|e| {
        matches!(
            e,
            ServerEvent::KernelStatus {
                state: KernelState::Idle,
                ..
            }
        )
    })
    .await;
    assert_eq!(c.run("1+1").await.status, Some(ExecutionStatus::Ok));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_limits_and_no_network() {
    // A listener in Middleman's network namespace that the kernel must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = TestServer::start(&["--kernel-max-open-files", "200"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let run = c
        .run("import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE))")
        .await;
    assert_eq!(run.stdout(), "(200, 200)\n");
    let code = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\nexcept OSError as e:\n    print('blocked', e.errno)"
    );
    let run = c.run(&code).await;
    assert!(
        run.stdout().starts_with("blocked"),
        "the kernel reached the host's loopback: {run:?}"
    );
    // (Memory limits: tests/sandbox.rs.)
    assert_eq!(c.run("1+1").await.status, Some(ExecutionStatus::Ok));
    drop(listener);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_hold_up_others() {
    use futures_util::StreamExt as _;
    // Short pings: a client that reads nothing stops answering them too.
    let server = TestServer::start(&["--client-queue", "64", "--ping-interval", "1s"]).await;
    // Connected, then never read from again.
    let mut stalled = server.client("slow", Role::Viewer).await;
    let mut fast = server.client("fast", Role::Editor).await;
    // About 40 MB of output in 400 executions: far more than socket buffers hold.
    for i in 0..400 {
        let run = fast.run(&format!("print('{i}' * 100_000)")).await;
        assert_eq!(run.status, Some(ExecutionStatus::Ok));
        assert_eq!(run.stdout().len(), format!("{i}").len() * 100_000 + 1);
    }
    // The stalled client was resynchronised and then cut off (close 4008 or 4000, or dropped if
    // even the close frame could not be written) rather than buffered without bound: its stream
    // ends after what the socket held.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stalled.ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                    return frame.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the stalled client was never disconnected");
    assert!(
        ended.is_none_or(|code| code == 4008 || code == 4000),
        "closed with {ended:?}"
    );
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    let cut_off: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("middleman_ws_disconnects_total")
                && ["ping timeout", "too slow", "write failed"]
                    .iter()
                    .any(|r| l.contains(r))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert!(cut_off >= 1.0, "no cut-off client counted:\n{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_idle_status_does_not_stall_the_queue() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    // From here on the kernel replies but never publishes busy/idle: as if its IOPub socket
    // dropped them.
    let mute = c
        .run("k = get_ipython().kernel\nk._publish_status = lambda *a, **kw: None")
        .await;
    assert_eq!(mute.status, Some(ExecutionStatus::Ok));
    let first = c.submit("print('still here')").await;
    let second = c.submit("6 * 7").await;
    assert_eq!(c.collect(&first).await.stdout(), "still here\n");
    let run = c.collect(&second).await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok));
    assert!(
        matches!(&run.outputs[..], [Output::ExecuteResult { data, .. }] if data["text/plain"] == "42"),
        "{run:?}"
    );
    server.stop().await;
}
