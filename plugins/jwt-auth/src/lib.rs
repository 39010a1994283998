//! jwt-auth: verifies an HS256 JWT bearer token (signature, `exp`, `nbf`) and forwards claims as headers.

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use fluxgate_sdk::{
    Action, Config, DirectResponse, Plugin, Request, is_reserved_header, is_valid_header_name,
    is_valid_header_value, log, now_ms,
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use std::collections::BTreeMap;

/// base64url, with or without padding (JWTs should have none).
const B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The plugin's config, as in the route's `config` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The HS256 key, used as raw bytes.
    secret: String,
    /// Claim name -> request header it is forwarded in.
    #[serde(default = "default_claims")]
    claims_to_headers: BTreeMap<String, String>,
    /// Clock skew allowed for `exp` and `nbf`, in seconds.
    #[serde(default)]
    leeway_s: u64,
    /// The header carrying `Bearer <token>`.
    #[serde(default = "default_header")]
    header: String,
}

fn default_claims() -> BTreeMap<String, String> {
    BTreeMap::from([("sub".to_string(), "x-jwt-sub".to_string())])
}

fn default_header() -> String {
    "authorization".into()
}

/// Verifies HS256 bearer tokens.
pub struct JwtAuth {
    secret: Vec<u8>,
    claims_to_headers: Vec<(String, String)>,
    leeway_ms: f64,
    header: String,
}

#[fluxgate_sdk::plugin]
impl Plugin for JwtAuth {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.secret.is_empty() {
            return Err("jwt-auth: `secret` must not be empty".into());
        }
        if !is_valid_header_name(&settings.header) {
            return Err(format!(
                "jwt-auth: {:?} is not a valid header name",
                settings.header
            ));
        }
        let mut claims_to_headers = Vec::new();
        for (claim, header) in settings.claims_to_headers {
            if !is_valid_header_name(&header) {
                return Err(format!("jwt-auth: {header:?} is not a valid header name"));
            }
            if is_reserved_header(&header) {
                return Err(format!(
                    "jwt-auth: {header:?} is a framing header the gateway keeps to itself"
                ));
            }
            claims_to_headers.push((claim, header.to_ascii_lowercase()));
        }
        Ok(Self {
            secret: settings.secret.into_bytes(),
            claims_to_headers,
            leeway_ms: settings.leeway_s as f64 * 1000.0,
            header: settings.header.to_ascii_lowercase(),
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let value = req.header(&self.header);
        let claims = match value
            .as_deref()
            .ok_or("missing bearer token")
            .and_then(bearer_token)
            .and_then(|token| self.verify(token))
        {
            Ok(claims) => claims,
            Err(reason) => {
                return Action::Respond(
                    DirectResponse::error(401, "unauthorized", reason)
                        .with_header("www-authenticate", "Bearer"),
                );
            }
        };
        for (claim, header) in &self.claims_to_headers {
            // A claim the token lacks also removes the header, so a client cannot
            // supply it itself.
            match claims.get(claim).and_then(claim_text) {
                Some(text) if is_valid_header_value(text.as_bytes()) => {
                    req.set_header(header, text);
                }
                Some(_) => {
                    log::warn!("jwt-auth: claim {claim:?} is not a valid header value");
                    req.remove_header(header);
                }
                None => req.remove_header(header),
            }
        }
        Action::Continue
    }
}

impl JwtAuth {
    /// Checks the token's algorithm, signature and time claims; returns its claims.
    fn verify(&self, token: &str) -> Result<Map<String, Value>, &'static str> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed token");
        };
        let jose: Map<String, Value> = decode_json(header)?;
        if jose.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err("unsupported algorithm");
        }
        let signature = B64.decode(signature).map_err(|_| "malformed token")?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).map_err(|_| "invalid signature")?;
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature)
            .map_err(|_| "invalid signature")?;

        let claims: Map<String, Value> = decode_json(payload)?;
        let now = now_ms() as f64;
        if let Some(exp) = claims.get("exp") {
            let exp = exp.as_f64().ok_or("invalid exp claim")?;
            if now >= exp * 1000.0 + self.leeway_ms {
                return Err("token expired");
            }
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_f64().ok_or("invalid nbf claim")?;
            if now < nbf * 1000.0 - self.leeway_ms {
                return Err("token not yet valid");
            }
        }
        Ok(claims)
    }
}

