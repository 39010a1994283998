//! One issuance, in the order RFC 8555 sets: the account (stored, else created and
//! stored), a new order for the domains, per pending authorization the configured
//! challenge set up and announced, the order polled until ready, a CSR for a fresh
//! ECDSA P-256 key, the chain polled and downloaded, and both checked before use.
//! Challenge answers are withdrawn however the attempt ends.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use super::error::AcmeError;
use super::http::AcmeHttp;
use super::http01::Http01Tokens;
use super::storage::{PemPair, Storage, names_match};
use super::tls_alpn;
use crate::config::AcmeChallenge;
use crate::plan::AcmePlan;
use crate::tls::CertStore;
use crate::tls::certs::{self, LoadedCert};

/// How long the CA may take to validate the challenges.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the CA may take to issue once the order is finalized.
const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(120);

/// What one attempt needs.
pub struct Issuer<'a> {
    pub plan: &'a AcmePlan,
    pub storage: &'a Storage,
    /// Where tls-alpn-01 challenge certificates are served from.
    pub store: &'a CertStore,
    /// Where http-01 answers are served from.
    pub tokens: &'a Http01Tokens,
}

/// A certificate just issued: checked, and as PEM for storage.
pub struct Issued {
    pub cert: LoadedCert,
    pub pem: PemPair,
}

