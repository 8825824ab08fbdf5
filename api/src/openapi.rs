//! `GET /openapi.json`: the api's contract, generated from the handlers' `#[utoipa::path]`
//! annotations and the types they take and return, never written by hand. Every route of
//! the router is listed here (a unit test holds the two together), and schemathesis checks
//! the running api against it (`tests/tests/suite/openapi.rs`).

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, ErrorBody};
use crate::routes::{
    activity, admin, delegations, engines, events, external, health, memories, metrics, ops, org, org_tokens, registry,
    ui, uploads, workspaces,
};

/// The bearer credential of operators and the canvas: the admin token, or an org API token.
pub const ADMIN: &str = "admin_token";
/// The bearer token of one workspace, held by its agent.
pub const WORKSPACE: &str = "workspace_token";
/// The single-use secret a started instance is given, which its first register trades for
/// a workspace token.
pub const BOOTSTRAP: &str = "bootstrap_secret";
/// `/ws`'s `?token=`, for browsers that cannot set headers on a WebSocket.
pub const QUERY_TOKEN: &str = "query_token";
/// The dashboard's session cookie, set by `POST /admin/ui/login`.
pub const DASHBOARD: &str = "dashboard_session";
/// The dashboard's pages and forms, for people: HTML, and errors as HTML pages.
const DASHBOARD_PREFIX: &str = "/admin/ui";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "workspace-server",
        description = "Creates, runs and connects agent workspaces. Errors are JSON `{\"error\": \"...\"}` \
                       (`ErrorBody`); every route that reads the database can also answer 503 (with `Retry-After`) \
                       while the database is unreachable."
    ),
    paths(
        health::health,
        metrics::metrics,
        serve,
        workspaces::create,
        workspaces::list,
        workspaces::get,
        workspaces::patch,
        workspaces::delete,
        workspaces::restart,
        workspaces::pause,
        workspaces::resume,
        workspaces::collapse,
        external::rotate_token,
        external::rotate,
        external::connection,
        ops::list_for_workspace,
        ops::get,
        activity::list,
        activity::record,
        activity::send,
        uploads::upload,
        uploads::content,
        uploads::ack,
        delegations::delegate,
        delegations::list,
        delegations::record,
        delegations::update,
        delegations::heartbeat,
        delegations::admin_list,
        delegations::admin_stats,
        memories::commit,
        memories::search,
        memories::edit,
        memories::delete,
        admin::list,
        admin::get,
        admin::retry,
        admin::cancel,
        admin::queues,
        admin::pause,
        admin::resume,
        admin::workers,
        engines::retire,
        registry::register,
        registry::heartbeat,
        org::import,
        org_tokens::mint,
        org_tokens::list,
        org_tokens::revoke,
        events::list,
        events::websocket,
        ui::overview::page,
        ui::session::login_page,
        ui::session::login,
        ui::session::logout,
        ui::jobs::list,
        ui::jobs::detail,
        ui::jobs::retry,
        ui::jobs::cancel,
        ui::overview::pause,
        ui::overview::resume,
        ui::workspaces::list,
        ui::workspaces::detail,
        ui::delegations::list,
    ),
    components(schemas(ErrorBody, workspaces::ConfirmationRequired)),
    modifiers(&Security, &ServerErrors, &DashboardErrors, &OperationIds)
)]
pub struct ApiDoc;

/// The document, rendered once.
static DOCUMENT: LazyLock<Result<String, String>> =
    LazyLock::new(|| ApiDoc::openapi().to_pretty_json().map_err(|e| e.to_string()));

/// The OpenAPI 3.1 document of this api.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 500, description = "The document could not be rendered; see the server log", body = ErrorBody),
    )
)]
pub async fn serve() -> Result<impl IntoResponse, ApiError> {
    match DOCUMENT.as_ref() {
        Ok(doc) => Ok(([(CONTENT_TYPE, "application/json")], doc.as_str())),
        Err(e) => Err(ApiError::Internal(jobs::Error::Internal(format!("rendering the OpenAPI document: {e}")))),
    }
}

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let bearer = |description: &str| {
            let mut http = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
            http.description = Some(description.to_string());
            SecurityScheme::Http(http)
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(ADMIN, bearer("The admin token (`ADMIN_TOKEN`), or an org API token"));
        components.add_security_scheme(WORKSPACE, bearer("A workspace's own token"));
        components.add_security_scheme(
            BOOTSTRAP,
            bearer("The single-use bootstrap secret delivered to a started instance (register only)"),
        );
        components.add_security_scheme(
            QUERY_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The admin token in the query, for browsers",
            ))),
        );
        components.add_security_scheme(
            DASHBOARD,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::routes::ui::session::COOKIE,
                "The dashboard's session (HttpOnly, SameSite=Strict); its forms also carry a CSRF token",
            ))),
        );
    }
}

