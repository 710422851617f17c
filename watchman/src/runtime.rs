//! Wiring: arguments in, a started Watchman out (store, backend, election, reconciler, the
//! gRPC and HTTP servers), and its shutdown: one token that every server and task watches, and
//! one tracker that shutdown drains within the grace period.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::checkpoints;
use crate::config::{Args, BackendKind, StoreUrl};
use crate::service::{Election, Reconciler, ReconcilerStatus};
use crate::{backend, documents, grpc, grpc_conn, plan, service, store, web};

/// A started Watchman.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub watchman: service::Watchman,
    /// What the reconciler does (whether it leads, passes completed).
    pub reconciler: watch::Receiver<ReconcilerStatus>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    grace: std::time::Duration,
    delete_pods_on_exit: bool,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every server, stream and task ended within the grace period.
    Drained,
    /// The grace period ran out first (what was left is dropped with the runtime).
    GraceExpired,
}

impl Running {
    /// The token that stops everything when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for shutdown, then drains servers, streams and the reconciler within the grace
    /// period.
    pub async fn wait(self) -> Stopped {
        self.shutdown.cancelled().await;
        self.tracker.close();
        let stopped = match tokio::time::timeout(self.grace, self.tracker.wait()).await {
            Ok(()) => Stopped::Drained,
            Err(_) => {
                tracing::warn!(tasks = self.tracker.len(), "shutdown grace period ran out");
                Stopped::GraceExpired
            }
        };
        if self.delete_pods_on_exit {
            let _ = self.watchman.delete_all_pods().await;
        }
        tracing::info!("watchman stopped");
        stopped
    }

