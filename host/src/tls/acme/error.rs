//! Why an ACME attempt failed: one variant per step, each naming the domains.

use crate::tls::certs::CertError;

/// A failed step of obtaining a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME account at {directory}: {source}")]
    Account {
        directory: String,
        source: instant_acme::Error,
    },
    #[error("new ACME order for {domains}: {source}")]
    NewOrder {
        domains: String,
        source: instant_acme::Error,
    },
    #[error("ACME authorization of {domain}: {source}")]
    Authorization {
        domain: String,
        source: instant_acme::Error,
    },
    #[error("ACME authorization of {domain} is {status} (expected pending or valid)")]
    AuthorizationState { domain: String, status: String },
    #[error("the CA offers no {challenge} challenge for {domain}")]
    NoChallenge {
        domain: String,
        challenge: &'static str,
    },
    #[error("the {challenge} challenge for {domain} could not be set up: {reason}")]
    ChallengeSetup {
        domain: String,
        challenge: &'static str,
        reason: String,
    },
    #[error("the CA did not validate {domains}: {reason}")]
    Validation { domains: String, reason: String },
    #[error("finalizing the ACME order for {domains}: {reason}")]
    Finalize { domains: String, reason: String },
    #[error("downloading the certificate for {domains}: {source}")]
    Download {
        domains: String,
        source: instant_acme::Error,
    },
    #[error("the CA's certificate for {domains} cannot be used: {source}")]
    Certificate { domains: String, source: CertError },
    #[error("the CA's certificate for {domains} names {names:?}, not every requested domain")]
    WrongNames { domains: String, names: Vec<String> },
    #[error("ACME storage {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("obtaining a certificate for {domains} took longer than {secs} s")]
    Timeout { domains: String, secs: u64 },
}

impl AcmeError {
    /// The CA no longer knows the stored account (a test CA restarted, an account
    /// deactivated): it must be created again.
    pub fn account_is_gone(&self) -> bool {
        let problem = match self {
            AcmeError::Account { source, .. }
            | AcmeError::NewOrder { source, .. }
            | AcmeError::Authorization { source, .. }
            | AcmeError::Download { source, .. } => source,
            _ => return false,
        };
        matches!(problem, instant_acme::Error::Api(p)
            if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")))
    }
}
