//! The tokio task behind `[tls.acme]`: the stored certificate is served first (no
//! order while it is good), then an order whenever the schedule says so — at once
//! without a certificate, at renewal time with one. A failed attempt (bounded in
//! time) is retried with backoff while the certificate in force keeps serving.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::Account;
use tokio::task::JoinHandle;

use super::error::AcmeError;
use super::http01::Http01Tokens;
use super::order::{Issued, Issuer};
use super::schedule::{Schedule, Validity};
use super::storage::Storage;
use crate::metrics::Metrics;
use crate::plan::AcmePlan;
use crate::tls::CertStore;
use crate::tls::certs::LoadedCert;

/// One attempt (account, order, validation, download) gives up after this long.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(600);

/// The longest single sleep: the wall clock is looked at again after it (a machine
/// that was suspended renews on time).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// What the task works with.
pub struct AcmeContext {
    pub plan: AcmePlan,
    /// The TLS listener's certificates (the ACME one is set here, challenge
    /// certificates too).
    pub store: Arc<CertStore>,
    pub tokens: Arc<Http01Tokens>,
    pub metrics: Metrics,
}

/// The running task; dropping it stops it.
pub struct AcmeTask {
    task: JoinHandle<()>,
}

impl Drop for AcmeTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the stored certificate, if it is good (before the first handshake), then
/// starts the task (on the current tokio runtime).
pub fn spawn(context: AcmeContext) -> AcmeTask {
    let plan = &context.plan;
    let storage = Storage::new(&plan.storage, &plan.directory, &plan.domains);
    let domains = plan.domains.join(", ");
    let mut served = None;
    match storage.load_certificate(&plan.domains) {
        Ok(Some(cert)) => {
            served = Some(validity(&cert));
            tracing::info!(
                domains = %domains,
                expires_in_days = cert.expires_in() / 86_400,
                path = %storage.cert_path().display(),
                "serving the stored ACME certificate"
            );
            install(&context.store, &context.metrics, cert);
        }
        Ok(None) => tracing::info!(
            domains = %domains,
            challenge = plan.challenge.as_str(),
            "no stored ACME certificate: ordering one"
        ),
        Err(e) => tracing::warn!("stored ACME certificate not used: {e}; ordering a new one"),
    }
    if !context.store.has_certificate() {
        tracing::warn!(
            domains = %domains,
            "the TLS listener has no certificate until the ACME order for these names succeeds: TLS handshakes fail until then"
        );
    }
    AcmeTask {
        task: tokio::spawn(run(context, storage, served)),
    }
}

/// Orders whenever the schedule says so, forever.
async fn run(context: AcmeContext, storage: Storage, mut served: Option<Validity>) {
    let AcmeContext {
        plan,
        store,
        tokens,
        metrics,
    } = context;
    let schedule = Schedule {
        renew_before: plan.renew_before,
        retry_min: plan.retry_min,
        retry_max: plan.retry_max,
    };
    let domains = plan.domains.join(", ");
    let issuer = Issuer {
        plan: &plan,
        storage: &storage,
        store: &store,
        tokens: &tokens,
    };
    let mut account = None;
    let mut failures = 0u32;
    let mut retry_at = None;
    loop {
        let wait = schedule.wait(now_secs(), served, retry_at);
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(MAX_SLEEP)).await;
            continue;
        }
        tracing::info!(domains = %domains, renewal = served.is_some(), "ACME order started");
        let attempt = tokio::time::timeout(ATTEMPT_LIMIT, attempt(&issuer, &mut account));
        let result = attempt.await.unwrap_or_else(|_| {
            Err(AcmeError::Timeout {
                domains: domains.clone(),
                secs: ATTEMPT_LIMIT.as_secs(),
            })
        });
        match result {
            Ok(Issued { cert, pem }) => {
                failures = 0;
                retry_at = None;
                metrics.acme_orders.with_label_values(&["issued"]).inc();
                if let Err(e) = storage.save_certificate(&pem) {
                    tracing::error!(
                        "{e}: the new certificate is served but not stored (a restart orders another)"
                    );
                }
                served = Some(validity(&cert));
                tracing::info!(
                    domains = %domains,
                    expires_in_days = cert.expires_in() / 86_400,
                    "ACME certificate issued and served"
                );
                install(&store, &metrics, cert);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics.acme_orders.with_label_values(&["failed"]).inc();
                if e.account_is_gone() {
                    account = None;
                    if let Err(e) = storage.forget_account() {
                        tracing::warn!("{e}");
                    }
                }
                let delay = schedule.retry_delay(failures, rand::random::<f64>());
                retry_at = Some(now_secs() + delay.as_secs_f64().ceil() as u64);
                let keeping = if served.is_some() {
                    "the certificate in force keeps serving"
                } else {
                    "these names still have no certificate"
                };
                tracing::error!(
                    failures,
                    retry_in_s = delay.as_secs(),
                    "ACME certificate not obtained: {e}; {keeping}"
                );
            }
        }
    }
}

/// The cached account (one per task), else the stored or a new one.
async fn attempt(issuer: &Issuer<'_>, account: &mut Option<Account>) -> Result<Issued, AcmeError> {
    let current = match account {
        Some(current) => current.clone(),
        None => account.insert(issuer.account().await?).clone(),
    };
    issuer.issue(&current).await
}

/// Serves `cert` as the ACME certificate and publishes the expiry metrics.
fn install(store: &CertStore, metrics: &Metrics, cert: LoadedCert) {
    store.set_acme(vec![cert]);
    crate::tls::publish_expiry(metrics, store);
}

fn validity(cert: &LoadedCert) -> Validity {
    Validity {
        not_before: cert.not_before,
        not_after: cert.not_after,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