    /// Requests shutdown and waits for it.
    pub async fn stop(self) -> Stopped {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Loads everything, binds both listeners, and starts the servers and the reconciler.
pub async fn start(args: Args) -> anyhow::Result<Running> {
    // The process's TLS crypto is ring (object storage's client has none of its own); another
    // component (or test) may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut plans = plan::load_plans(&args.plans)?;
    let pem = std::fs::read_to_string(&args.signing_key)
        .with_context(|| format!("reading {}", args.signing_key.display()))?;
    let key = session_token::SigningKey::from_pem(&pem)?;
    let api_token = match (&args.api_token_file, &args.api_token) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_owned(),
        (None, Some(t)) => t.clone(),
        (None, None) => {
            anyhow::bail!("an API token is required: --api-token-file or WATCHMAN_API_TOKEN")
        }
    };
    anyhow::ensure!(
        api_token.len() >= 16,
        "the API token must be at least 16 characters"
    );
    let route_token = match &args.route_token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_owned();
            anyhow::ensure!(
                t.len() >= 16,
                "the route token must be at least 16 characters"
            );
            Some(t)
        }
        None => None,
    };
    let public = grpc::PublicUrl::parse(&args.public_url)?;

    let store = match &args.store {
        StoreUrl::Memory => store::Store::Memory(store::MemoryStore::default()),
        StoreUrl::Redis(url) => store::Store::Redis(
            store::RedisStore::connect_with(
                url,
                &args.redis_prefix,
                store::RedisOptions {
                    timeout: args.redis_timeout,
                    retry_for: args.redis_retry_for,
                },
            )
            .await
            .context("connecting to Redis")?,
        ),
    };

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Bound first: local pods are told where to read and save their documents.
    let http_listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding {}", args.http_listen))?;
    let http_addr = http_listener.local_addr()?;
    let document_store =
        args.document_store
            .clone()
            .unwrap_or_else(|| match args.store.shared_with_pods() {
                Some(url) => url.to_owned(),
                None => args.local_root.join("documents").display().to_string(),
            });
    let documents = Arc::new(
        documents::PodDocuments::new(
            key.clone(),
            doc_store::DocStore::open(&document_store, &args.pod_document_key_prefix, None)
                .await
                .with_context(|| format!("document store {document_store}"))?,
            args.max_document_bytes,
        )
        .with_deletions(store.clone()),
    );
    let checkpoint_spec = match args.checkpoint_store.as_deref() {
        Some("none") => None,
        Some(spec) => Some(spec.to_owned()),
        None => Some(args.local_root.join("checkpoints").display().to_string()),
    };
    let checkpoints = match checkpoint_spec {
        Some(spec) => {
            let backend = checkpoints::Backend::open(
                &spec,
                args.checkpoint_store_options.as_deref(),
                args.checkpoint_url_ttl,
            )
            .with_context(|| format!("checkpoint store {spec}"))?;
            tracing::info!(store = %spec, presigned = backend.presigns(), "pods' kernel checkpoints");
            Some(Arc::new(checkpoints::PodCheckpoints::new(
                documents.clone(),
                backend,
                store.clone(),
                args.max_checkpoint_object_mib << 20,
                args.max_checkpoint_mib << 20,
            )))
        }
        None => None,
    };
    let instance = args.instance.clone().unwrap_or_else(|| {
        format!(
            "watchman-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        )
    });
    // The Kubernetes backend elects with a Lease (what operators see with kubectl); the local
    // one with the store's lease.
    let (backend, election) = match args.backend {
        BackendKind::Local => (
            local_backend(&args, &key, http_addr, checkpoints.is_some())?,
            Election::store(store.clone(), instance, args.lease_ttl),
        ),
        BackendKind::Kubernetes => {
            let client = kube_client(&args).await?;
            let lease = backend::KubeLease::new(&client, &args.lease_namespace, &args.lease_name);
            tracing::info!(namespace = %args.pod_namespace, lease = %format!("{}/{}", args.lease_namespace, args.lease_name), "kubernetes backend");
            (
                kube_backend(
                    &args,
                    &key,
                    &client,
                    &shutdown,
                    &tracker,
                    checkpoints.is_some(),
                )?,
                Election::kube(lease, instance, args.lease_ttl),
            )
        }
    };

    // A plan that requires a sandbox level this host cannot give gets no pods at all.
    let mut refused_plans = BTreeMap::new();
    if let backend::Backend::Local(local) = &backend {
        for plan in plans.values() {
            if let Err(why) = local.check_sandbox(plan).await {
                tracing::error!(plan = %plan.name, required = %plan.sandbox, %why, "plan refused: its sandbox level cannot be met on this host");
                refused_plans.insert(plan.name.clone(), why.to_string());
            }
        }
    }
    plans.retain(|name, _| !refused_plans.contains_key(name));
    let plan_names: Vec<String> = plans.keys().cloned().collect();
    let settings = service::Settings {
        default_wait: args.default_wait,
        max_wait: args.max_wait,
        token_ttl: args.token_ttl,
        lease_ttl: args.lease_ttl,
        reconcile_interval: args.reconcile_interval,
        pod_startup_timeout: args.pod_startup_timeout,
        max_concurrent_starts: args.max_concurrent_starts,
        pod_create_rate: args.pod_create_rate,
        activity_interval: args.activity_interval,
        refused_plans,
    };
    let plans: Arc<BTreeMap<String, plan::Plan>> = Arc::new(plans);
    let retention: Arc<crate::retention::Retention> = Arc::new(crate::retention::Retention::new(
        store.clone(),
        documents.clone(),
        checkpoints.clone(),
        plans.clone(),
    ));
    tracker.spawn(
        retention
            .clone()
            .expire(args.checkpoint_sweep_interval, shutdown.clone())
            .instrument(tracing::info_span!("checkpoint_expiry")),
    );
    let watchman = service::Watchman::new(
        plans.clone(),
        store.clone(),
        backend.clone(),
        key.clone(),
        &settings,
    );
    let jupyter = crate::jupyter::JupyterApi::new(
        watchman.clone(),
        key.clone(),
        grpc::ApiAuth::new(&[&api_token]),
        Some(args.jupyter_default_plan.clone()).filter(|p| !p.is_empty()),
    );
    let jobs = crate::jobs::Jobs::new(
        watchman.clone(),
        retention.clone(),
        key,
        tracker.clone(),
        shutdown.clone(),
    );
    let reconciler = Reconciler::new(plans, store, backend, election, &settings);
    let reconciler_status = reconciler.status();
    tracker.spawn(
        jobs.clone()
            .run_scheduler(reconciler.status())
            .instrument(tracing::info_span!("scheduler")),
    );
    tracker.spawn(
        reconciler
            .run(shutdown.clone())
            .instrument(tracing::info_span!("reconciler")),
    );

    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("binding {}", args.grpc_listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<watchman_proto::v1::watchman_server::WatchmanServer<grpc::Api>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(watchman_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let api = tonic::service::interceptor::InterceptedService::new(
        watchman_proto::v1::watchman_server::WatchmanServer::new(
            grpc::Api::new(
                watchman.clone(),
                public.clone(),
                tracker.clone(),
                shutdown.clone(),
                checkpoints.clone(),
            )
            .with_retention(retention),
        )
        // Requests are a few names; nothing legitimate comes near this.
        .max_decoding_message_size(64 * 1024),
        grpc::ApiAuth::new(&[&api_token]),
    );
    let jobs_api = tonic::service::interceptor::InterceptedService::new(
        watchman_proto::v1::jobs_server::JobsServer::new(crate::grpc_jobs::JobsApi::new(
            jobs.clone(),
        ))
        // The largest plan's notebook (at most 32 MiB), with room for the message around it;
        // a run shown back holds its notebook and the executed one.
        .max_decoding_message_size(33 << 20)
        .max_encoding_message_size(80 << 20),
        grpc::ApiAuth::new(&[&api_token]),
    );
    let routes = tonic::service::interceptor::InterceptedService::new(
        watchman_proto::v1::routes_server::RoutesServer::new(grpc::RoutesApi::new(
            watchman.clone(),
            jupyter.clone(),
        ))
        .max_decoding_message_size(4 * 1024),
        grpc::ApiAuth::new(
            &std::iter::once(api_token.as_str())
                .chain(route_token.as_deref())
                .collect::<Vec<_>>(),
        ),
    );
    let mut grpc_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(grpc_conn::KEEPALIVE))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
        );
        if let Some(ca) = &args.tls_client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        grpc_server = grpc_server.tls_config(tls).context("TLS configuration")?;
        tracing::info!(mutual = args.tls_client_ca.is_some(), "gRPC API uses TLS");
    }
    {
        let s = shutdown.clone();
        tracker.spawn(
            async move {
                use tokio_stream::StreamExt as _;
                // The builder's tcp_nodelay only applies to listeners tonic binds itself.
                let incoming =
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener).map(|conn| {
                        conn.map(|tcp| {
                            if let Err(error) = tcp.set_nodelay(true) {
                                tracing::debug!(%error, "could not set TCP_NODELAY");
                            }
                            grpc_conn::GrpcConn::new(tcp)
                        })
                    });
                let served = grpc_server
                    .add_service(health)
                    .add_service(reflection)
                    .add_service(api)
                    .add_service(jobs_api)
                    .add_service(routes)
                    .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "grpc server failed");
                }
            }
            .instrument(tracing::info_span!("grpc", addr = %grpc_addr)),
        );
    }

    {
        let handle = telemetry::prometheus();
        service::register_metrics(&plan_names);
        jobs.register_metrics();
        crate::jupyter::register_metrics();
        let app = web::router(watchman.clone(), handle, args.dev_page, public)
            .merge(documents::routes(documents))
            .merge(crate::jupyter::routes(jupyter))
            .merge(crate::jobs::http::routes(
                jobs,
                grpc::ApiAuth::new(&[&api_token]),
            ));
        let app = match checkpoints.clone() {
            Some(c) => app.merge(checkpoints::routes(c)),
            None => app,
        };
        tracker.spawn(
            httpserve::serve(
                http_listener,
                app,
                shutdown.clone(),
                httpserve::Deadlines::default(),
            )
            .instrument(tracing::info_span!("http", addr = %http_addr)),
        );
    }
    tracing::info!(%grpc_addr, %http_addr, store = args.store.kind(), "watchman started");
    Ok(Running {
        grpc_addr,
        http_addr,
        watchman,
        reconciler: reconciler_status,
        shutdown,
        tracker,
        grace: args.shutdown_grace,
        delete_pods_on_exit: args.delete_pods_on_exit,
    })
}

