//! Automatic certificates (`[tls.acme]`): one certificate for the configured domains,
//! ordered from an ACME (RFC 8555) CA, stored on disk, served through the `CertStore`
//! next to the file certificates, and renewed well before it expires.
//!
//! - `schedule` when to renew, how long to back off after a failure (pure)
//! - `storage`  account credentials and certificates on disk (atomic writes, 0600 keys)
//! - `http`     the HTTPS client the CA is spoken to with (our rustls config)
//! - `http01`   the http-01 tokens the pipeline answers on the plain listener
//! - `tls_alpn` the tls-alpn-01 challenge certificate (acmeIdentifier extension)
//! - `order`    one issuance: account, order, challenges, CSR, download
//! - `task`     the tokio task: stored certificate first, then renewals with backoff
//! - `error`    why an attempt failed, naming the domain and the step

pub mod error;
pub mod http;
pub mod http01;
pub mod order;
pub mod schedule;
pub mod storage;
pub mod task;
pub mod tls_alpn;