impl Issuer<'_> {
    fn domains(&self) -> String {
        self.plan.domains.join(", ")
    }

    /// The stored account, else a new one (stored at once, so a restart reuses it).
    pub async fn account(&self) -> Result<Account, AcmeError> {
        let directory = &self.plan.directory;
        let account_error = |source| AcmeError::Account {
            directory: directory.clone(),
            source,
        };
        let http = || Box::new(AcmeHttp::new(self.plan.directory_tls.clone()));
        if let Some(credentials) = self.storage.load_account()? {
            return Account::builder_with_http(http())
                .from_credentials(credentials)
                .await
                .map_err(account_error);
        }
        let contact: Vec<&str> = self.plan.contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(http())
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                None,
            )
            .await
            .map_err(account_error)?;
        self.storage.save_account(&credentials)?;
        tracing::info!(directory = %directory, account = %account.id(), "ACME account created");
        Ok(account)
    }

    /// Orders, validates and downloads a certificate for the plan's domains.
    pub async fn issue(&self, account: &Account) -> Result<Issued, AcmeError> {
        let domains = self.domains();
        let identifiers: Vec<Identifier> = self
            .plan
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|source| AcmeError::NewOrder {
                domains: domains.clone(),
                source,
            })?;
        let mut answers = Answers {
            store: self.store,
            tokens: self.tokens,
            http01: Vec::new(),
            tls_alpn01: Vec::new(),
        };
        self.answer_challenges(&mut order, &mut answers).await?;
        let status = order
            .poll_ready(&poll(VALIDATION_TIMEOUT))
            .await
            .map_err(|e| AcmeError::Validation {
                domains: domains.clone(),
                reason: e.to_string(),
            })?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Validation {
                domains,
                reason: why_invalid(&mut order).await,
            });
        }
        drop(answers);
        let key = KeyPair::generate().map_err(|e| AcmeError::Finalize {
            domains: domains.clone(),
            reason: format!("key pair: {e}"),
        })?;
        let csr = csr(&self.plan.domains, &key).map_err(|reason| AcmeError::Finalize {
            domains: domains.clone(),
            reason,
        })?;
        order
            .finalize_csr(&csr)
            .await
            .map_err(|e| AcmeError::Finalize {
                domains: domains.clone(),
                reason: e.to_string(),
            })?;
        let chain = order
            .poll_certificate(&poll(ISSUANCE_TIMEOUT))
            .await
            .map_err(|source| AcmeError::Download {
                domains: domains.clone(),
                source,
            })?;
        let pem = PemPair {
            chain,
            key: key.serialize_pem(),
        };
        let cert = certs::from_pem(
            pem.chain.as_bytes(),
            pem.key.as_bytes(),
            &format!("the chain issued for {domains}"),
            "its new key",
        )
        .map_err(|source| AcmeError::Certificate {
            domains: domains.clone(),
            source,
        })?;
        if !names_match(&cert.names, &self.plan.domains) {
            return Err(AcmeError::WrongNames {
                domains,
                names: cert.names,
            });
        }
        Ok(Issued { cert, pem })
    }

    /// Sets up and announces the configured challenge of every pending authorization.
    async fn answer_challenges(
        &self,
        order: &mut Order,
        answers: &mut Answers<'_>,
    ) -> Result<(), AcmeError> {
        let (kind, name) = match self.plan.challenge {
            AcmeChallenge::Http01 => (ChallengeType::Http01, "http-01"),
            AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|source| AcmeError::Authorization {
                domain: self.domains(),
                source,
            })?;
            let domain = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                // Validated earlier (the CA reuses recent authorizations).
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::AuthorizationState {
                        domain,
                        status: format!("{other:?}").to_ascii_lowercase(),
                    });
                }
            }
            let mut challenge =
                authz
                    .challenge(kind.clone())
                    .ok_or_else(|| AcmeError::NoChallenge {
                        domain: domain.clone(),
                        challenge: name,
                    })?;
            let key_authorization = challenge.key_authorization();
            match self.plan.challenge {
                AcmeChallenge::Http01 => {
                    answers.http01(&challenge.token, key_authorization.as_str());
                }
                AcmeChallenge::TlsAlpn01 => {
                    let digest = key_authorization.digest();
                    let cert = tls_alpn::challenge_certificate(&domain, digest.as_ref()).map_err(
                        |reason| AcmeError::ChallengeSetup {
                            domain: domain.clone(),
                            challenge: name,
                            reason,
                        },
                    )?;
                    answers.tls_alpn01(&domain, cert);
                }
            }
            tracing::debug!(domain = %domain, challenge = name, "ACME challenge ready");
            challenge
                .set_ready()
                .await
                .map_err(|source| AcmeError::Authorization {
                    domain: domain.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Polling every 250 ms, growing by half each time, for at most `timeout`.
fn poll(timeout: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(timeout)
}

/// A CSR for `domains` (no subject: the names are in subjectAltName), DER.
fn csr(domains: &[String], key: &KeyPair) -> Result<Vec<u8>, String> {
    let mut params =
        CertificateParams::new(domains.to_vec()).map_err(|e| format!("CSR names: {e}"))?;
    params.distinguished_name = DistinguishedName::new();
    let request = params
        .serialize_request(key)
        .map_err(|e| format!("CSR: {e}"))?;
    Ok(request.der().to_vec())
}

/// What the CA said about each failed challenge of an invalid order.
async fn why_invalid(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if authz.refresh().await.is_err() {
            continue;
        }
        let domain = authz.identifier().to_string();
        for challenge in &authz.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(format!("{domain}: {problem}"));
            }
        }
    }
    if reasons.is_empty() {
        let error = order.state().error.as_ref().map(ToString::to_string);
        error.unwrap_or_else(|| "the order became invalid".to_owned())
    } else {
        reasons.join("; ")
    }
}

/// The challenge answers of one attempt, withdrawn when it ends (however it ends).
struct Answers<'a> {
    store: &'a CertStore,
    tokens: &'a Http01Tokens,
    http01: Vec<String>,
    tls_alpn01: Vec<String>,
}

impl Answers<'_> {
    fn http01(&mut self, token: &str, key_authorization: &str) {
        self.tokens.insert(token, key_authorization);
        self.http01.push(token.to_owned());
    }

    fn tls_alpn01(&mut self, domain: &str, cert: std::sync::Arc<rustls::sign::CertifiedKey>) {
        self.store.set_challenge(domain, Some(cert));
        self.tls_alpn01.push(domain.to_owned());
    }
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for token in &self.http01 {
            self.tokens.remove(token);
        }
        for domain in &self.tls_alpn01 {
            self.store.set_challenge(domain, None);
        }
    }
}
