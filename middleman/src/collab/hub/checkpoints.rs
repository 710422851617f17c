//! The hub's part of checkpoints (`crate::checkpoint`): the resume, when the document is loaded
//! on a new kernel, and the last save at shutdown.
//!
//! Resume: the manifest is read; its objects are put into the kernel's checkpoint directory
//! (through the workspace's rules) and the kernel loads them, ahead of any execution. Then the
//! cells that define what could not come back run again, and only they (the reactor's resume
//! plan); the cells whose names are back keep their outputs and counts and count as run in the
//! new kernel. Everyone sees one `resumed` event saying all of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{Answer, Hub, Outgoing, set_cell_state};
use crate::checkpoint::manifest::{self, Manifest, Object, PlanCell};
use crate::checkpoint::{Checkpoints, local_object};
use crate::document::CellState;
use crate::graph::reactor::Event;
use crate::kernel::{Command, Question, Quiet};
use crate::protocol::{
    KernelState, LostName, RerunCell, RestoredNames, Resume, ServerEvent, StateCause,
};

/// How long a resume waits for the kernel to be up before it puts the objects in place.
const KERNEL_WAIT: Duration = Duration::from_secs(60);

/// Names not restored: name -> (its cell, why).
type Missing = BTreeMap<String, (Option<String>, String)>;

