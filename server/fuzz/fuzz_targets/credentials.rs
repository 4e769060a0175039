//! Feeds arbitrary bytes to everything that reads a caller's credentials
//! before it is known: the `Authorization` header (Bearer, Basic with its
//! base64), the tenant list of `X-Scope-OrgID`, the binary hello's
//! credentials block, and a client certificate's DER walk to its tenant.
//! Nothing may panic, and what is accepted is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_protocol::{auth, wire};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(token) = auth::bearer_or_basic(&text) {
        assert!(!token.is_empty());
    }
    if let Ok(tenants) = auth::tenants(&text) {
        assert!(!tenants.is_empty() && tenants.len() <= auth::MAX_TENANTS);
        for tenant in &tenants {
            assert!(auth::check_tenant(tenant).is_ok());
        }
    }
    if let Ok((token, tenants)) = wire::decode_credentials(data) {
        // What decodes encodes back to the same bytes.
        let again = wire::encode_credentials(&token, &tenants).expect("re-encodes");
        assert_eq!(again, data);
    }
    if let Some(tenant) = auth::cert_tenant(data) {
        assert!(auth::check_tenant(&tenant).is_ok());
    }
});