/// The token in `Bearer <token>` (scheme in any case).
fn bearer_token(value: &str) -> Result<&str, &'static str> {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err("missing bearer token"),
    }
}

/// A base64url JSON object.
fn decode_json(part: &str) -> Result<Map<String, Value>, &'static str> {
    let bytes = B64.decode(part).map_err(|_| "malformed token")?;
    serde_json::from_slice(&bytes).map_err(|_| "malformed token")
}

/// A claim as header text: strings as they are, numbers and booleans via
/// `to_string`, arrays and objects as compact JSON; `null` is no value.
fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing::{self, Edit, Harness, RequestOutcome};
    use serde_json::json;

    const SECRET: &str = "s3cret";
    const NOW_S: u64 = 1_700_000_000;

    fn sign(header: &Value, claims: &Value, secret: &str) -> String {
        let h = B64.encode(header.to_string());
        let p = B64.encode(claims.to_string());
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        mac.update(format!("{h}.{p}").as_bytes());
        let s = B64.encode(mac.finalize().into_bytes());
        format!("{h}.{p}.{s}")
    }

    fn token(claims: Value) -> String {
        sign(&json!({ "alg": "HS256", "typ": "JWT" }), &claims, SECRET)
    }

    fn plugin(config: Value) -> Harness<JwtAuth> {
        testing::reset();
        testing::set_now_ms(NOW_S * 1000);
        testing::init_json::<JwtAuth>(&config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn default_plugin() -> Harness<JwtAuth> {
        plugin(json!({ "secret": SECRET }))
    }

    fn with_token(token: &str) -> testing::TestRequest {
        testing::request()
            .header("authorization", format!("Bearer {token}"))
            .build()
    }

    fn assert_401(outcome: RequestOutcome, message: &str) {
        let resp = outcome.into_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            resp.body_json::<Value>(),
            Ok(json!({ "error": "unauthorized", "message": message }))
        );
    }

    #[test]
    fn valid_token_forwards_sub() {
        let p = default_plugin();
        let t = token(json!({ "sub": "alice", "exp": NOW_S + 60 }));
        let mut req = with_token(&t);
        p.on_request(&mut req).assert_continue();
        assert_eq!(
            req.edits(),
            [Edit::SetHeader("x-jwt-sub".into(), b"alice".to_vec())]
        );
        assert_eq!(req.header("x-jwt-sub"), Some("alice"));
    }

    #[test]
    fn claims_of_every_type() {
        let p = plugin(json!({
            "secret": SECRET,
            "claims_to_headers": {
                "sub": "X-Sub", "uid": "x-uid", "admin": "x-admin",
                "roles": "x-roles", "missing": "x-missing"
            }
        }));
        let t = token(json!({ "sub": "bob", "uid": 42, "admin": true, "roles": ["a", "b"] }));
        let mut req = testing::request()
            .header("Authorization", format!("bearer {t}"))
            .header("x-missing", "spoofed")
            .build();
        p.on_request(&mut req).assert_continue();
        assert_eq!(req.header("x-sub"), Some("bob"));
        assert_eq!(req.header("x-uid"), Some("42"));
        assert_eq!(req.header("x-admin"), Some("true"));
        assert_eq!(req.header("x-roles"), Some(r#"["a","b"]"#));
        assert_eq!(req.header("x-missing"), None);
        assert!(
            req.edits()
                .contains(&Edit::RemoveHeader("x-missing".into()))
        );
    }

    #[test]
    fn missing_or_malformed_header() {
        let p = default_plugin();
        assert_401(
            p.on_request(&mut testing::request().build()),
            "missing bearer token",
        );
        let mut basic = testing::request()
            .header("authorization", "Basic YTpi")
            .build();
        assert_401(p.on_request(&mut basic), "missing bearer token");
        assert_401(p.on_request(&mut with_token("a.b")), "malformed token");
        assert_401(p.on_request(&mut with_token("a.b.c.d")), "malformed token");
        assert_401(
            p.on_request(&mut with_token("!!.e30.AA")),
            "malformed token",
        );
    }

    #[test]
    fn wrong_signature() {
        let p = default_plugin();
        let t = sign(&json!({ "alg": "HS256" }), &json!({ "sub": "x" }), "other");
        assert_401(p.on_request(&mut with_token(&t)), "invalid signature");
        // A tampered payload with the original signature.
        let good = token(json!({ "sub": "alice" }));
        let evil = token(json!({ "sub": "admin" }));
        let parts: Vec<&str> = good.split('.').collect();
        let evil_parts: Vec<&str> = evil.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], evil_parts[1], parts[2]);
        assert_401(p.on_request(&mut with_token(&forged)), "invalid signature");
    }

    #[test]
    fn other_algorithms_are_rejected() {
        let p = default_plugin();
        let claims = json!({ "sub": "x" });
        let none = format!(
            "{}.{}.",
            B64.encode(json!({ "alg": "none" }).to_string()),
            B64.encode(claims.to_string())
        );
        assert_401(
            p.on_request(&mut with_token(&none)),
            "unsupported algorithm",
        );
        for alg in ["HS512", "RS256", "hs256"] {
            let t = sign(&json!({ "alg": alg }), &claims, SECRET);
            assert_401(p.on_request(&mut with_token(&t)), "unsupported algorithm");
        }
        let t = sign(&json!({ "typ": "JWT" }), &claims, SECRET);
        assert_401(p.on_request(&mut with_token(&t)), "unsupported algorithm");
    }

    #[test]
    fn exp_and_nbf_with_leeway() {
        let p = default_plugin();
        let expired = token(json!({ "sub": "a", "exp": NOW_S }));
        assert_401(p.on_request(&mut with_token(&expired)), "token expired");
        let early = token(json!({ "sub": "a", "nbf": NOW_S + 1 }));
        assert_401(p.on_request(&mut with_token(&early)), "token not yet valid");
        let bad = token(json!({ "sub": "a", "exp": "soon" }));
        assert_401(p.on_request(&mut with_token(&bad)), "invalid exp claim");
        let bad = token(json!({ "sub": "a", "nbf": null }));
        assert_401(p.on_request(&mut with_token(&bad)), "invalid nbf claim");
        let ok = token(json!({ "sub": "a", "nbf": NOW_S, "exp": NOW_S + 1 }));
        assert!(p.on_request(&mut with_token(&ok)).is_continue());

        let lenient = plugin(json!({ "secret": SECRET, "leeway_s": 30 }));
        let t = token(json!({ "sub": "a", "exp": NOW_S - 29, "nbf": NOW_S + 29 }));
        assert!(lenient.on_request(&mut with_token(&t)).is_continue());
        let t = token(json!({ "sub": "a", "exp": NOW_S - 30 }));
        assert_401(lenient.on_request(&mut with_token(&t)), "token expired");

        // The host clock decides: the same token expires as time passes.
        let t = token(json!({ "sub": "a", "exp": NOW_S + 10 }));
        assert!(p.on_request(&mut with_token(&t)).is_continue());
        testing::advance_ms(10_000);
        assert_401(p.on_request(&mut with_token(&t)), "token expired");
    }

    #[test]
    fn custom_header() {
        let p = plugin(json!({ "secret": SECRET, "header": "X-Token" }));
        let t = token(json!({ "sub": "carol" }));
        let mut req = testing::request()
            .header("x-token", format!("Bearer {t}"))
            .build();
        p.on_request(&mut req).assert_continue();
        assert_eq!(req.header("x-jwt-sub"), Some("carol"));
    }

    #[test]
    fn readme_config_initialises() {
        let config = json!({
            "secret": "change-me",
            "claims_to_headers": { "sub": "x-jwt-sub", "role": "x-jwt-role" },
            "leeway_s": 30
        });
        assert!(testing::init_json::<JwtAuth>(&config).is_ok());
    }

    #[test]
    fn invalid_config_is_an_init_error() {
        for config in [
            json!({}),
            json!({ "secret": "" }),
            json!({ "secret": "k", "header": "a b" }),
            json!({ "secret": "k", "claims_to_headers": { "sub": "x y" } }),
            json!({ "secret": "k", "claims_to_headers": { "sub": "Upgrade" } }),
            json!({ "secret": "k", "leeway_s": -1 }),
            json!({ "secret": "k", "algorithm": "HS256" }),
        ] {
            assert!(
                testing::init_json::<JwtAuth>(&config).is_err(),
                "accepted {config}"
            );
        }
    }
}
