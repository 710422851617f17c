//! Notebook runs, schedules and webhooks, end to end: Watchman with the local backend (real
//! Middleman and ipykernel processes), a real Redis for the failover, and a real HTTP receiver
//! for the webhooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::jobs::*;
use common::*;
use futures_util::StreamExt as _;

use serde_json::{Value, json};
use testkit::RedisServer;
use tonic::Code;
use watchman::jobs::model::Run;
use watchman_proto::v1 as pb;

/// An nbformat 4.5 notebook of code cells, each with its tags.
fn notebook(cells: &[(&[&str], &str)]) -> Value {
    json!({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": cells.iter().enumerate().map(|(i, (tags, source))| json!({
            "id": format!("c{i}"), "cell_type": "code", "metadata": {"tags": tags},
            "source": source, "outputs": [], "execution_count": null,
        })).collect::<Vec<_>>(),
    })
}

fn notebook_run(user: &str, nb: &Value, parameters: &Value) -> pb::SubmitNotebookRunRequest {
    pb::SubmitNotebookRunRequest {
        user_id: user.into(),
        plan: "free".into(),
        notebook_json: nb.to_string(),
        parameters_json: parameters.to_string(),
        ..Default::default()
    }
}

/// The text of a cell's stream outputs.
fn cell_stdout(cell: &Value) -> String {
    cell["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["output_type"] == "stream")
        .map(|o| match &o["text"] {
            Value::String(s) => s.clone(),
            Value::Array(lines) => lines.iter().map(|l| l.as_str().unwrap()).collect(),
            _ => String::new(),
        })
        .collect()
}

fn source(cell: &Value) -> String {
    match &cell["source"] {
        Value::String(s) => s.clone(),
        Value::Array(lines) => lines.iter().map(|l| l.as_str().unwrap()).collect(),
        _ => String::new(),
    }
}

fn injected(cells: &[Value]) -> Vec<usize> {
    cells
        .iter()
        .enumerate()
        .filter(|(_, c)| source(c).starts_with(watchman::jobs::params::INJECTED_HEADER))
        .map(|(i, _)| i)
        .collect()
}

fn invalid(e: &tonic::Status, says: &str) {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains(says),
        "{:?} lacks {says:?}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notebook_runs_with_its_parameters_injected_and_comes_back_executed() {
    let d = deployment("nb-upload", 2, "max_notebook_kib = 64");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let mut j = jobs_client(w.grpc_addr).await;
    let nb = notebook(&[
        (&["parameters"], "alpha = 1\nname = 'nobody'"),
        (&[], "print(name, alpha * 2)"),
        (&[], "alpha"),
    ]);
    let queued = j
        .submit_notebook_run(notebook_run(
            "ada",
            &nb,
            &json!({"alpha": 21, "name": "Grace \"G\""}),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(queued.is_notebook);
    let run = finished(&mut j, "ada", &queued.id).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    let done: Value = serde_json::from_str(&run.result_notebook_json).unwrap();
    let cells = done["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4, "{done}");
    assert_eq!(
        injected(cells),
        [1],
        "the injected cell follows the parameters cell"
    );
    assert!(
        cells[1]["metadata"]["tags"]
            .as_array()
            .unwrap()
            .contains(&json!("injected-parameters"))
    );
    assert_eq!(cell_stdout(&cells[2]), "Grace \"G\" 42\n");
    assert_eq!(cells[3]["outputs"][0]["data"]["text/plain"], "21");

    // Its receipt covers the uploaded notebook and the executed one.
    let (status, body) = http(
        w.http_addr,
        "GET",
        &format!("/v1/runs/{}?user_id=ada", run.id),
        API_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let full: Run = serde_json::from_str(&body).unwrap();
    let key = public_key(&d);
    watchman::jobs::receipt::verify(full.receipt.as_ref().unwrap(), &key, Some(&full)).unwrap();
    let mut tampered = full.clone();
    tampered.result_notebook.as_mut().unwrap()["cells"][2]["outputs"] = json!([]);
    assert!(
        watchman::jobs::receipt::verify(tampered.receipt.as_ref().unwrap(), &key, Some(&tampered))
            .is_err()
    );

    // A cell that raises fails the run, which is not retried.
    let failing = notebook(&[(&[], "x = 1"), (&[], "1 / 0"), (&[], "y = 2")]);
    let queued = j
        .submit_notebook_run(notebook_run("ada", &failing, &json!({})))
        .await
        .unwrap()
        .into_inner();
    let run = finished(&mut j, "ada", &queued.id).await;
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
    assert!(run.exit_reason.contains("ZeroDivisionError"), "{run:?}");
    assert_eq!(run.attempts.len(), 1);
    // So does a cell that may not run at all.
    let broken = notebook(&[(&[], "x = 1"), (&[], "def f(:\n    pass")]);
    let queued = j
        .submit_notebook_run(notebook_run("ada", &broken, &json!({})))
        .await
        .unwrap()
        .into_inner();
    let run = finished(&mut j, "ada", &queued.id).await;
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
    assert!(run.exit_reason.contains("may not run"), "{run:?}");

    // Bad input gets a clear error.
    let e = j
        .submit_notebook_run(notebook_run("ada", &nb, &json!({"beta": 2})))
        .await
        .unwrap_err();
    invalid(&e, "beta");
    invalid(&e, "alpha, name");
    let plain = notebook(&[(&[], "x = 1")]);
    let e = j
        .submit_notebook_run(notebook_run("ada", &plain, &json!({"x": 2})))
        .await
        .unwrap_err();
    invalid(&e, "tagged \"parameters\"");
    let e = j
        .submit_notebook_run(notebook_run("ada", &nb, &json!({"bad name": 2})))
        .await
        .unwrap_err();
    invalid(&e, "identifier");
    let mut not_json = notebook_run("ada", &nb, &json!({}));
    not_json.notebook_json = "{\"cells\": [".into();
    invalid(
        &j.submit_notebook_run(not_json).await.unwrap_err(),
        "not JSON",
    );
    let big = notebook(&[(&[], &"# padding\n".repeat(8000))]);
    invalid(
        &j.submit_notebook_run(notebook_run("ada", &big, &json!({})))
            .await
            .unwrap_err(),
        "at most 65536",
    );
    let mut stale = notebook_run("ada", &nb, &json!({}));
    stale.mode = pb::NotebookMode::Stale as i32;
    invalid(
        &j.submit_notebook_run(stale).await.unwrap_err(),
        "needs a document",
    );
    let mut both = notebook_run("ada", &nb, &json!({}));
    both.document = "report".into();
    invalid(&j.submit_notebook_run(both).await.unwrap_err(), "not both");
    let mut params = notebook_run("ada", &nb, &json!({}));
    params.parameters_json = "[1]".into();
    invalid(
        &j.submit_notebook_run(params).await.unwrap_err(),
        "JSON object",
    );
    teardown(w).await;
}

/// The endpoint of an allocation's Middleman, for its HTTP API.
fn endpoint(a: &pb::Allocation) -> String {
    a.websocket_url
        .replacen("ws", "http", 1)
        .trim_end_matches("/ws")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_a_document_writes_its_outputs_there_live_for_anyone_watching() {
    let d = deployment("nb-document", 2, "");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let mut j = jobs_client(w.grpc_addr).await;
    let a = c
        .allocate(allocate_req("report", 60_000))
        .await
        .unwrap()
        .into_inner();
    let http_client = reqwest::Client::new();
    let nb = notebook(&[
        (&["parameters"], "city = 'nowhere'\nn = 0"),
        (&[], "print(f'{city}: {n * 2}')"),
    ]);
    let imported = http_client
        .put(format!("{}/api/notebook?token={}", endpoint(&a), a.token))
        .body(nb.to_string())
        .send()
        .await
        .unwrap();
    assert!(imported.status().is_success(), "{imported:?}");

    // Someone watches the document while the run goes on.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}?token={}", a.websocket_url, a.token))
            .await
            .unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "output" && v["output"]["output_type"] == "stream" {
                        seen.lock()
                            .unwrap()
                            .push(v["output"]["text"].as_str().unwrap().to_owned());
                    }
                }
            }
            let _ = ws.close(None).await;
        })
    };
    let export = async || -> Vec<Value> {
        let text = http_client
            .get(format!("{}/api/notebook?token={}", endpoint(&a), a.token))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let nb: Value = serde_json::from_str(&text).unwrap();
        nb["cells"].as_array().unwrap().clone()
    };
    let on_document = |parameters: Value| pb::SubmitNotebookRunRequest {
        user_id: "ada".into(),
        plan: "free".into(),
        document: "report".into(),
        parameters_json: parameters.to_string(),
        ..Default::default()
    };

    let first = j
        .submit_notebook_run(on_document(json!({"city": "Oslo", "n": 21})))
        .await
        .unwrap()
        .into_inner();
    let first = finished(&mut j, "ada", &first.id).await;
    assert_eq!(first.state, pb::RunState::Succeeded as i32, "{first:?}");
    assert_eq!(first.pod, a.pod, "a document runs on its own pod");
    let cells = export().await;
    assert_eq!(injected(&cells), [1], "{cells:?}");
    assert_eq!(cell_stdout(&cells[2]), "Oslo: 42\n");
    // The watcher saw the output as it came.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.lock().unwrap().iter().any(|s| s == "Oslo: 42\n") {
        assert!(tokio::time::Instant::now() < deadline, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Again with other parameters: the injected cell is replaced, not added to.
    let second = j
        .submit_notebook_run(on_document(json!({"city": "Rome"})))
        .await
        .unwrap()
        .into_inner();
    let second = finished(&mut j, "ada", &second.id).await;
    assert_eq!(second.state, pb::RunState::Succeeded as i32, "{second:?}");
    let cells = export().await;
    assert_eq!(injected(&cells), [1], "{cells:?}");
    assert_eq!(cell_stdout(&cells[2]), "Rome: 0\n");

    // Without parameters the defaults hold again: the injected cell goes.
    let third = j
        .submit_notebook_run(on_document(json!({})))
        .await
        .unwrap()
        .into_inner();
    let third = finished(&mut j, "ada", &third.id).await;
    assert_eq!(third.state, pb::RunState::Succeeded as i32, "{third:?}");
    let cells = export().await;
    assert!(injected(&cells).is_empty(), "{cells:?}");
    assert_eq!(cell_stdout(&cells[1]), "nowhere: 0\n");

    // Stale cells only: nothing changed since, so nothing runs.
    let mut stale = on_document(json!({}));
    stale.mode = pb::NotebookMode::Stale as i32;
    let stale = j.submit_notebook_run(stale).await.unwrap().into_inner();
    let stale = finished(&mut j, "ada", &stale.id).await;
    assert_eq!(stale.state, pb::RunState::Succeeded as i32, "{stale:?}");
    assert!(stale.exit_reason.starts_with("0 cell"), "{stale:?}");

    // Parameters the document does not take fail the run, as the user's error.
    let wrong = j
        .submit_notebook_run(on_document(json!({"country": "NO"})))
        .await
        .unwrap()
        .into_inner();
    let wrong = finished(&mut j, "ada", &wrong.id).await;
    assert_eq!(wrong.state, pb::RunState::Failed as i32, "{wrong:?}");
    assert!(wrong.exit_reason.contains("country"), "{wrong:?}");
    assert_eq!(wrong.attempts.len(), 1);
    watcher.abort();
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_on_time_across_a_leader_failover_with_no_duplicate_and_no_gap() {
    let redis = RedisServer::start();
    let d = deployment("nb-schedule", 2, "");
    let w1 = d.replica(&redis.url(), &[]).await;
    let w2 = d.replica(&redis.url(), &[]).await;
    let mut c = client(w1.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let mut j = jobs_client(w1.grpc_addr).await;

    // Bad schedules are refused, each with what is wrong.
    let schedule = |cron: &str, tz: &str| pb::CreateScheduleRequest {
        schedule: Some(pb::Schedule {
            user_id: "ada".into(),
            plan: "free".into(),
            document: "dash".into(),
            cron: cron.into(),
            time_zone: tz.into(),
            missed: pb::MissedRuns::All as i32,
            ..Default::default()
        }),
    };
    invalid(
        &j.create_schedule(schedule("61 * * * *", ""))
            .await
            .unwrap_err(),
        "minute",
    );
    invalid(
        &j.create_schedule(schedule("* * * *", ""))
            .await
            .unwrap_err(),
        "5 fields",
    );
    invalid(
        &j.create_schedule(schedule("@daily", "Mars/Olympus"))
            .await
            .unwrap_err(),
        "time zone",
    );
    let mut bad_plan = schedule("@daily", "");
    bad_plan.schedule.as_mut().unwrap().plan = "gold".into();
    invalid(
        &j.create_schedule(bad_plan).await.unwrap_err(),
        "unknown plan",
    );

    // Every second (the lease lasts 2 s, so due times fall due while no replica leads), created
    // through the HTTP API.
    let (status, body) = http(
        w1.http_addr,
        "POST",
        "/v1/schedules",
        API_TOKEN,
        r#"{"user_id":"ada","plan":"free","document":"dash","cron":"* * * * * *","time_zone":"Europe/Paris","missed":"all"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["next_due_ms"].as_u64().unwrap() > 0);
    let foreign = j
        .get_schedule(pb::ScheduleRef {
            user_id: "bob".into(),
            schedule_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);

    let fired = async |j: &mut Jobs| -> Vec<pb::Run> {
        j.list_runs(pb::ListRunsRequest {
            user_id: "ada".into(),
            limit: 500,
        })
        .await
        .unwrap()
        .into_inner()
        .runs
        .into_iter()
        .filter(|r| r.schedule_id == id)
        .collect()
    };
    let wait_for = async |j: &mut Jobs, n: usize| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let runs = fired(j).await;
            if runs.len() >= n {
                return runs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} fired",
                runs.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let before = wait_for(&mut j, 3).await.len();
    // The leader stops, as if it crashed; the other replica takes over and catches up.
    let (leader, follower) = if w1.reconciler.borrow().leading {
        (w1, w2)
    } else {
        (w2, w1)
    };
    leader.stop().await;
    let mut j = jobs_client(follower.grpc_addr).await;
    wait_for(&mut j, before + 6).await;
    // Paused over HTTP (an unknown action is no route of its own).
    let (status, _) = http(
        follower.http_addr,
        "POST",
        &format!("/v1/schedules/{id}/stop?user_id=ada"),
        API_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = http(
        follower.http_addr,
        "POST",
        &format!("/v1/schedules/{id}/pause?user_id=ada"),
        API_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["paused"], true);
    assert_eq!(s["next_due_ms"], 0);
    let runs = fired(&mut j).await;

    let mut dues: Vec<u64> = runs.iter().map(|r| r.due_at_ms).collect();
    dues.sort_unstable();
    let unique: std::collections::BTreeSet<u64> = dues.iter().copied().collect();
    assert_eq!(unique.len(), dues.len(), "a due time fired twice: {dues:?}");
    for pair in dues.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "a due time was skipped: {dues:?}");
    }
    for r in &runs {
        assert!(r.queued_at_ms >= r.due_at_ms, "fired early: {r:?}");
        assert!(r.is_notebook && r.document == "dash");
    }
    // How late each fired (not asserted: this machine is shared), for the record.
    let mut late: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| (r.due_at_ms, r.queued_at_ms - r.due_at_ms))
        .collect();
    late.sort_unstable();
    eprintln!("fired late by (ms), in due order: {late:?}");

    // Paused, it fires nothing; resumed, it fires again from the next due time. Due times pass
    // while it is paused (the sleep makes them, it asserts nothing); once a run after the
    // resume exists, every due time before it has been dealt with, so none of the paused
    // span's can still appear.
    let now_ms = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    };
    let paused_at = now_ms();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let resumed_at = now_ms();
    let s = j
        .resume_schedule(pb::ScheduleRef {
            user_id: "ada".into(),
            schedule_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!s.paused && s.next_due_ms > resumed_at);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let after = loop {
        let all = fired(&mut j).await;
        if all.iter().any(|r| r.due_at_ms > resumed_at) {
            break all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing fired after the resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let while_paused: Vec<u64> = after
        .iter()
        .map(|r| r.due_at_ms)
        .filter(|d| *d > paused_at && *d <= resumed_at)
        .collect();
    assert!(
        while_paused.is_empty(),
        "fired while paused: {while_paused:?}"
    );
    let gone = j
        .delete_schedule(pb::ScheduleRef {
            user_id: "ada".into(),
            schedule_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.id, id);
    let entries = audit(&mut j, "ada").await;
    for event in ["schedule_created", "schedule_paused", "schedule_deleted"] {
        assert!(entries.iter().any(|e| e.event == event), "{event}");
    }
    teardown(follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_arrives_signed_and_is_retried_after_a_5xx() {
    use axum::http::{HeaderMap, StatusCode};
    type Got = Arc<Mutex<Vec<(HeaderMap, String)>>>;
    let got: Got = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(got): axum::extract::State<Got>,
                 headers: HeaderMap,
                 body: String| async move {
                    let mut got = got.lock().unwrap();
                    got.push((headers, body));
                    // The first delivery meets an outage.
                    if got.len() == 1 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::NO_CONTENT
                    }
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let d = deployment("nb-webhook", 1, "");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    let mut j = jobs_client(w.grpc_addr).await;
    let secret = "a-secret-of-the-receiver";
    let mut request = notebook_run("ada", &notebook(&[(&[], "print('done')")]), &json!({}));
    request.webhook = Some(pb::Webhook {
        url: format!("http://{hook_addr}/hook"),
        secret: secret.into(),
        on_success: true,
        on_failure: true,
    });
    let queued = j
        .submit_notebook_run(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        queued.webhook.as_ref().unwrap().secret,
        "",
        "the secret is never shown back"
    );
    let run = finished(&mut j, "ada", &queued.id).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "not retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deliveries = got.lock().unwrap().clone();
    for (headers, body) in &deliveries {
        assert_eq!(headers["webhook-id"], run.id.as_str());
        let timestamp = headers["webhook-timestamp"].to_str().unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = ring::hmac::sign(&key, format!("{timestamp}.{body}").as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(headers["webhook-signature"], format!("v1={hex}").as_str());
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["run"]["id"], run.id.as_str());
        assert_eq!(v["run"]["state"], "succeeded");
    }
    // A bad webhook is refused at submission.
    request.webhook.as_mut().unwrap().secret = "short".into();
    invalid(&j.submit_notebook_run(request).await.unwrap_err(), "secret");
    server.abort();
    teardown(w).await;
}
