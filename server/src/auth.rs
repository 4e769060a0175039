//! Who may do what: tokens, their scopes and tenants, and the caller a
//! request acts as.
//!
//! A token is `lode_<id>_<secret>`: a public id (for `lode token list`
//! and `revoke`) and 32 random bytes. Only the SHA-256 of the secret is
//! kept, as a setting of the engine (`token/<id>`): in a cluster that is
//! an entry of the replicated log, so every node holds the same tokens,
//! through restarts and snapshots. A credential is checked once, where a
//! request enters (the HTTP layer, the binary protocol's hello), and
//! becomes a [`Caller`] that every `Service` call takes: no read or write
//! path can forget it.
//!
//! Must never: keep a secret, say which part of a credential was wrong,
//! or let a token of one tenant name another.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use lode_protocol::ErrorCode;
use lode_protocol::auth::{DEFAULT_TENANT, check_tenant};
use serde::{Deserialize, Serialize};

use crate::service::Failure;

/// The engine setting keys of tokens: `token/<id>`.
pub(crate) const TOKEN_PREFIX: &str = "token/";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Write records (every push endpoint, binary appends).
    Ingest,
    /// Read records and figures (queries, tail, export, `/metrics`).
    Read,
    /// Everything, for every tenant: tokens, the cluster's membership
    /// and leadership.
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Ingest => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const ALL: Scopes = Scopes(7);

    /// `ingest,read` and the like; an unknown scope is named.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes::default();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let scope = match name {
                "ingest" => Scope::Ingest,
                "read" => Scope::Read,
                "admin" => Scope::Admin,
                other => {
                    return Err(format!("scope '{other}': expected ingest, read or admin"));
                }
            };
            scopes.0 |= scope.bit();
        }
        if scopes.0 == 0 {
            return Err("no scope: give ingest, read or admin".to_owned());
        }
        Ok(scopes)
    }

    /// Whether these scopes allow `scope` (admin allows everything).
    pub fn allow(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        [Scope::Ingest, Scope::Read, Scope::Admin]
            .into_iter()
            .filter(|s| self.0 & s.bit() != 0)
            .map(Scope::name)
            .collect()
    }
}

/// A token as kept: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    /// The tenant it writes and reads; `*` for an admin token.
    pub tenant: String,
    pub scopes: Vec<String>,
    /// Nanoseconds since the epoch.
    pub created: i64,
    pub expires: Option<i64>,
    /// SHA-256 of the secret, hex.
    pub sha256: String,
}

impl TokenInfo {
    fn scopes(&self) -> Scopes {
        Scopes::parse(&self.scopes.join(",")).unwrap_or_default()
    }
}

/// A token just made: what to keep, and the one time its secret is seen.
#[derive(Debug)]
pub struct NewToken {
    pub info: TokenInfo,
    pub secret: String,
}

