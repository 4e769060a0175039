//! Access tokens: create, list, revoke (replicated settings).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lode_protocol::ErrorCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Shared, Who, bad_request};
use crate::auth::{Scope, Scopes};
use crate::service::Failure;

#[derive(Debug, Deserialize)]
pub(super) struct TokenRequest {
    tenant: Option<String>,
    /// `ingest,read` or a list.
    scopes: ScopeList,
    /// Seconds from now the token stops working.
    expires_in_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ScopeList {
    Text(String),
    List(Vec<String>),
}

/// `POST /api/v1/tokens` `{"tenant":"team-a","scopes":"ingest,read","expires_in_s":86400}`
/// (`admin`): makes a token; its secret is in this answer only.
pub(super) async fn create_token(
    State(service): Shared,
    who: Who,
    axum::Json(asked): axum::Json<TokenRequest>,
) -> Result<Response, Failure> {
    let scopes = match &asked.scopes {
        ScopeList::Text(text) => text.clone(),
        ScopeList::List(list) => list.join(","),
    };
    let scopes = Scopes::parse(&scopes).map_err(bad_request)?;
    let expires = asked.expires_in_s.map(|s| {
        lode_engine::now_ns().saturating_add(
            i64::try_from(s)
                .unwrap_or(i64::MAX / 2)
                .saturating_mul(1_000_000_000),
        )
    });
    let made = service
        .create_token(&who, asked.tenant.as_deref(), scopes, expires)
        .await?;
    let answer = token_json(&made.info, Some(made.secret));
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

/// A token as answered: never its hash; its secret only when just made.
pub(super) fn token_json(info: &crate::auth::TokenInfo, secret: Option<String>) -> Value {
    let mut answer = json!({
        "id": info.id,
        "tenant": info.tenant,
        "scopes": info.scopes,
        "created": lode_engine::format_rfc3339(info.created),
        "expires": info.expires.map(lode_engine::format_rfc3339),
    });
    if let (Some(secret), Some(fields)) = (secret, answer.as_object_mut()) {
        fields.insert("token".to_owned(), Value::String(secret));
    }
    answer
}

/// `GET /api/v1/tokens` (`admin`): every token, without its secret.
pub(super) async fn list_tokens(State(service): Shared, who: Who) -> Result<Response, Failure> {
    who.require(Scope::Admin)?;
    let tokens = service.tokens();
    let list: Vec<Value> = tokens
        .list()
        .into_iter()
        .map(|t| token_json(t, None))
        .collect();
    Ok(axum::Json(json!({ "tokens": list })).into_response())
}

/// `DELETE /api/v1/tokens/{id}` (`admin`): revokes a token on every node.
pub(super) async fn revoke_token(
    State(service): Shared,
    who: Who,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    if !service.revoke_token(&who, &id).await? {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!("no token {id}"),
        ));
    }
    Ok(axum::Json(json!({ "revoked": id })).into_response())
}
