//! `lode token create|list|revoke`: a server's tokens, through its HTTP
//! API (an admin token is needed where the server asks for credentials;
//! the first is in the server's `DATA/auth/admin.token`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::CliError;
use crate::api::Api;

/// How long the server has to answer.
const WAIT: Duration = Duration::from_secs(30);

#[derive(clap::Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Make a token and print its secret, once, alone on the last line
    /// (lode keeps only its hash).
    ///
    ///   lode token create --tenant team-a --scope ingest,read --token "$(cat lode-data/auth/admin.token)"
    ///   lode token create --scope admin --expires 30d
    #[command(verbatim_doc_comment)]
    Create {
        /// The tenant it writes and reads (not for an admin token, which
        /// acts for every tenant); default: the default tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// What it may do: ingest, read, admin, comma-separated.
        #[arg(long, default_value = "ingest,read")]
        scope: String,
        /// It stops working after this long: 90m, 12h, 30d ...
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        api: Api,
    },
    /// List the tokens (never their secrets).
    List {
        #[command(flatten)]
        api: Api,
    },
    /// Revoke a token by its id (on every node of a cluster).
    Revoke {
        /// The token's id (`lode token list`).
        id: String,
        #[command(flatten)]
        api: Api,
    },
}

pub(crate) fn run(command: TokenCommand) -> Result<(), CliError> {
    match command {
        TokenCommand::Create {
            tenant,
            scope,
            expires,
            api,
        } => {
            let expires_in_s = expires.as_deref().map(seconds).transpose()?;
            let body = json!({"tenant": tenant, "scopes": scope, "expires_in_s": expires_in_s});
            let made = ask(&api, "POST", "/api/v1/tokens", Some(&body), 201)?;
            println!("id       {}", text(field(&made, "id")));
            println!("tenant   {}", text(field(&made, "tenant")));
            println!("scopes   {}", scopes(field(&made, "scopes")));
            println!("expires  {}", text(field(&made, "expires")));
            println!("the token (shown once; lode keeps only its hash):");
            println!("{}", text(field(&made, "token")));
            Ok(())
        }
        TokenCommand::List { api } => {
            let listed = ask(&api, "GET", "/api/v1/tokens", None, 200)?;
            println!(
                "{:<18} {:<20} {:<18} {:<22} expires",
                "id", "tenant", "scopes", "created"
            );
            for t in field(&listed, "tokens").as_array().into_iter().flatten() {
                println!(
                    "{:<18} {:<20} {:<18} {:<22} {}",
                    text(field(t, "id")),
                    text(field(t, "tenant")),
                    scopes(field(t, "scopes")),
                    text(field(t, "created")),
                    text(field(t, "expires"))
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id, api } => {
            ask(&api, "DELETE", &format!("/api/v1/tokens/{id}"), None, 200)?;
            println!("token {id} revoked");
            Ok(())
        }
    }
}

/// Asks the first server that answers; its JSON if it answered `want`.
fn ask(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<&Value>,
    want: u16,
) -> Result<Value, CliError> {
    let mut last = None;
    for addr in &api.http {
        match api.request(addr, method, path, body, WAIT) {
            Ok((code, answer)) if code == want => return Ok(answer),
            Ok((code, answer)) => {
                let reason = field(field(&answer, "error"), "message")
                    .as_str()
                    .map_or_else(|| answer.to_string(), str::to_owned);
                return Err(CliError::new(format!("{addr} answered {code}: {reason}")));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| CliError::new("no server given (--http)")))
}

/// A field of a JSON object, `null` when absent.
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn scopes(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| text(v))
}

/// `90m`, `12h`, `30d`, `3600s` or a number of seconds.
fn seconds(text: &str) -> Result<u64, CliError> {
    let bad = || {
        CliError::new(format!(
            "--expires '{text}': expected a duration like 90m, 12h or 30d"
        ))
    };
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    n.checked_mul(per).filter(|s| *s > 0).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_read_as_durations() {
        assert_eq!(seconds("90m").unwrap(), 5400);
        assert_eq!(seconds("30d").unwrap(), 2_592_000);
        assert_eq!(seconds("45").unwrap(), 45);
        for bad in ["", "0", "1y", "h", "-3d"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