/// Makes a token for `tenant` (ignored for an admin token, which acts
/// for every tenant) with `scopes`, created at `now`, valid until
/// `expires`.
pub fn new_token(
    tenant: Option<&str>,
    scopes: Scopes,
    now: i64,
    expires: Option<i64>,
) -> Result<NewToken, String> {
    let tenant = if scopes.allow_admin() {
        if tenant.is_some_and(|t| t != "*") {
            return Err("an admin token acts for every tenant: leave out the tenant".to_owned());
        }
        "*".to_owned()
    } else {
        let tenant = tenant.unwrap_or(DEFAULT_TENANT);
        check_tenant(tenant)?;
        tenant.to_owned()
    };
    let rng = ring::rand::SystemRandom::new();
    let id: [u8; 8] = random(&rng)?;
    let secret: [u8; 32] = random(&rng)?;
    let id = hex(&id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let token = format!("lode_{id}_{secret}");
    Ok(NewToken {
        info: TokenInfo {
            id,
            tenant,
            scopes: scopes.names().into_iter().map(str::to_owned).collect(),
            created: now,
            expires,
            sha256: hex(&sha256(secret.as_bytes())),
        },
        secret: token,
    })
}

impl Scopes {
    fn allow_admin(self) -> bool {
        self.0 & Scope::Admin.bit() != 0
    }
}

fn random<const N: usize>(rng: &ring::rand::SystemRandom) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(rng, &mut out)
        .map_err(|_| "the system's random source failed".to_owned())?;
    Ok(out)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// The tokens a server knows, by id.
#[derive(Debug, Default)]
pub struct Tokens(HashMap<String, TokenInfo>);

impl Tokens {
    /// The tokens among the engine's settings (`token/<id>` → JSON); a
    /// setting that does not read is skipped with a warning.
    pub fn from_settings<'a>(
        settings: impl IntoIterator<Item = (&'a String, &'a Vec<u8>)>,
    ) -> Tokens {
        let mut tokens = HashMap::new();
        for (key, value) in settings {
            if !key.starts_with(TOKEN_PREFIX) {
                continue;
            }
            match serde_json::from_slice::<TokenInfo>(value) {
                Ok(info) => {
                    tokens.insert(info.id.clone(), info);
                }
                Err(e) => tracing::warn!(%key, error = %e, "a token setting that does not read"),
            }
        }
        Tokens(tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn list(&self) -> Vec<&TokenInfo> {
        let mut all: Vec<&TokenInfo> = self.0.values().collect();
        all.sort_by_key(|t| (t.created, t.id.clone()));
        all
    }

    /// The token `presented` is, if it is one of these and valid at
    /// `now`; `None` whatever is wrong with it.
    pub fn verify(&self, presented: &str, now: i64) -> Option<&TokenInfo> {
        let rest = presented.strip_prefix("lode_")?;
        let (id, secret) = rest.split_once('_')?;
        let info = self.0.get(id)?;
        let want = decode_hex(&info.sha256)?;
        if !same(&sha256(secret.as_bytes()), &want) {
            return None;
        }
        if info.expires.is_some_and(|e| now >= e) {
            return None;
        }
        Some(info)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether the server asks for credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Required,
    Off,
}

/// Who a request acts as, once its credential was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub scopes: Scopes,
    /// The tenants this request acts on: the token's, or those it names
    /// (an admin token, or auth off), `default` when none is named.
    pub tenants: Vec<String>,
    /// The token's id, for logs (none with auth off).
    pub token: Option<String>,
}

impl Caller {
    /// Everything, on the default tenant: embedded use and tests.
    pub fn everything() -> Caller {
        Caller {
            scopes: Scopes::ALL,
            tenants: vec![DEFAULT_TENANT.to_owned()],
            token: None,
        }
    }

    /// Refuses (403) a caller without `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Failure> {
        if self.scopes.allow(scope) {
            return Ok(());
        }
        Err(Failure::new(
            ErrorCode::Forbidden,
            format!("this credential does not have the '{}' scope", scope.name()),
        ))
    }

    /// The one tenant records are written to (a write may name only one).
    pub fn write_tenant(&self) -> Result<&str, Failure> {
        match self.tenants.as_slice() {
            [one] => Ok(one),
            _ => Err(Failure::new(
                ErrorCode::BadRequest,
                "a write names one tenant, not several",
            )),
        }
    }
}

/// The caller a credential makes. `presented` is the token, if any;
/// `asked` the tenants the request names (`X-Scope-OrgID`, the binary
/// hello's tenant), already checked as names. Answers 401 for a missing
/// or unknown credential (never saying which), 403 when a tenant token
/// names another tenant.
pub fn caller(
    mode: Mode,
    tokens: &Tokens,
    presented: Option<&str>,
    asked: Option<Vec<String>>,
    now: i64,
) -> Result<Caller, Failure> {
    let named =
        |asked: Option<Vec<String>>| asked.unwrap_or_else(|| vec![DEFAULT_TENANT.to_owned()]);
    if mode == Mode::Off {
        return Ok(Caller {
            scopes: Scopes::ALL,
            tenants: named(asked),
            token: None,
        });
    }
    let Some(info) = presented.and_then(|t| tokens.verify(t, now)) else {
        return Err(unauthorized());
    };
    let scopes = info.scopes();
    let tenants = if scopes.allow_admin() {
        named(asked)
    } else {
        match asked {
            Some(asked) if asked.iter().any(|t| *t != info.tenant) => {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    "this token is not allowed that tenant",
                ));
            }
            _ => vec![info.tenant.clone()],
        }
    };
    Ok(Caller {
        scopes,
        tenants,
        token: Some(info.id.clone()),
    })
}

/// The one answer to a missing, unknown, wrong or expired credential.
pub fn unauthorized() -> Failure {
    Failure::new(
        ErrorCode::Unauthorized,
        "a valid token is needed: Authorization: Bearer TOKEN (or Basic with the token as password)",
    )
}

