//! When a credential is renewed: at half its lifetime (the SPIFFE convention), so a failed
//! renewal leaves the other half to retry in. Also the lifetime a JWT states about itself, read
//! without verifying it, for scheduling only (never to accept a token).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::jose::jws::CompactJws;

/// The middle of `[issued_at, expires_at]`; `issued_at` when it is already past `expires_at`.
pub fn half_life(issued_at: SystemTime, expires_at: SystemTime) -> SystemTime {
    let lifetime = expires_at.duration_since(issued_at).unwrap_or_default();
    issued_at + lifetime / 2
}

/// What a JWT says about its own lifetime: `iat` (if present) and `exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLifetime {
    pub issued_at: Option<SystemTime>,
    pub expires_at: SystemTime,
}

/// The `iat` and `exp` of a compact JWS, unverified; `None` when it does not parse (size bound
/// included) or has no numeric `exp`.
pub fn token_lifetime(token: &str) -> Option<TokenLifetime> {
    let jws = CompactJws::parse(token).ok()?;
    let claims = jws.claims();
    let at = |name: &str| {
        claims
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .and_then(|seconds| UNIX_EPOCH.checked_add(Duration::from_secs(seconds)))
    };
    Some(TokenLifetime {
        issued_at: at("iat"),
        expires_at: at("exp")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::b64url_encode;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.{}",
            b64url_encode(br#"{"alg":"ES256"}"#),
            b64url_encode(claims.as_bytes()),
            b64url_encode(b"sig")
        )
    }

    #[test]
    fn renewal_is_at_half_life_or_now_when_already_expired() {
        assert_eq!(half_life(at(1000), at(4600)), at(2800));
        assert_eq!(
            half_life(at(1000), at(1001)),
            at(1000) + Duration::from_millis(500)
        );
        assert_eq!(half_life(at(1000), at(900)), at(1000));
    }

    #[test]
    fn a_token_states_its_lifetime_and_nothing_else_is_trusted() {
        assert_eq!(
            token_lifetime(&jwt(r#"{"iat":1000,"exp":1300}"#)),
            Some(TokenLifetime {
                issued_at: Some(at(1000)),
                expires_at: at(1300)
            })
        );
        assert_eq!(
            token_lifetime(&jwt(r#"{"exp":1300}"#)).map(|t| t.issued_at),
            Some(None)
        );
        assert_eq!(token_lifetime(&jwt(r#"{"iat":1000}"#)), None);
        assert_eq!(token_lifetime(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(token_lifetime("not a token"), None);
        assert_eq!(token_lifetime(&"a.".repeat(40_000)), None);
    }
}
