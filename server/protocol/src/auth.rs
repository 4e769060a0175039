//! Credentials as clients send them, and the names they carry, as pure
//! functions: an HTTP `Authorization` header (a bearer token, or Basic
//! with the token as password, which is what Promtail, Alloy, Vector,
//! Fluent Bit, Grafana's data sources, rsyslog and syslog-ng can send),
//! Loki's `X-Scope-OrgID` tenant list, and tenant names. Never looks a
//! token up: the server does, with what these return.
//!
//! ```
//! use lode_protocol::auth::{bearer_or_basic, tenants};
//!
//! assert_eq!(bearer_or_basic("Bearer lode_ab_cd").as_deref(), Some("lode_ab_cd"));
//! // Basic "grafana:lode_ab_cd"
//! assert_eq!(bearer_or_basic("Basic Z3JhZmFuYTpsb2RlX2FiX2Nk").as_deref(), Some("lode_ab_cd"));
//! assert_eq!(tenants("team-a|team-b").unwrap(), ["team-a", "team-b"]);
//! assert!(tenants("Team A").is_err());
//! ```

use base64::Engine as _;

/// The tenant of records written without naming one.
pub const DEFAULT_TENANT: &str = "default";

/// The longest tenant name.
pub const MAX_TENANT_LEN: usize = 64;

/// Most tenants one request may name (`a|b|...`).
pub const MAX_TENANTS: usize = 64;

/// The token an `Authorization` header carries: `Bearer TOKEN`, or
/// `Basic base64(USER:TOKEN)` (the user is not checked: the token says
/// who the caller is). `None` for anything else, or a header too long to
/// be one of lode's.
pub fn bearer_or_basic(header: &str) -> Option<String> {
    if header.len() > 4096 {
        return None;
    }
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// Checks one tenant name: 1 to 64 of lowercase ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or digit.
pub fn check_tenant(name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty()
        || name.len() > MAX_TENANT_LEN
        || !starts_well
        || !name.chars().all(valid_char)
    {
        return Err(format!(
            "tenant '{}': a tenant is 1 to {MAX_TENANT_LEN} lowercase letters, digits, '-', '_' or '.', starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// The tenants of Loki's `X-Scope-OrgID` (or lode's `--tenant`): one
/// name, or several joined by `|` (Loki's multi-tenant reads) or `,`.
/// Each is checked; duplicates are dropped, order kept.
pub fn tenants(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in text.split(['|', ',']).map(str::trim) {
        check_tenant(name)?;
        if !out.iter().any(|t| t == name) {
            out.push(name.to_owned());
        }
        if out.len() > MAX_TENANTS {
            return Err(format!("more than {MAX_TENANTS} tenants in one request"));
        }
    }
    Ok(out)
}

/// The prefix of a client certificate's subject common name that names
/// its tenant: `lode cert client --tenant NAME` issues `CN=tenant=NAME`.
pub const CERT_TENANT_PREFIX: &str = "tenant=";

/// The tenant a client certificate (DER, already verified against the
/// server's client CA by the TLS handshake) was issued for: its subject's
/// common name `tenant=NAME`. `None` for any other certificate, or bytes
/// that are not one: a minimal DER walk, bounded by the input.
pub fn cert_tenant(der: &[u8]) -> Option<String> {
    let (_, certificate, _) = der_item(der)?;
    let (_, tbs, _) = der_item(certificate)?;
    let mut rest = tbs;
    let mut fields = Vec::with_capacity(6);
    while fields.len() < 6 && !rest.is_empty() {
        let (tag, body, next) = der_item(rest)?;
        rest = next;
        if fields.is_empty() && tag == 0xA0 {
            continue; // the explicit version
        }
        fields.push((tag, body));
    }
    // serial, signature algorithm, issuer, validity, subject
    let &(subject_tag, subject) = fields.get(4)?;
    if subject_tag != 0x30 {
        return None;
    }
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (_, set, next) = der_item(rdns)?;
        rdns = next;
        let (_, attribute, _) = der_item(set)?;
        let (oid_tag, oid, value) = der_item(attribute)?;
        // 2.5.4.3, commonName
        if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
            let (_, text, _) = der_item(value)?;
            let name = std::str::from_utf8(text)
                .ok()?
                .strip_prefix(CERT_TENANT_PREFIX)?;
            return check_tenant(name).ok().map(|()| name.to_owned());
        }
    }
    None
}

/// One DER item at the start of `bytes`: its tag, its contents and what
/// follows it.
fn der_item(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (digits, rest) = rest.split_at_checked(n)?;
        let len = digits
            .iter()
            .fold(0usize, |acc, d| (acc << 8) | usize::from(*d));
        (len, rest)
    };
    let (body, rest) = rest.split_at_checked(len)?;
    Some((tag, body, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn credentials_are_read_from_either_scheme() {
        assert_eq!(bearer_or_basic("bearer  t1 ").as_deref(), Some("t1"));
        let basic = base64::engine::general_purpose::STANDARD.encode("any:secret:with:colons");
        assert_eq!(
            bearer_or_basic(&format!("Basic {basic}")).as_deref(),
            Some("secret:with:colons")
        );
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Digest abc",
            "Basic !!!",
            "Basic dXNlcg==", // "user": no password
            "Basic dXNlcjo=", // "user:": an empty one
        ] {
            assert_eq!(bearer_or_basic(bad), None, "{bad:?}");
        }
        assert_eq!(
            bearer_or_basic(&format!("Bearer {}", "x".repeat(5000))),
            None
        );
    }

    #[test]
    fn tenant_names_are_checked() {
        for good in ["default", "team-a", "a.b_c", "0"] {
            assert!(check_tenant(good).is_ok(), "{good}");
        }
        for bad in ["", "Team", "-a", "a b", "a|b", "é", &"a".repeat(65)] {
            assert!(check_tenant(bad).is_err(), "{bad:?}");
        }
        assert_eq!(tenants("a|b,a").unwrap(), ["a", "b"]);
        assert!(tenants("a||b").is_err());
        let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        assert!(tenants(&many.join("|")).is_err());
    }

    proptest! {
        /// The parsers of credentials never panic and a token they return
        /// is never empty: a bounded companion of the fuzz target.
        #[test]
        fn credential_parsers_never_panic(text in ".{0,200}") {
            if let Some(token) = bearer_or_basic(&text) {
                prop_assert!(!token.is_empty());
            }
            let _ = tenants(&text);
        }

        #[test]
        fn certificate_walks_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = cert_tenant(&bytes);
        }
    }
}