/// Where the first admin token is written, readable by the owner only.
pub fn admin_token_path(data: &Path) -> PathBuf {
    data.join("auth").join("admin.token")
}

/// Writes `secret` to `path` with mode 0600 (through a temporary file and
/// a rename), making its directory (0700) if needed.
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(tokens: &[&NewToken]) -> Tokens {
        let settings: Vec<(String, Vec<u8>)> = tokens
            .iter()
            .map(|t| {
                (
                    format!("{TOKEN_PREFIX}{}", t.info.id),
                    serde_json::to_vec(&t.info).unwrap(),
                )
            })
            .collect();
        Tokens::from_settings(settings.iter().map(|(k, v)| (k, v)))
    }

    #[test]
    fn tokens_verify_by_their_secret_only_until_they_expire() {
        let reader =
            new_token(Some("team-a"), Scopes::parse("read").unwrap(), 0, Some(100)).unwrap();
        let admin = new_token(None, Scopes::parse("admin").unwrap(), 0, None).unwrap();
        let tokens = table(&[&reader, &admin]);
        assert!(!reader.secret.contains(&reader.info.sha256));
        assert_eq!(
            tokens.verify(&reader.secret, 99).map(|t| &t.tenant),
            Some(&"team-a".to_owned())
        );
        assert!(tokens.verify(&reader.secret, 100).is_none(), "expired");
        let mut wrong = reader.secret.clone();
        let last = wrong.pop();
        wrong.push(if last == Some('A') { 'B' } else { 'A' });
        for bad in [wrong.as_str(), "lode_x_y", "", "lode_", &admin.secret[..20]] {
            assert!(tokens.verify(bad, 0).is_none(), "{bad}");
        }
        assert_eq!(
            tokens.verify(&admin.secret, i64::MAX).map(|t| &t.tenant),
            Some(&"*".to_owned())
        );
        assert!(new_token(Some("team-a"), Scopes::parse("admin").unwrap(), 0, None).is_err());
        assert!(new_token(Some("Team A"), Scopes::parse("read").unwrap(), 0, None).is_err());
    }

    #[test]
    fn callers_get_their_tenants_and_scopes() {
        let ingest = new_token(Some("team-a"), Scopes::parse("ingest").unwrap(), 0, None).unwrap();
        let admin = new_token(None, Scopes::parse("admin").unwrap(), 0, None).unwrap();
        let tokens = table(&[&ingest, &admin]);
        let code = |r: Result<Caller, Failure>| r.map_err(|f| f.code);
        let req = Mode::Required;
        assert_eq!(
            code(caller(req, &tokens, None, None, 0)),
            Err(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(caller(req, &tokens, Some("lode_no_body"), None, 0)),
            Err(ErrorCode::Unauthorized)
        );
        let writer = caller(req, &tokens, Some(&ingest.secret), None, 0).unwrap();
        assert_eq!(writer.tenants, ["team-a"]);
        assert!(writer.require(Scope::Ingest).is_ok());
        assert_eq!(
            writer.require(Scope::Read).unwrap_err().code,
            ErrorCode::Forbidden
        );
        let other = Some(vec!["team-b".to_owned()]);
        assert_eq!(
            code(caller(req, &tokens, Some(&ingest.secret), other.clone(), 0)),
            Err(ErrorCode::Forbidden)
        );
        let own = Some(vec!["team-a".to_owned()]);
        assert!(caller(req, &tokens, Some(&ingest.secret), own, 0).is_ok());
        let both = Some(vec!["team-a".to_owned(), "team-b".to_owned()]);
        let admin = caller(req, &tokens, Some(&admin.secret), both.clone(), 0).unwrap();
        assert_eq!(admin.tenants, ["team-a", "team-b"]);
        assert!(admin.require(Scope::Read).is_ok() && admin.write_tenant().is_err());
        let open = caller(Mode::Off, &tokens, None, other, 0).unwrap();
        assert_eq!(
            (open.tenants.as_slice(), open.scopes),
            (&["team-b".to_owned()][..], Scopes::ALL)
        );
        assert_eq!(
            caller(Mode::Off, &tokens, None, None, 0).unwrap().tenants,
            ["default"]
        );
    }

    #[test]
    fn the_admin_token_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = admin_token_path(dir.path());
        write_secret(&path, "lode_a_b").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "lode_a_b\n");
    }
}
