//! `/admin/ui/delegations`: the ledger's counts by status, and its rows by the same filters
//! as `GET /admin/delegations`.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use jobs::domain::DelegationStatus;
use jobs::store::delegations::{self as ledger, Delegation};
use maud::{Markup, html};

use super::layout::{self, Nav, glimpse, state, when, when_opt};
use super::session::UiSession;
use super::{PageError, query_pairs, shown};
use crate::routes::delegations::{ADMIN_FILTERS as FILTERS, admin_filter};
use crate::state::AppState;

const LIMIT: i64 = 200;
#[utoipa::path(get, path = "/admin/ui/delegations", tag = "dashboard",
    params(("status" = Option<String>, Query, description = "in_flight (default), stuck, failed or completed")),
    security(("dashboard_session" = [])),
    responses(
        (status = 200, description = "Delegations by status", content_type = "text/html", body = String),
        (status = 303, description = "No live dashboard session: on to the login page"),
        (status = 400, description = "An unknown status filter: the page, naming it"),
    ))]
/// `GET /admin/ui/delegations?status=in_flight|stuck|failed|completed`.
pub async fn list(
    State(app): State<AppState>,
    session: UiSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let q = query_pairs(raw.as_deref());
    let filter = q.get("status").cloned().unwrap_or_else(|| "in_flight".into());
    let counts = ledger::counts(&app.pool).await?;
    let count = |s: DelegationStatus| counts.iter().find(|(n, _)| n == s.as_str()).map_or(0, |(_, c)| *c);
    let (code, problem, statuses) = shown(admin_filter(&filter));
    let rows = match statuses {
        Some(st) => ledger::with_status(&app.pool, st, LIMIT).await?,
        None => vec![],
    };
    let body = html! {
        div.stats {
            @for s in DelegationStatus::ALL {
                div.stat { b { (count(s)) } span { (state(s.as_str())) } }
            }
        }
        p.filters {
            @for f in FILTERS {
                @if f == filter { b { (f) } } @else { a href={ "/admin/ui/delegations?status=" (f) } { (f) } }
            }
        }
        @if let Some(p) = &problem { div.flash.err #filter-error { (p) } }
        (table(&rows))
    };
    Ok((code, layout::page("Delegations", &session, Nav::Delegations, body)).into_response())
}

pub fn table(rows: &[Delegation]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { "No delegation." }
        } @else {
            table {
                thead { tr {
                    th { "delegation" } th { "caller → callee" } th { "status" } th { "task" } th { "heartbeat" }
                    th { "deadline" } th.num { "retries" } th { "result / error" } th { "created" }
                } }
                tbody {
                    @for d in rows {
                        tr {
                            td { code { (glimpse(&d.delegation_id, 12)) } }
                            td {
                                a href={ "/admin/ui/workspaces/" (d.caller_id) } { code { (glimpse(&d.caller_id.to_string(), 8)) } }
                                " → "
                                a href={ "/admin/ui/workspaces/" (d.callee_id) } { code { (glimpse(&d.callee_id.to_string(), 8)) } }
                            }
                            td { (state(d.status.as_str())) }
                            td { (glimpse(&d.task_preview, 80)) }
                            td { (when_opt(d.last_heartbeat)) }
                            td { (when(d.deadline)) }
                            td.num { (d.retry_count) }
                            td.small {
                                @if let Some(e) = &d.error_detail { pre.error { (e) } }
                                @else if let Some(r) = &d.result_preview { (glimpse(r, 120)) }
                            }
                            td { (when(d.created_at)) }
                        }
                    }
                }
            }
        }
    }
}
