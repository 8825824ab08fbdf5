//! `POST /org/import`: a whole org chart of workspaces from one inline template.
//!
//! Templates written for the canvas carry more than this server implements (plugins,
//! schedules, channels, prompts, files): unknown keys are ignored, and every key that is
//! read is validated with the rules of `POST /workspaces` before anything is written.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobs::domain::CreateRequest;
use jobs::domain::workspace::{self, MAX_NAME_CHARS};
use jobs::org_import::{self, Imported, MAX_DEPTH, MAX_NODES, OrgNode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;
use crate::routes::workspaces::{Canvas, CreateBody};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"template": {"name": "acme", "workspaces": [
    {"name": "lead", "children": [{"name": "researcher"}, {"name": "writer", "tier": 1}]}]}}))]
pub struct ImportBody {
    /// Required: the org template itself.
    template: Option<Template>,
    /// Templates on the server's disk are not supported; named only to answer it clearly.
    dir: Option<Value>,
}

/// Keys beyond these are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Template {
    name: String,
    defaults: Option<Defaults>,
    workspaces: Option<Vec<TemplateNode>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct Defaults {
    runtime: Option<String>,
    tier: Option<i64>,
    model: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TemplateNode {
    name: String,
    role: Option<String>,
    runtime: Option<String>,
    tier: Option<i64>,
    model: Option<String>,
    external: Option<bool>,
    url: Option<String>,
    max_concurrent_tasks: Option<i32>,
    canvas: Option<Canvas>,
    #[schema(no_recursion)]
    children: Option<Vec<TemplateNode>>,
}

/// The tier of a node that names none, in the template or its defaults.
const DEFAULT_TIER: i64 = 2;

impl Template {
    /// The org's name and its validated trees; a 400 naming the node and the problem
    /// otherwise.
    fn validate(self) -> ApiResult<(String, Vec<OrgNode>)> {
        let org = workspace::parse_name("template.name", &self.name, MAX_NAME_CHARS)?;
        let roots = self.workspaces.unwrap_or_default();
        if roots.is_empty() {
            return Err(ApiError::BadRequest("template.workspaces must list at least one workspace".into()));
        }
        let defaults = self.defaults.unwrap_or_default();
        let mut walk = Walk { defaults: &defaults, nodes: 0 };
        let roots = walk.level(roots, "template.workspaces", 1)?;
        Ok((org, roots))
    }
}

struct Walk<'a> {
    defaults: &'a Defaults,
    nodes: usize,
}

impl Walk<'_> {
    /// Converts one list of siblings at `depth` (roots are 1), and their subtrees.
    fn level(&mut self, siblings: Vec<TemplateNode>, path: &str, depth: usize) -> ApiResult<Vec<OrgNode>> {
        if depth > MAX_DEPTH && !siblings.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{path}: the template nests deeper than {MAX_DEPTH} levels; at most {MAX_DEPTH} are accepted"
            )));
        }
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(siblings.len());
        for (i, node) in siblings.into_iter().enumerate() {
            self.nodes += 1;
            if self.nodes > MAX_NODES {
                return Err(ApiError::BadRequest(format!(
                    "the template has more than {MAX_NODES} workspaces; at most {MAX_NODES} are accepted"
                )));
            }
            let here = format!("{path}[{i}]");
            let (fields, children) = node.split();
            let req = self.request(fields, &here)?;
            if !names.insert(req.name.clone()) {
                return Err(ApiError::BadRequest(format!(
                    "{here}: another workspace under the same parent is already named {:?}; names must be unique under one parent",
                    req.name
                )));
            }
            let children = self.level(children, &format!("{here}.children"), depth + 1)?;
            out.push(OrgNode { req, children });
        }
        Ok(out)
    }

    /// The node as a `POST /workspaces` body, defaults applied, through that route's rules.
    fn request(&self, body: CreateBody, here: &str) -> ApiResult<CreateRequest> {
        let d = self.defaults;
        let runtime = body.runtime.or_else(|| d.runtime.clone()).unwrap_or_else(|| "langgraph".into());
        let body = CreateBody {
            // No model from the node or the defaults: the runtime's own default, as for a
            // single create.
            model: body.model.or_else(|| d.model.clone()),
            tier: Some(body.tier.or(d.tier).unwrap_or(DEFAULT_TIER)),
            runtime: Some(runtime),
            ..body
        };
        let name = body.name.clone();
        CreateRequest::try_from(body).map_err(|e| ApiError::BadRequest(format!("{here} ({name:?}): {e}")))
    }
}

impl TemplateNode {
    /// What the node says about itself, and its children.
    fn split(self) -> (CreateBody, Vec<TemplateNode>) {
        let body = CreateBody {
            name: self.name,
            role: self.role,
            runtime: self.runtime,
            tier: self.tier,
            model: self.model,
            parent_id: None,
            external: self.external,
            url: self.url,
            delivery_mode: None,
            max_concurrent_tasks: self.max_concurrent_tasks,
            canvas: self.canvas,
        };
        (body, self.children.unwrap_or_default())
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportFailure {
    name: String,
    parent_id: Option<Uuid>,
    error: String,
}

/// The workspaces of the org, created now or found from an earlier import; on a 207 also
/// the node the import stopped at, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportAnswer {
    org: String,
    workspaces: Vec<Imported>,
    count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<ImportFailure>,
}

#[utoipa::path(post, path = "/org/import", tag = "workspaces",
    request_body = ImportBody,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Every workspace of the template exists", body = ImportAnswer),
        (status = 207, description = "The import stopped part way: `error` and `failed` say where", body = ImportAnswer),
        (status = 400, description = "A bad template (the message names the node), or `dir`", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn import(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(body): ApiJson<ImportBody>,
) -> ApiResult<Response> {
    let template = match (body.template, body.dir) {
        (_, Some(_)) => {
            return Err(ApiError::BadRequest(
                "dir: only inline templates are supported (this server keeps no template directory); send the template itself as `template`".into(),
            ));
        }
        (Some(t), None) => t,
        (None, None) => return Err(ApiError::BadRequest("template is required: the org template to import".into())),
    };
    let (org, roots) = template.validate()?;
    let outcome = org_import::import(&state.pool, roots, &state.config.api.agent_urls, &admin.label()).await?;
    let count = outcome.workspaces.len();
    let Some(failed) = outcome.failed else {
        let body = ImportAnswer { org, workspaces: outcome.workspaces, count, error: None, failed: None };
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    };
    let error = format!("workspace {:?} was not imported: {}", failed.name, failed.error);
    tracing::warn!(org = %org, %error, "org import stopped part way");
    let body = ImportAnswer {
        org,
        workspaces: outcome.workspaces,
        count,
        error: Some(error),
        failed: Some(ImportFailure { name: failed.name, parent_id: failed.parent_id, error: failed.error.to_string() }),
    };
    Ok((StatusCode::MULTI_STATUS, Json(body)).into_response())
}
