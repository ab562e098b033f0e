//! Authentication of every request, in the router: which routes are open,
//! which need any principal and which only an `admin`; the caller's
//! [`Principal`] goes into the request for `crate::route` to authorize what it
//! touches. A route not named here needs a principal (fail closed).
//!
//! | route                                   | who may call                         |
//! |-----------------------------------------|--------------------------------------|
//! | `GET /healthz`, `/readyz`, `/v1/openapi.json` | anyone                         |
//! | `GET /metrics`                          | anyone (`auth.open_metrics`, default) or any principal |
//! | `GET /status`                           | any principal, or anyone with `auth.open_status` |
//! | `GET /v1/cluster`                       | any principal                        |
//! | `POST /v1/cluster/{init,learners,membership,transfer-leader}` | `admin`        |
//! | `GET /v1/backup`                        | `admin`                              |
//! | key routes (`/v1/kv`, `/v1/batch/get`, `/v1/txn`, `/v1/watch`) | by role and prefix, in `crate::route` |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::extract::FromRequestParts;
use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use super::ApiError;
use super::AppState;
use super::FORWARDED_BY;
use crate::auth::Access;
use crate::auth::CertIdentity;
use crate::auth::Principal;
use crate::config::AuthConfig;

/// Who may call a route before `crate::route` looks at the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Open,
    Authenticated,
    Admin,
}

/// The class of `method` on the route pattern `route` (`None`: no route matched).
pub fn class(route: Option<&str>, method: &Method, config: &AuthConfig) -> Class {
    match (route, *method == Method::POST) {
        (Some("/healthz" | "/readyz" | "/v1/openapi.json"), _) => Class::Open,
        (Some("/metrics"), _) if config.open_metrics => Class::Open,
        (Some("/status"), _) if config.open_status => Class::Open,
        (
            Some(
                "/v1/cluster/init"
                | "/v1/cluster/learners"
                | "/v1/cluster/membership"
                | "/v1/cluster/transfer-leader",
            ),
            true,
        ) => Class::Admin,
        (Some("/v1/backup"), _) => Class::Admin,
        _ => Class::Authenticated,
    }
}

/// The authenticated caller of a request.
#[derive(Clone)]
pub struct Caller(pub Arc<Principal>);

/// The caller's name, on the response for the request log.
#[derive(Clone)]
pub(super) struct CallerName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// Fails closed: a handler asking for its caller on a request the
    /// middleware did not authenticate answers 401.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthenticated(
                crate::auth::Unauthenticated::Missing,
            ))
    }
}

/// What the connection a request came on proved: the client certificate the
/// client port verified (HTTPS with `tls.client_auth` on).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub cert: Option<Arc<CertIdentity>>,
}

/// The middleware: authenticates the request (401), keeps cluster calls to
/// `admin` (403), and hands the principal on.
pub(super) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    let class = class(route, req.method(), &state.config.auth);
    if class == Class::Open {
        return next.run(req).await;
    }
    // A request another member relayed is judged by the client's credential
    // alone, never by the relaying member's own certificate.
    let cert = match req.headers().contains_key(FORWARDED_BY) {
        true => None,
        false => req
            .extensions()
            .get::<ConnectInfo<ConnInfo>>()
            .and_then(|c| c.0.cert.clone()),
    };
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let principal = match state.auth.authenticate(header, cert.as_deref()).await {
        Ok(p) => p,
        Err(crate::auth::AuthFailure::Unauthenticated(e)) => {
            state
                .metrics
                .auth_refused
                .with_label_values(&["unauthenticated"])
                .inc();
            return super::refuse_unread(req, ApiError::Unauthenticated(e)).await;
        }
        Err(crate::auth::AuthFailure::Unavailable(why)) => {
            tracing::warn!(reason = %why, "a credential could not be checked");
            let e = ApiError::Unavailable {
                code: "auth_unavailable",
                message: "the credential could not be checked right now (the Kubernetes API server did not answer); retry shortly".into(),
                retry: true,
            };
            return super::refuse_unread(req, e).await;
        }
    };
    if class == Class::Admin
        && let Err(e) = crate::route::authorize(&state, &principal, &[Access::Admin])
    {
        return super::refuse_unread(req, e).await;
    }
    let name = principal.name.clone();
    req.extensions_mut().insert(Caller(principal));
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(CallerName(name));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_closed_unless_named() {
        let cfg = AuthConfig::default();
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(class(Some("/healthz"), &get, &cfg), Class::Open);
        assert_eq!(class(Some("/metrics"), &get, &cfg), Class::Open);
        assert_eq!(class(Some("/status"), &get, &cfg), Class::Authenticated);
        assert_eq!(class(Some("/v1/cluster"), &get, &cfg), Class::Authenticated);
        assert_eq!(
            class(Some("/v1/cluster/learners"), &post, &cfg),
            Class::Admin
        );
        assert_eq!(class(Some("/v1/cluster/init"), &post, &cfg), Class::Admin);
        assert_eq!(
            class(Some("/v1/kv/{*key}"), &get, &cfg),
            Class::Authenticated
        );
        assert_eq!(class(None, &get, &cfg), Class::Authenticated);
        let closed = AuthConfig {
            open_metrics: false,
            open_status: true,
            ..AuthConfig::default()
        };
        assert_eq!(class(Some("/metrics"), &get, &closed), Class::Authenticated);
        assert_eq!(class(Some("/status"), &get, &closed), Class::Open);
    }
}