fn local_backend(
    args: &Args,
    key: &session_token::SigningKey,
    http_addr: SocketAddr,
    pod_checkpoints: bool,
) -> anyhow::Result<backend::Backend> {
    std::fs::create_dir_all(&args.local_root)
        .with_context(|| format!("creating {}", args.local_root.display()))?;
    let public_key = args.local_root.join("public.pem");
    std::fs::write(&public_key, key.verifying_key().to_pem()?)?;
    let middleman_bin = match &args.middleman_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("middleman"),
    };
    // Middleman gets these and nothing else of Watchman's environment (which may hold the API
    // token); its kernel gets none of them.
    let mut env = Vec::new();
    for var in ["JUPYTER_PATH", "PATH", "HOME", "RUST_LOG", "LANG"] {
        if let Ok(v) = std::env::var(var) {
            env.push((var.to_owned(), v));
        }
    }
    let host = if http_addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        http_addr.ip()
    };
    Ok(backend::Backend::Local(backend::LocalBackend::new(
        backend::LocalSettings {
            middleman_bin,
            public_key,
            root: args.local_root.clone(),
            pool_id: args.pool_id.clone(),
            env,
            watchman_url: format!("http://{}", SocketAddr::new(host, http_addr.port())),
            checkpoints: pod_checkpoints,
            signing_key: key.clone(),
        },
    )))
}

/// The Kubernetes client: `--kubeconfig`, else in-cluster, `$KUBECONFIG` or `~/.kube/config`.
async fn kube_client(args: &Args) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster, $KUBECONFIG or ~/.kube/config)")?,
    };
    kube::Client::try_from(config).context("Kubernetes client")
}

fn kube_backend(
    args: &Args,
    key: &session_token::SigningKey,
    client: &kube::Client,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    checkpoints: bool,
) -> anyhow::Result<backend::Backend> {
    let settings = backend::KubeSettings {
        namespace: args.pod_namespace.clone(),
        pool_id: args.pool_id.clone(),
        default_image: args.pod_image.clone(),
        public_key_pem: key.verifying_key().to_pem()?,
        document_store: args.pod_document_store.clone(),
        checkpoints,
        signing_key: key.clone(),
        service_account: args.pod_service_account.clone(),
        delete_grace: args.pod_delete_grace,
        unreachable_toleration: args.pod_unreachable_toleration,
        extra_annotations: args.pod_annotations.iter().cloned().collect(),
    };
    Ok(backend::Backend::Kube(backend::KubeBackend::start(
        client, settings, shutdown, tracker,
    )))
}