/// 500 and 503 can come from any route that reads the database, which is every route but
/// the two that serve what the process holds in memory. A path parameter left empty
/// (`/ops/`) matches no route: 404 from the router's fallback.
struct ServerErrors;

impl Modify for ServerErrors {
    fn modify(&self, doc: &mut Document) {
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content("application/json", ContentBuilder::new().schema(Some(error_schema())).build())
                    .build(),
            )
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            if matches!(path.as_str(), "/metrics" | "/openapi.json") || path.starts_with(DASHBOARD_PREFIX) {
                continue;
            }
            let parameterised = path.contains('{');
            for op in
                [&mut item.get, &mut item.post, &mut item.patch, &mut item.delete, &mut item.put].into_iter().flatten()
            {
                let responses = &mut op.responses.responses;
                if parameterised {
                    responses
                        .entry("404".into())
                        .or_insert_with(|| error("No route matches: a path parameter is empty"));
                }
                responses.entry("500".into()).or_insert_with(|| error("Internal error; see the server log"));
                responses.entry("503".into()).or_insert_with(|| {
                    error("The database (or, for starts, every backend) is unavailable; retry shortly")
                });
            }
        }
    }
}

/// The dashboard answers a person: a failure is an HTML page, except the refusals of its
/// session and CSRF checks on a form post and the router's own 404, which are the JSON
/// `ErrorBody`. Each error status a dashboard route documents gets both bodies, and every
/// route gets the database's 500 and 503 (and 404 for an empty path parameter).
struct DashboardErrors;