impl Hub {
    /// Brings the kernel's names back from the document's checkpoint, if it has one: the
    /// objects are in place and the kernel's restore is sent before this returns (so it comes
    /// before any execution); what follows it runs in the background.
    pub(super) async fn resume(self: &Arc<Self>, checkpoints: Arc<Checkpoints>, document: &str) {
        let (manifest, fallback) = match checkpoints.load(document).await {
            Ok(None) => return,
            Ok(Some(m)) => (m, None),
            Err(error) => {
                tracing::warn!(%error, "the checkpoint cannot be used; its cells run again");
                metrics::counter!("middleman_checkpoint_resumes_total", "outcome" => "fallback")
                    .increment(1);
                (
                    Manifest::new(document),
                    Some(format!(
                        "the checkpoint could not be used ({error}); the cells that had run run again"
                    )),
                )
            }
        };
        self.wait_for_kernel().await;
        let mut missing: Missing = manifest
            .recompute
            .iter()
            .map(|(n, r)| (n.clone(), (r.cell.clone(), r.reason.clone())))
            .collect();
        let mut names = Vec::new();
        let workspace = &checkpoints.settings().workspace;
        let shas: Vec<String> = manifest.objects().into_iter().map(str::to_owned).collect();
        checkpoints
            .settings()
            .store
            .prepare(doc_store::Transfer::Get, &shas)
            .await;
        let files = checkpoints.restore_files(&manifest).await;
        for (name, saved) in &manifest.names {
            match &saved.object {
                Object::Module { module } => names.push(json!({"name": name, "module": module})),
                Object::Pickle { sha256, .. } => {
                    let fetched = async {
                        let path = local_object(sha256).map_err(|e| e.to_string())?;
                        let (upload, file) =
                            workspace.create_upload(&path).map_err(|e| e.to_string())?;
                        checkpoints
                            .settings()
                            .store
                            .get_object(
                                document,
                                sha256,
                                tokio::fs::File::from_std(file),
                                checkpoints.settings().max_name_bytes,
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                        upload.commit().map_err(|e| e.to_string())
                    }
                    .await;
                    match fetched {
                        Ok(()) => names.push(json!({"name": name, "sha256": sha256})),
                        Err(reason) => {
                            missing.insert(
                                name.clone(),
                                (
                                    saved.cell.clone(),
                                    format!("its checkpoint could not be read: {reason}"),
                                ),
                            );
                        }
                    }
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let restore = Quiet {
            question: Question {
                msg_type: "nbplat_request",
                content: json!({"op": "checkpoint_restore", "names": names}),
            },
            answer: tx,
        };
        self.lock().outbox.push_back(Outgoing {
            command: Command::Quiet(restore),
            answer: Answer::Nobody,
        });
        self.deliver().await;
        // What clients ask from now on waits until the cells to run again are queued.
        self.lock().resuming = true;
        let hub = self.clone();
        let timeout = checkpoints.settings().restore_timeout;
        tokio::spawn(async move {
            let answer = tokio::time::timeout(timeout, rx).await;
            hub.restored(checkpoints, manifest, missing, fallback, files, answer)
                .await;
        });
    }

    /// Waits (a bounded time) for a kernel to be up: the checkpoint directory is its.
    async fn wait_for_kernel(&self) {
        let mut watch = self.session.watch();
        let up = |s: &crate::kernel::SessionSnapshot| {
            matches!(s.kernel_state, KernelState::Idle | KernelState::Busy)
        };
        let _ = tokio::time::timeout(KERNEL_WAIT, watch.wait_for(up)).await;
    }

    /// The kernel answered the restore (or did not): decide what runs again and tell everyone.
    async fn restored(
        &self,
        checkpoints: Arc<Checkpoints>,
        manifest: Manifest,
        mut missing: Missing,
        fallback: Option<String>,
        files: (u32, Vec<(String, String)>),
        answer: Result<Result<Value, oneshot::error::RecvError>, tokio::time::error::Elapsed>,
    ) {
        let results: BTreeMap<String, Option<String>> = match &answer {
            Ok(Ok(v)) => v
                .get("names")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    let name = r.get("name")?.as_str()?.to_owned();
                    let failed = (r.get("status")?.as_str()? != "restored").then(|| {
                        r.get("reason")
                            .and_then(Value::as_str)
                            .unwrap_or("it could not be loaded")
                            .to_owned()
                    });
                    Some((name, failed))
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let why_not = match &answer {
            Ok(Ok(_)) => "the kernel did not report it",
            Ok(Err(_)) => "the kernel went away before restoring it",
            Err(_) => "the kernel took too long to restore it",
        };
        for (name, saved) in &manifest.names {
            let failed = match results.get(name) {
                Some(None) => continue,
                Some(Some(reason)) => format!("it could not be loaded: {reason}"),
                None => why_not.to_owned(),
            };
            missing
                .entry(name.clone())
                .or_insert((saved.cell.clone(), failed));
        }
        checkpoints.forget(missing.keys().cloned()).await;
        // The kernel has its objects now; they are in the store.
        let workspace = &checkpoints.settings().workspace;
        for sha in manifest.objects() {
            if let Ok(path) = local_object(sha) {
                let _ = workspace.delete(&path);
            }
        }
        // The new kernel's session is announced before it answers anything; let the hub
        // record it first, so the restored cells count as run in it.
        for _ in 0..500 {
            if !self.lock().mirror.kernel_session.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        {
            let mut st = self.lock();
            let st = &mut *st;
            let session = st.mirror.kernel_session.clone();
            let graph = &st.deps.graph;
            let runtimes = st.edits.nb.runtimes();
            let sets: Vec<(String, BTreeSet<String>, BTreeSet<String>, bool)> = graph
                .cells()
                .iter()
                .map(|c| {
                    let ran = runtimes.get(&c.id).is_some_and(|r| {
                        r.last_run.is_some()
                            && (r.state == CellState::Idle
                                || (r.state == CellState::Stale
                                    && r.cause == Some(StateCause::NotInKernel)))
                    });
                    (
                        c.id.clone(),
                        c.defs.iter().cloned().collect(),
                        c.refs.iter().cloned().collect(),
                        ran,
                    )
                })
                .collect();
            let cells: Vec<PlanCell<'_>> = sets
                .iter()
                .map(|(id, defs, refs, ran)| PlanCell {
                    id,
                    defs,
                    refs,
                    ran: *ran,
                })
                .collect();
            let plan = manifest::rerun(&cells, &manifest, &missing, |set| graph.order_of(set));
            let rerun_ids: BTreeSet<&str> = plan.cells.iter().map(|c| c.0.as_str()).collect();
            // Restored: the names back, by cell.
            let mut by_cell: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
            for (name, saved) in &manifest.names {
                if !missing.contains_key(name) {
                    by_cell
                        .entry(saved.cell.clone())
                        .or_default()
                        .push(name.clone());
                }
            }
            // Cells that ran and are not run again show what the kernel has again.
            let back: Vec<String> = sets
                .iter()
                .filter(|(id, _, _, ran)| *ran && !rerun_ids.contains(id.as_str()))
                .map(|(id, ..)| id.clone())
                .collect();
            let restored: Vec<RestoredNames> = by_cell
                .into_iter()
                .map(|(cell_id, names)| RestoredNames { cell_id, names })
                .collect();
            let rerun: Vec<RerunCell> = plan
                .cells
                .iter()
                .map(|(cell_id, names, reason)| RerunCell {
                    cell_id: cell_id.clone(),
                    names: names.clone(),
                    reason: reason.clone(),
                })
                .collect();
            let lost: Vec<LostName> = plan
                .lost
                .iter()
                .map(|(name, cell_id, reason)| LostName {
                    name: name.clone(),
                    cell_id: cell_id.clone(),
                    reason: reason.clone(),
                })
                .collect();
            let rerun_cells: Vec<String> = plan.cells.iter().map(|c| c.0.clone()).collect();
            for id in &back {
                if let Ok(r) = st.edits.nb.runtime_mut(id)
                    && let Some(run) = r.last_run.as_mut()
                {
                    run.kernel_session.clone_from(&session);
                }
                set_cell_state(st, id, CellState::Idle, None);
            }
            tracing::info!(
                restored = restored.iter().map(|r| r.names.len()).sum::<usize>(),
                rerun = rerun.len(),
                lost = lost.len(),
                fallback = fallback.is_some(),
                "document resumed from its checkpoint"
            );
            if fallback.is_none() {
                metrics::counter!("middleman_checkpoint_resumes_total", "outcome" => "restored")
                    .increment(1);
            }
            let resume = Resume {
                restored,
                rerun,
                lost,
                fallback,
                files_restored: files.0,
                files_lost: files
                    .1
                    .into_iter()
                    .map(|(path, reason)| doc_protocol::LostFile { path, reason })
                    .collect(),
            };
            st.resumed = Some((session.clone(), resume.clone()));
            st.log.emit(ServerEvent::Resumed(resume));
            st.plan_by = "resume".to_owned();
            let waiting = st.outbox.len();
            self.react(
                st,
                Event::Resume {
                    cells: &rerun_cells,
                },
            );
            // The cells run again go before whatever clients asked meanwhile.
            let reruns: Vec<Outgoing> = st.outbox.drain(waiting..).collect();
            for rerun in reruns.into_iter().rev() {
                st.outbox.push_front(rerun);
            }
            st.resuming = false;
            self.touched(st);
        }
        self.deliver().await;
    }

    /// The last save, at shutdown: the execution in progress is interrupted (what it defines
    /// may be half done, so its names keep their last checkpoint), then every name is saved.
    /// Returns when it is stored, or when `deadline` passes.
    pub async fn final_checkpoint(&self, deadline: tokio::time::Instant) {
        let Some(checkpoints) = self.checkpoints.clone() else {
            return;
        };
        let Some(document) = self.lock().document.clone() else {
            return;
        };
        // A kernel that is not up has nothing to save (and would not answer).
        if !matches!(
            self.kernel().kernel_state,
            KernelState::Idle | KernelState::Busy
        ) {
            return;
        }
        let running = {
            let st = self.lock();
            st.mirror
                .executions
                .iter()
                .find(|e| e.running)
                .map(|e| e.cell_id.clone())
        };
        let mut except = Vec::new();
        if let Some(cell) = running {
            if let Some(id) = &cell
                && let Some(c) = self.lock().deps.graph.get(id)
            {
                except.clone_from(&c.defs);
            }
            let _ = self
                .session
                .send(Command::Interrupt {
                    by: "shutdown".into(),
                })
                .await;
        }
        let (done, stored) = oneshot::channel();
        let save = checkpoints.everything(&document, &except, done);
        if self.session.send(Command::Quiet(save)).await.is_err() {
            return;
        }
        match tokio::time::timeout_at(deadline, stored).await {
            Ok(_) => tracing::info!("last checkpoint stored"),
            Err(_) => tracing::warn!("the last checkpoint was not stored in time"),
        }
    }
}
