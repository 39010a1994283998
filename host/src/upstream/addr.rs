//! A target's address: `http://host:port` or `https://host:port`, parsed once.

use http::uri::{Authority, Scheme};

/// A target's address, parsed from `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetAddr {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl TargetAddr {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("\"{url}\" is not a URL like http://127.0.0.1:8081"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(format!("\"{url}\" must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("\"{url}\" has no host"))?;
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(format!(
                "\"{url}\" must be http[s]://host[:port] without user info"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "\"{url}\" must not have a path; use the route's strip_prefix/add_prefix"
            ));
        }
        Ok(Self { scheme, authority })
    }

    /// A target reached over TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// `scheme://host:port`, the target's name in logs, metrics and the admin API.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_are_checked() {
        assert!(TargetAddr::parse("http://127.0.0.1:8081").is_ok());
        assert!(TargetAddr::parse("http://svc.local").is_ok());
        assert!(TargetAddr::parse("http://127.0.0.1:8081/").is_ok());
        assert!(
            TargetAddr::parse("https://api.internal:8443")
                .unwrap()
                .is_https()
        );
        for bad in [
            "127.0.0.1:80",
            "ftp://x",
            "http://x/api",
            "http://u@x",
            "http://x?q",
        ] {
            assert!(TargetAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
