//! Jupyter's kernel protocol, spoken to stock Jupyter clients (JupyterLab, VS Code,
//! jupyter_server's gateway client) on `/jupyter/channels`: the WebSocket's two wire forms
//! (wire.rs), what their requests mean here (requests.rs), and the document's events as their
//! messages (translate.rs). A Jupyter connection is one more collaborator of the document: its
//! runs go through the hub's queue, limits and document like everyone's. The connection task
//! is `server/jupyter.rs`. See docs/jupyter.md.

pub mod requests;
pub mod translate;
pub mod wire;