impl Modify for DashboardErrors {
    fn modify(&self, doc: &mut Document) {
        for (path, item) in doc.paths.paths.iter_mut().filter(|(p, _)| p.starts_with(DASHBOARD_PREFIX)) {
            let parameterised = path.contains('{');
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                let responses = &mut op.responses.responses;
                if parameterised {
                    responses.entry("404".into()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new().description("No route matches: a path parameter is empty").build(),
                        )
                    });
                }
                for (status, description) in [
                    ("500", "Internal error; see the server log"),
                    ("503", "The database is unavailable; retry shortly"),
                ] {
                    responses
                        .entry(status.into())
                        .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
                }
                for (status, response) in responses.iter_mut() {
                    let RefOr::T(response) = response else { continue };
                    if status.starts_with('4') || status.starts_with('5') {
                        response.content.insert(
                            "application/json".into(),
                            ContentBuilder::new().schema(Some(error_schema())).build(),
                        );
                        response.content.insert(
                            "text/html".into(),
                            ContentBuilder::new()
                                .schema(Some(
                                    utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String),
                                ))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

/// utoipa names an operation after its handler, and several modules have a `list` or a
/// `get`; operation ids must be unique, so each is derived from its method and path
/// (`get_workspaces_id_ops`), which are.
struct OperationIds;

impl Modify for OperationIds {
    fn modify(&self, doc: &mut Document) {
        for (path, item) in doc.paths.paths.iter_mut() {
            let words: Vec<String> = path
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_ascii_lowercase)
                .collect();
            let methods = [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("patch", &mut item.patch),
                ("delete", &mut item.delete),
                ("put", &mut item.put),
            ];
            for (method, op) in methods {
                if let Some(op) = op {
                    op.operation_id = Some(
                        std::iter::once(method.to_string()).chain(words.iter().cloned()).collect::<Vec<_>>().join("_"),
                    );
                }
            }
        }
    }
}

fn error_schema() -> RefOr<utoipa::openapi::Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every `.route(...)` of the router and the dashboard's, as (METHOD, path), read from
    /// their source: a route added there without an entry in [`ApiDoc`] fails the test below.
    fn router_routes() -> BTreeSet<(String, String)> {
        let sources = [include_str!("routes/mod.rs"), include_str!("routes/ui/mod.rs")];
        let constants = [("OVERVIEW", crate::routes::ui::OVERVIEW), ("LOGIN", crate::routes::ui::LOGIN)];
        let mut out = BTreeSet::new();
        for call in sources.iter().flat_map(|s| s.split(".route(").skip(1)) {
            let (path, rest) = match call.strip_prefix('"') {
                Some(quoted) => {
                    let Some((path, rest)) = quoted.split_once('"') else { continue };
                    (path, rest)
                }
                None => {
                    let Some((name, rest)) = call.split_once(',') else { continue };
                    let Some((_, path)) = constants.iter().find(|(c, _)| *c == name.trim()) else {
                        panic!("the route path {name:?} is neither a literal nor a known constant")
                    };
                    (*path, rest)
                }
            };
            // The method routers of one `.route(...)` call, up to the next one.
            let handlers = rest.split("\n        .").next().unwrap_or(rest);
            for method in ["get", "post", "patch", "delete", "put"] {
                let called = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0 || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric() && handlers.as_bytes()[i - 1] != b'_'
                });
                if called {
                    out.insert((method.to_uppercase(), path.to_string()));
                }
            }
        }
        out
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("document serializes");
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in ["get", "post", "patch", "delete", "put"] {
                if item.get(method).is_some() {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_of_the_router_is_documented_and_nothing_else() {
        let routes = router_routes();
        assert!(routes.len() > 40, "the router's routes were not read: {routes:?}");
        assert!(routes.contains(&("GET".into(), "/openapi.json".into())), "{routes:?}");
        assert!(routes.contains(&("GET".into(), "/admin/ui".into())), "{routes:?}");
        assert!(routes.contains(&("POST".into(), "/admin/ui/jobs/{id}/retry".into())), "{routes:?}");
        let docs = documented();
        let undocumented: Vec<_> = routes.difference(&docs).collect();
        let unrouted: Vec<_> = docs.difference(&routes).collect();
        assert!(undocumented.is_empty(), "routes missing from /openapi.json: {undocumented:?}");
        assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
    }

    #[test]
    fn every_operation_declares_its_security_and_errors() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("document serializes");
        let open = ["/health", "/metrics", "/openapi.json", "/admin/ui/login"];
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let security = op["security"].as_array().unwrap_or_else(|| panic!("{method} {path}: no security"));
                let anonymous = security.iter().all(|s| s.as_object().is_some_and(|o| o.is_empty()));
                assert_eq!(anonymous, open.contains(&path.as_str()), "{method} {path}: security {security:?}");
                let responses = op["responses"].as_object().expect("responses");
                // A dashboard page sends a person without a session to the login form; every
                // other guarded operation refuses with 401.
                let refusal = if path.starts_with(DASHBOARD_PREFIX) && method == "get" { "303" } else { "401" };
                if !anonymous {
                    assert!(responses.contains_key(refusal), "{method} {path} does not document {refusal}");
                }
                for (status, r) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        let schema = &r["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
                    }
                }
                assert!(!responses.contains_key("422"), "{method} {path}: extractor rejections are 400s");
                // A success answer described as "any JSON" would make schemathesis' schema
                // check hollow.
                for (status, r) in responses.iter().filter(|(s, _)| s.starts_with('2')) {
                    if let Some(schema) = r["content"]["application/json"].get("schema") {
                        let typed = ["$ref", "type", "oneOf", "allOf"].iter().any(|k| schema.get(k).is_some());
                        assert!(typed, "{method} {path} {status}: untyped answer {schema}");
                    }
                }
            }
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("document serializes");
        let mut seen = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(seen.insert(id.to_string()), "{method} {path}: operationId {id} is used twice");
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_error_schema() {
        let doc: serde_json::Value =
            serde_json::from_str(DOCUMENT.as_ref().expect("the document renders")).expect("served document is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
        assert_eq!(doc["components"]["schemas"]["ErrorBody"]["required"], serde_json::json!(["error"]));
    }
}
