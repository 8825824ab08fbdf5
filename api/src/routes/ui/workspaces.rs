//! `/admin/ui/workspaces`: every workspace at a glance, and one workspace's status, ops
//! history, events and delegations.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use jobs::domain::Status;
use jobs::store::{delegations as ledger, structure_events, workspace_ops, workspaces};
use maud::html;
use uuid::Uuid;

use super::delegations::table as delegations_table;
use super::layout::{self, Nav, glimpse, state, when, when_opt};
use super::session::UiSession;
use super::{PageError, query_pairs, shown};
use crate::error::ApiError;
use crate::routes::workspaces::status_filter;
use crate::state::AppState;

const LIST_MAX: i64 = 500;
const HISTORY: i64 = 50;

#[utoipa::path(get, path = "/admin/ui/workspaces", tag = "dashboard",
    params(("status" = Option<String>, Query, description = "A workspace status")),
    security(("dashboard_session" = [])),
    responses(
        (status = 200, description = "The workspaces", content_type = "text/html", body = String),
        (status = 303, description = "No live dashboard session: on to the login page"),
        (status = 400, description = "An unknown status: the page, naming it"),
    ))]
/// `GET /admin/ui/workspaces?status=`.
pub async fn list(
    State(app): State<AppState>,
    session: UiSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let q = query_pairs(raw.as_deref());
    let wanted = q.get("status").cloned().unwrap_or_default();
    let (code, problem, status) = shown((!wanted.is_empty()).then(|| status_filter(&wanted)).transpose());
    let rows = match problem {
        None => workspaces::list_page(&app.pool, status.flatten(), None, None, LIST_MAX).await?,
        Some(_) => vec![],
    };
    let body = html! {
        form.filters method="get" action="/admin/ui/workspaces" {
            label { "status" select name="status" {
                option value="" { "any (not removed)" }
                @for s in Status::ALL { option value=(s.as_str()) selected[s.as_str() == wanted] { (s.as_str()) } }
            } }
            button type="submit" { "Filter" }
        }
        @if let Some(p) = &problem { div.flash.err #filter-error { (p) } }
        @if rows.is_empty() {
            p.muted { "No workspace matches." }
        } @else {
            table #workspaces {
                thead { tr { th { "name" } th { "status" } th { "runtime" } th { "backend" } th { "last heartbeat" } th { "status since" } th { "error" } } }
                tbody {
                    @for w in &rows {
                        tr {
                            td { a href={ "/admin/ui/workspaces/" (w.id) } { (w.name) } }
                            td { (state(w.status.as_str())) }
                            td { (w.runtime) " · tier " (w.tier) }
                            td { @if let Some(b) = w.backend { code { (b.as_str()) } } }
                            td { (when_opt(w.last_heartbeat_at)) }
                            td { (when(w.status_changed_at)) }
                            td.small { (glimpse(w.last_sample_error.as_deref().unwrap_or_default(), 80)) }
                        }
                    }
                }
            }
            @if rows.len() as i64 == LIST_MAX { p.muted { "The first " (LIST_MAX) " only; filter by status to see others." } }
        }
    };
    Ok((code, layout::page("Workspaces", &session, Nav::Workspaces, body)).into_response())
}

#[utoipa::path(get, path = "/admin/ui/workspaces/{id}", tag = "dashboard",
    params(("id" = String, Path, description = "The workspace")),
    security(("dashboard_session" = [])),
    responses(
        (status = 200, description = "The workspace: status, ops and events", content_type = "text/html", body = String),
        (status = 303, description = "No live dashboard session: on to the login page"),
        (status = 404, description = "No such workspace"),
    ))]
/// `GET /admin/ui/workspaces/:id`.
pub async fn detail(
    State(app): State<AppState>,
    session: UiSession,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let not_found = || ApiError::NotFound(format!("workspace {id} not found"));
    let ws_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let w = workspaces::get(&app.pool, ws_id).await?.ok_or_else(not_found)?;
    let ops = workspace_ops::list_for_workspace(&app.pool, w.id, HISTORY).await?;
    let events = structure_events::list(&app.pool, Some(w.id), None, HISTORY).await?;
    let delegations = ledger::of_workspace(&app.pool, w.id, HISTORY).await?;
    let body = html! {
        section.card #workspace {
            div.actions { span #workspace-status { (state(w.status.as_str())) } span.muted { "since " (when(w.status_changed_at)) } }
            dl.facts {
                dt { "id" } dd { code { (w.id) } }
                dt { "runtime" } dd { (w.runtime) " · tier " (w.tier) " · model " code { (w.model) } }
                @if let Some(p) = w.parent_id { dt { "parent" } dd { a href={ "/admin/ui/workspaces/" (p) } { code { (p) } } } }
                dt { "instance" } dd {
                    code { (w.instance_ref.as_deref().unwrap_or("—")) }
                    @if let Some(e) = &w.docker_engine { " on engine " code { (e) } }
                }
                dt { "agent url" } dd { code { (w.url.as_deref().unwrap_or("—")) } }
                dt { "last heartbeat" } dd { (when_opt(w.last_heartbeat_at)) " · " (w.active_tasks) " active tasks" }
                @if let Some(t) = &w.current_task { dt { "current task" } dd { (t) } }
                @if let Some(e) = &w.last_sample_error { dt { "last error" } dd { pre.error { (e) } } }
                dt { "created" } dd { (when(w.created_at)) }
                dt { "jobs" } dd { a href={ "/admin/ui/jobs?workspace_id=" (w.id) } { "every job of this workspace" } }
            }
        }
        section.card #ops {
            h2 style="margin-top:0" { "Ops" }
            @if ops.is_empty() { p.muted { "No op." } } @else {
                table {
                    thead { tr { th { "op" } th { "kind" } th { "state" } th.num { "attempts" } th { "reason" } th { "by" } th { "created" } th { "finished" } th { "error" } } }
                    tbody {
                        @for o in &ops {
                            tr {
                                td { a href={ "/admin/ui/jobs/" (o.id) } { code { (glimpse(&o.id.to_string(), 8)) } } }
                                td { code { (o.kind.as_str()) } }
                                td { (state(o.status.as_str())) }
                                td.num { (o.attempts) " / " (o.max_attempts) }
                                td { (glimpse(&o.reason, 60)) }
                                td { (o.requested_by) }
                                td { (when(o.created_at)) }
                                td { (when_opt(o.finished_at)) }
                                td.small { (glimpse(o.last_error.as_deref().unwrap_or_default(), 100)) }
                            }
                        }
                    }
                }
            }
        }
        section.card #events {
            h2 style="margin-top:0" { "Events" }
            @if events.is_empty() { p.muted { "No event." } } @else {
                table {
                    thead { tr { th.num { "#" } th { "event" } th { "when" } th { "payload" } } }
                    tbody {
                        @for e in &events {
                            tr {
                                td.num { (e.id) }
                                td { code { (e.event_type) } }
                                td { (when(e.created_at)) }
                                td { pre.small { (e.payload.to_string()) } }
                            }
                        }
                    }
                }
            }
        }
        section.card #delegations {
            h2 style="margin-top:0" { "Delegations" }
            (delegations_table(&delegations))
        }
    };
    Ok(layout::page(&format!("Workspace {}", w.name), &session, Nav::Workspaces, body).into_response())
}
