//! Runs without a browser, end to end: Watchman with the local backend (real Middleman and
//! ipykernel processes) and a real Redis, through the gRPC `Jobs` service and the HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::jobs::*;
use common::*;
use testkit::RedisServer;
use tonic::Code;
use watchman::jobs::model::{Receipt, Run};
use watchman_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_executes_on_a_fresh_pod_and_finishes_with_outputs_and_a_receipt_that_verifies() {
    let redis = RedisServer::start();
    let d = deployment("jobs-basic", 2, "");
    let w = d.replica(&redis.url(), &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let mut j = jobs_client(w.grpc_addr).await;

    let code = "name = input('who? ')\nprint('hello', name)\nfrom IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))\n6 * 7";
    let mut request = submission("ada", code);
    request.stdin = "Grace\n".into();
    let queued = j.submit_execution(request).await.unwrap().into_inner();
    assert_eq!(queued.state, pb::RunState::Queued as i32);
    assert_eq!(queued.user_id, "ada");
    // Watch it live: the run as it is, its outputs, then its final form.
    let mut events = j
        .watch_run(run_ref("ada", &queued.id))
        .await
        .unwrap()
        .into_inner();
    let mut live_outputs = 0;
    let last = loop {
        let e = tokio::time::timeout(Duration::from_secs(120), events.message())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream ended before `finished`");
        match e.event.unwrap() {
            pb::run_event::Event::OutputJson(_) => live_outputs += 1,
            pb::run_event::Event::State(_) => {}
            pb::run_event::Event::Finished(run) => break run,
        }
    };
    assert_eq!(last.state, pb::RunState::Succeeded as i32, "{last:?}");
    assert!(live_outputs >= 2, "{live_outputs}");
    // The prompt travels in the input request, not in stdout.
    assert_eq!(stdout(&last), "hello Grace\n", "{last:?}");
    let outs = outputs(&last);
    assert!(
        outs.iter()
            .any(|o| o["output_type"] == "display_data" && o["data"]["text/html"] == "<b>x</b>")
    );
    assert!(
        outs.iter()
            .any(|o| o["output_type"] == "execute_result" && o["data"]["text/plain"] == "42")
    );
    assert_eq!(last.attempts.len(), 1);
    assert_eq!(last.attempts[0].outcome, "succeeded");
    assert!(last.started_at_ms >= last.queued_at_ms && last.finished_at_ms >= last.started_at_ms);
    assert!(last.expires_at_ms > last.finished_at_ms);

    // The receipt verifies with the public key, through the library and the CLI, and a run
    // whose outputs were changed does not.
    let http_run = http(
        w.http_addr,
        "GET",
        &format!("/v1/runs/{}?user_id=ada", last.id),
        API_TOKEN,
        "",
    )
    .await;
    assert_eq!(http_run.0, 200, "{}", http_run.1);
    let run: Run = serde_json::from_str(&http_run.1).unwrap();
    let key = public_key(&d);
    let body =
        watchman::jobs::receipt::verify(run.receipt.as_ref().unwrap(), &key, Some(&run)).unwrap();
    assert_eq!(body.pod, last.pod);
    assert_eq!(body.code_sha256, last.code_sha256);
    let mut tampered = run.clone();
    tampered.outputs[0]["text"] = serde_json::json!("hello Mallory\n");
    assert!(
        watchman::jobs::receipt::verify(tampered.receipt.as_ref().unwrap(), &key, Some(&tampered))
            .is_err()
    );
    let mut forged: Receipt = run.receipt.clone().unwrap();
    forged.payload = forged.payload.replace("succeeded", "failed");
    assert!(watchman::jobs::receipt::verify(&forged, &key, None).is_err());
    let pem = d.dir.0.join("watchman.pub.pem");
    std::fs::write(&pem, key.to_pem().unwrap()).unwrap();
    let good = d.dir.0.join("run.json");
    std::fs::write(&good, &http_run.1).unwrap();
    let bad = d.dir.0.join("tampered.json");
    std::fs::write(&bad, serde_json::to_string(&tampered).unwrap()).unwrap();
    let cli = receipt_bin();
    let ok = std::process::Command::new(&cli)
        .args(["--public-key"])
        .arg(&pem)
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&last.id));
    let refused = std::process::Command::new(&cli)
        .arg("--public-key")
        .arg(&pem)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("outputs"));

    // The pod that ran it is gone and never handed out again.
    let pods: HashSet<String> = w
        .watchman
        .store()
        .pods()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.state != watchman::model::PodState::Ending)
        .map(|p| p.id)
        .collect();
    assert!(!pods.contains(&last.pod), "{pods:?}");

    // The HTTP API: submit, then the events stream to its end.
    let (status, body) = http(
        w.http_addr,
        "POST",
        "/v1/runs",
        API_TOKEN,
        r#"{"user_id":"ada","plan":"free","code":"print(sum(range(10)))"}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let second: Run = serde_json::from_str(&body).unwrap();
    let (status, sse) = http(
        w.http_addr,
        "GET",
        &format!("/v1/runs/{}/events?user_id=ada", second.id),
        API_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(sse.contains("event: state"), "{sse}");
    assert!(sse.contains("event: finished"), "{sse}");
    let (_, body) = http(
        w.http_addr,
        "GET",
        &format!("/v1/runs/{}?user_id=ada", second.id),
        API_TOKEN,
        "",
    )
    .await;
    let second: Run = serde_json::from_str(&body).unwrap();
    assert_eq!(second.outputs[0]["text"], "45\n", "{body}");
    assert_ne!(
        second.pod, last.pod,
        "a pod that ran something is never reused"
    );

    // Another user sees neither run; a wrong token gets nothing; bad requests say why.
    let foreign = j.get_run(run_ref("bob", &last.id)).await.unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    let (status, _) = http(
        w.http_addr,
        "GET",
        &format!("/v1/runs/{}?user_id=bob", last.id),
        API_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http(
        w.http_addr,
        "GET",
        "/v1/runs?user_id=ada",
        "wrong-token",
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = http(w.http_addr, "POST", "/v1/runs", API_TOKEN, "{not json").await;
    assert_eq!(status, 400, "{body}");
    for (request, needle) in [
        (
            pb::SubmitExecutionRequest {
                plan: "gold".into(),
                ..submission("ada", "1")
            },
            "unknown plan",
        ),
        (submission("ada", "  "), "empty"),
        (submission("ada", &"x".repeat(300 * 1024)), "at most"),
        (submission("no spaces allowed", "1"), "user_id"),
        (
            pb::SubmitExecutionRequest {
                timeout_ms: 3_600_000,
                ..submission("ada", "1")
            },
            "limit",
        ),
        (
            pb::SubmitExecutionRequest {
                kernel: "deno".into(),
                ..submission("ada", "1")
            },
            "kernel",
        ),
    ] {
        let e = j.submit_execution(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    }
    let listed = j
        .list_runs(pb::ListRunsRequest {
            user_id: "ada".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [second.id.as_str(), last.id.as_str()]
    );
    // The audit trail has the whole story, newest first, with the code's hash.
    let audit = audit(&mut j, "ada").await;
    let of_first: Vec<&str> = audit
        .iter()
        .filter(|e| e.run_id == last.id)
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(of_first, ["finished", "started", "submitted"], "{audit:?}");
    assert!(audit.iter().all(|e| e.user_id == "ada"));
    assert!(
        audit
            .iter()
            .filter(|e| e.run_id == last.id)
            .all(|e| e.code_sha256 == last.code_sha256)
    );
    teardown(w).await;
}

fn receipt_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_watchman-receipt"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_are_not_retried_the_time_limit_holds_and_cancel_stops_a_run() {
    let d = deployment("jobs-ends", 3, "");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 3).await;
    let mut j = jobs_client(w.grpc_addr).await;

    let raised = j
        .submit_execution(submission("ada", "print('before')\n1/0"))
        .await
        .unwrap()
        .into_inner();
    let looping = j
        .submit_execution(pb::SubmitExecutionRequest {
            timeout_ms: 1500,
            ..submission("ada", "while True:\n    pass")
        })
        .await
        .unwrap()
        .into_inner();
    let sleeping = j
        .submit_execution(submission(
            "ada",
            "import time\nprint('started', flush=True)\ntime.sleep(50)",
        ))
        .await
        .unwrap()
        .into_inner();

    let raised = finished(&mut j, "ada", &raised.id).await;
    assert_eq!(raised.state, pb::RunState::Failed as i32, "{raised:?}");
    assert_eq!(raised.attempts.len(), 1, "a user's error is never retried");
    assert_eq!(raised.attempts[0].outcome, "user_error");
    assert!(
        raised.exit_reason.contains("ZeroDivisionError"),
        "{}",
        raised.exit_reason
    );
    assert!(outputs(&raised).iter().any(|o| o["output_type"] == "error"));
    assert_eq!(stdout(&raised), "before\n");

    let looping = finished(&mut j, "ada", &looping.id).await;
    assert_eq!(looping.state, pb::RunState::TimedOut as i32, "{looping:?}");
    assert_eq!(looping.attempts.len(), 1, "a timeout is never retried");
    // Stopped by the run's own 1.5 s limit, not by the plan's 60 s one.
    assert!(
        looping.exit_reason.contains("its 1500 ms limit"),
        "{}",
        looping.exit_reason
    );

    let pod = running_on(&mut j, "ada", &sleeping.id).await;
    let pid = pod_pid(&w, &pod).await;
    let cancelled = j
        .cancel_run(run_ref("ada", &sleeping.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cancelled.state,
        pb::RunState::Cancelled as i32,
        "{cancelled:?}"
    );
    assert_eq!(cancelled.attempts.len(), 1);
    // Its pod is deleted: the Middleman process is gone.
    wait_pid_gone(pid, "the cancelled run's pod").await;
    // Cancelling a finished run changes nothing; a foreign one is not found.
    let again = j
        .cancel_run(run_ref("ada", &raised.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state, pb::RunState::Failed as i32);
    assert_eq!(
        j.cancel_run(run_ref("eve", &raised.id))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_mid_run_is_retried_on_another_pod_and_the_history_says_why() {
    let redis = RedisServer::start();
    let d = deployment("jobs-retry", 2, "");
    let w = d.replica(&redis.url(), &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let mut j = jobs_client(w.grpc_addr).await;
    let run = j
        .submit_execution(submission(
            "ada",
            "import time\nprint('working', flush=True)\ntime.sleep(4)\nprint('done')",
        ))
        .await
        .unwrap()
        .into_inner();
    let pod = running_on(&mut j, "ada", &run.id).await;
    let pid = pod_pid(&w, &pod).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let run = finished(&mut j, "ada", &run.id).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.attempts.len(), 2, "{run:?}");
    assert_eq!(run.attempts[0].outcome, "pod_lost");
    assert_eq!(run.attempts[0].pod, pod);
    assert!(run.attempts[0].retry_at_ms >= run.attempts[0].finished_at_ms);
    assert_eq!(run.attempts[1].outcome, "succeeded");
    assert_ne!(run.attempts[1].pod, pod, "retried on another pod");
    assert_eq!(stdout(&run), "working\ndone\n");
    let audit = audit(&mut j, "ada").await;
    let retry = audit
        .iter()
        .find(|e| e.event == "retry")
        .expect("a retry entry");
    assert!(retry.detail.contains("pod_lost"), "{retry:?}");
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_and_recover_and_an_idempotent_resubmission_returns_the_first_run() {
    let redis = RedisServer::start();
    let d = deployment(
        "jobs-quota",
        2,
        "user_concurrent_runs = 1\nuser_runs_per_day = 4",
    );
    let w = d.replica(&redis.url(), &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let mut j = jobs_client(w.grpc_addr).await;

    let mut keyed = submission("ada", "import time\ntime.sleep(60)");
    keyed.idempotency_key = "order-17".into();
    let first = j
        .submit_execution(keyed.clone())
        .await
        .unwrap()
        .into_inner();
    // A backend's retry with the key gets the same run, and is not a second run.
    let replay = j
        .submit_execution(keyed.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay.id, first.id);
    // The key with another request is refused.
    let mut other = keyed.clone();
    other.code = "print('something else')".into();
    let e = j.submit_execution(other).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // One concurrent run: the next is refused while the first runs; another user is not.
    let e = j
        .submit_execution(submission("ada", "1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("concurrent"), "{}", e.message());
    // A refused submission gives its key back: the same request succeeds later.
    let mut later = submission("ada", "2");
    later.idempotency_key = "later".into();
    let e = j.submit_execution(later.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let mut bobs = submission("bob", "1");
    bobs.idempotency_key = "x:y".into();
    let bob = j.submit_execution(bobs).await.unwrap().into_inner();
    // Ids may hold ':', and no user's id and key spell another user's.
    let mut other = submission("bob:x", "1");
    other.idempotency_key = "y".into();
    let other = j.submit_execution(other).await.unwrap().into_inner();
    assert_ne!(other.id, bob.id);
    assert_eq!(other.user_id, "bob:x");
    j.cancel_run(run_ref("ada", &first.id)).await.unwrap();
    let second = j.submit_execution(later).await.unwrap().into_inner();
    finished(&mut j, "ada", &second.id).await;
    let third = j
        .submit_execution(submission("ada", "3"))
        .await
        .unwrap()
        .into_inner();
    finished(&mut j, "ada", &third.id).await;
    finished(&mut j, "bob", &bob.id).await;
    finished(&mut j, "bob:x", &other.id).await;
    // Four runs today (the refused ones not counted): the daily quota says so.
    let fourth = j
        .submit_execution(submission("ada", "4"))
        .await
        .unwrap()
        .into_inner();
    finished(&mut j, "ada", &fourth.id).await;
    let e = j
        .submit_execution(submission("ada", "5"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("runs today"), "{}", e.message());
    let refusals = audit(&mut j, "ada")
        .await
        .into_iter()
        .filter(|e| e.event == "quota_refused")
        .count();
    assert_eq!(refusals, 3);
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_cannot_see_another_runs_files_or_state() {
    let d = deployment("jobs-isolated", 2, "");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let mut j = jobs_client(w.grpc_addr).await;
    let writer = j
        .submit_execution(submission(
            "ada",
            "secret = 'ada-42'\nopen('secret.txt', 'w').write(secret)\nimport os\nprint(os.getcwd())",
        ))
        .await
        .unwrap()
        .into_inner();
    let writer = finished(&mut j, "ada", &writer.id).await;
    assert_eq!(writer.state, pb::RunState::Succeeded as i32, "{writer:?}");
    let reader = j
        .submit_execution(submission(
            "ada",
            "import os\nprint(os.path.exists('secret.txt'), 'secret.txt' in os.listdir('.'))\nprint('secret' in globals())",
        ))
        .await
        .unwrap()
        .into_inner();
    let reader = finished(&mut j, "ada", &reader.id).await;
    assert_eq!(reader.state, pb::RunState::Succeeded as i32, "{reader:?}");
    assert_eq!(stdout(&reader), "False False\nFalse\n");
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_submissions_on_a_few_pods_all_complete_exactly_once() {
    let runs: usize = std::env::var("NBP_JOBS_TEST_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let redis = RedisServer::start();
    let d = deployment(
        "jobs-many",
        8,
        "concurrency = 8\nuser_concurrent_runs = 0\nuser_runs_per_day = 0",
    );
    let w = d.replica(&redis.url(), &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 8).await;
    let j = jobs_client(w.grpc_addr).await;
    let submitted = futures_util::future::join_all((0..runs).map(|i| {
        let mut j = j.clone();
        async move {
            let mut r = submission(&format!("user-{}", i % 10), &format!("print({i} * 2)"));
            r.idempotency_key = format!("k-{i}");
            // A backend that retries every submission once: still one run each.
            let a = j.submit_execution(r.clone()).await.unwrap().into_inner();
            let b = j.submit_execution(r).await.unwrap().into_inner();
            assert_eq!(a.id, b.id);
            (i, a)
        }
    }))
    .await;
    // Every run takes a fresh pod, and starting one (Middleman and ipykernel, debug builds) is
    // what bounds the rate here: about one run a second on two cores.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + 5 * runs as u64);
    let mut pods = HashSet::new();
    for (i, run) in submitted {
        let mut j = j.clone();
        let run = finished_by(&mut j, &run.user_id, &run.id, deadline).await;
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
        assert_eq!(run.attempts.len(), 1, "{run:?}");
        assert_eq!(stdout(&run), format!("{}\n", i * 2));
        assert!(pods.insert(run.pod.clone()), "pod {} ran twice", run.pod);
    }
    let total: usize = futures_util::future::join_all((0..10).map(|u| {
        let mut j = j.clone();
        async move {
            j.list_runs(pb::ListRunsRequest {
                user_id: format!("user-{u}"),
                limit: 500,
            })
            .await
            .unwrap()
            .into_inner()
            .runs
            .len()
        }
    }))
    .await
    .into_iter()
    .sum();
    assert_eq!(total, runs, "exactly one run per submission");
    teardown(w).await;
}
