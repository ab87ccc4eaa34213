//! `rvs webhook`: the validating admission webhook for Ingresses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::networking::v1::{IngressClass, IngressClassSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rvs_kube::{ApiSource, WatchMetrics, WatchOptions, WatchScope};
use rvs_model::ingress::GatewayOptions;
use rvs_model::{ObjectSet, Origin, Sourced};
use rvs_webhook::{Existing, ReloadingCert};

#[derive(Args)]
pub struct WebhookArgs {
    /// The serving certificate (PEM), re-read when it changes.
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Check new Ingresses against the stored ones (host/path conflicts), read from the
    /// Kubernetes API (in-cluster, or --kubeconfig).
    #[arg(long)]
    kube: bool,
    /// The kubeconfig to use (implies --kube).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The IngressClass the gateways serve: other Ingresses are allowed untouched.
    #[arg(long, default_value = "rvs")]
    ingress_class: String,
    /// The gateways also serve Ingresses that name no class.
    #[arg(long)]
    watch_ingress_without_class: bool,
}

/// Without the API, each Ingress is checked on its own, as if the IngressClass existed.
struct Alone {
    class: Sourced<IngressClass>,
}

impl Alone {
    fn new(options: &GatewayOptions) -> Alone {
        let class = IngressClass {
            metadata: ObjectMeta {
                name: Some(options.ingress_class.clone()),
                ..Default::default()
            },
            spec: Some(IngressClassSpec {
                controller: Some(options.controller.clone()),
                ..Default::default()
            }),
        };
        Alone {
            class: Sourced::new(Origin::Api, class),
        }
    }
}

impl Existing for Alone {
    fn objects(&self) -> ObjectSet {
        ObjectSet {
            ingress_classes: vec![self.class.clone()],
            ..ObjectSet::default()
        }
    }
    fn ready(&self) -> bool {
        true
    }
}

struct FromApi(ApiSource);

impl Existing for FromApi {
    fn objects(&self) -> ObjectSet {
        self.0.objects()
    }
    fn ready(&self) -> bool {
        self.0.synced()
    }
}

pub async fn webhook(args: WebhookArgs) -> anyhow::Result<ExitCode> {
    let cert = ReloadingCert::new(args.tls_cert.clone(), args.tls_key.clone())
        .context("--tls-cert/--tls-key")?;
    let options = GatewayOptions {
        ingress_class: args.ingress_class.clone(),
        watch_without_class: args.watch_ingress_without_class,
        ..GatewayOptions::default()
    };
    let existing: Arc<dyn Existing> = if args.kube || args.kubeconfig.is_some() {
        let client = rvs_kube::connect(args.kubeconfig.as_deref())
            .await
            .context("--kube")?;
        let source = ApiSource::start(
            client,
            &WatchOptions {
                scope: WatchScope::IngressesOnly,
                ..Default::default()
            },
            WatchMetrics::default(),
        );
        Arc::new(FromApi(source))
    } else {
        tracing::info!("no --kube: Ingresses are checked one by one, not for conflicts");
        Arc::new(Alone::new(&options))
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen", args.listen))?;
    println!(
        "rvs: admission webhook on https://{}/validate-ingress",
        listener.local_addr()?
    );
    let stop = async {
        let _ = crate::run::shutdown_signal().wait().await;
    };
    rvs_webhook::serve(listener, Arc::new(cert), existing, options, stop).await;
    Ok(ExitCode::SUCCESS)
}
