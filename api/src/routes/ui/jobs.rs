//! `/admin/ui/jobs`: the job list with its filters, a job's detail (attempts, errors in
//! full, its apalis task), and the retry and cancel buttons.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use jobs::admin::jobs::{self as admin_jobs, Filter, Job};
use jobs::admin::{JobKind, JobRef, JobState, control};
use jobs::store::workspaces;
use maud::{Markup, html};

use super::layout::{self, Nav, glimpse, state, when, when_opt};
use super::session::{ActionForm, Protected, UiSession};
use super::{PageError, query_pairs, shown};
use crate::error::ApiError;
use crate::routes::admin::{JOB_ID, find, job_filter, job_ref};
use crate::state::AppState;

const PAGE: i64 = 50;

/// The filters as typed, kept to fill the form back in.
#[derive(Default)]
struct Typed {
    kind: String,
    state: String,
    workspace_id: String,
}

fn parse_filter(q: &std::collections::HashMap<String, String>) -> Result<Filter, ApiError> {
    let field = |k: &str| q.get(k).map(String::as_str);
    job_filter(field("kind"), field("state"), field("workspace_id"), field("before"))
}

#[utoipa::path(get, path = "/admin/ui/jobs", tag = "dashboard",
    params(("kind" = Option<String>, Query, description = "A job kind"), ("state" = Option<String>, Query, description = "A job state"),
        ("workspace_id" = Option<String>, Query, description = "A workspace id"), ("before" = Option<String>, Query, description = "The cursor of the next page")),
    security(("dashboard_session" = [])),
    responses(
        (status = 200, description = "The jobs, newest first, filtered", content_type = "text/html", body = String),
        (status = 303, description = "No live dashboard session: on to the login page"),
        (status = 400, description = "A bad filter: the page, naming it"),
    ))]
/// `GET /admin/ui/jobs?kind=&state=&workspace_id=&before=`. A bad filter shows the page
/// with the problem named (400), not an error page: the operator fixes it in the form.
pub async fn list(
    State(app): State<AppState>,
    session: UiSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let q = query_pairs(raw.as_deref());
    let typed = Typed {
        kind: q.get("kind").cloned().unwrap_or_default(),
        state: q.get("state").cloned().unwrap_or_default(),
        workspace_id: q.get("workspace_id").cloned().unwrap_or_default(),
    };
    let (status, problem, filter) = shown(parse_filter(&q));
    let (rows, next) = match filter {
        Some(filter) => admin_jobs::list(&app.pool, &filter, PAGE).await?,
        None => (vec![], None),
    };
    let next_link = next.map(|c| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("kind", &typed.kind), ("state", &typed.state), ("workspace_id", &typed.workspace_id)] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.append_pair("before", &c.encode());
        format!("/admin/ui/jobs?{}", s.finish())
    });
    let body = html! {
        form.filters method="get" action="/admin/ui/jobs" {
            label { "kind" select name="kind" {
                option value="" { "any" }
                @for k in JobKind::allowed() { option value=(k) selected[k == typed.kind] { (k) } }
            } }
            label { "state" select name="state" {
                option value="" { "any" }
                @for s in JobState::ALL { option value=(s) selected[s == typed.state] { (s) } }
            } }
            label { "workspace id" input name="workspace_id" size="38" value=(typed.workspace_id) placeholder="any"; }
            button type="submit" { "Filter" }
            a href="/admin/ui/jobs" { "clear" }
        }
        @if let Some(p) = &problem {
            div.flash.err #filter-error { (p) }
        }
        (table(&rows))
        @if let Some(href) = next_link {
            p { a #older href=(href) { "Older jobs →" } }
        }
    };
    Ok((status, layout::page("Jobs", &session, Nav::Jobs, body)).into_response())
}

fn table(rows: &[Job]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted #no-jobs { "No job matches." }
        } @else {
            table #jobs {
                thead { tr {
                    th { "job" } th { "kind" } th { "state" } th.num { "attempts" } th { "workspace" }
                    th { "reason" } th { "created" } th { "finished" } th { "error" }
                } }
                tbody {
                    @for j in rows {
                        tr data-job=(j.id) {
                            td { a href={ "/admin/ui/jobs/" (j.id) } { code { (glimpse(&j.id, 40)) } } }
                            td { code { (j.kind) } }
                            td { (state(&j.state)) }
                            td.num { (j.attempts) @if let Some(m) = j.max_attempts { " / " (m) } }
                            td { @if let Some(w) = j.workspace_id { a href={ "/admin/ui/workspaces/" (w) } { code { (glimpse(&w.to_string(), 8)) } } } }
                            td { (glimpse(j.reason.as_deref().unwrap_or_default(), 60)) }
                            td { (when(j.created_at)) }
                            td { (when_opt(j.finished_at)) }
                            td.small { (glimpse(j.last_error.as_deref().unwrap_or_default(), 100)) }
                        }
                    }
                }
            }
        }
    }
}

#[utoipa::path(get, path = "/admin/ui/jobs/{id}", tag = "dashboard",
    params(("id" = String, Path, description = JOB_ID)),
    security(("dashboard_session" = [])),
    responses(
        (status = 200, description = "The job with its attempts, errors and actions", content_type = "text/html", body = String),
        (status = 303, description = "No live dashboard session: on to the login page"),
        (status = 400, description = "A malformed job id"),
        (status = 404, description = "No such job"),
    ))]
/// `GET /admin/ui/jobs/:id`.
pub async fn detail(
    State(app): State<AppState>,
    session: UiSession,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let r = job_ref(&id)?;
    let job = find(&app, &r).await?;
    let attempts = admin_jobs::attempts(&app.pool, &job, &r).await?;
    let workspace = match job.workspace_id {
        Some(ws) => workspaces::get(&app.pool, ws).await?,
        None => None,
    };
    let task = match admin_jobs::task_id_of(&app.pool, &r).await? {
        Some(t) => admin_jobs::task(&app.pool, &t).await?,
        None => None,
    };
    let retry_of = job.reason.as_deref().and_then(|r| r.strip_prefix("retry of "));
    let body = html! {
        section.card #job {
            div.actions {
                span #job-state { (state(&job.state)) }
                code { (job.kind) }
                @if job.state == "failed" && !matches!(r, JobRef::Sweep { .. }) {
                    (layout::action(&session, &format!("/admin/ui/jobs/{}/retry", job.id), "Retry", "primary"))
                }
                @if matches!(r, JobRef::Op(_)) && (job.state == "queued" || job.state == "running") {
                    (layout::action(&session, &format!("/admin/ui/jobs/{}/cancel", job.id), "Cancel", "danger"))
                }
            }
            dl.facts {
                dt { "id" } dd { code #job-id { (job.id) } }
                dt { "attempts" } dd { (job.attempts) @if let Some(m) = job.max_attempts { " of " (m) } }
                dt { "reason" } dd {
                    @if let Some(of) = retry_of {
                        "retry of " a href={ "/admin/ui/jobs/" (of) } { code { (of) } }
                    } @else {
                        (job.reason.as_deref().unwrap_or("—"))
                    }
                }
                dt { "requested by" } dd { (job.requested_by.as_deref().unwrap_or("—")) }
                dt { "worker" } dd { code { (job.claimed_by.as_deref().unwrap_or("—")) } }
                dt { "workspace" } dd {
                    @match (&workspace, job.workspace_id) {
                        (Some(w), _) => { a href={ "/admin/ui/workspaces/" (w.id) } { (w.name) } " " (state(w.status.as_str())) }
                        (None, Some(id)) => { code { (id) } span.muted { " (gone)" } }
                        (None, None) => { span.muted { "—" } }
                    }
                }
                dt { "created" } dd { (when(job.created_at)) }
                dt { "started" } dd { (when_opt(job.started_at)) }
                dt { "finished" } dd { (when_opt(job.finished_at)) }
            }
        }
        @if let Some(e) = &job.last_error {
            section.card {
                h2 style="margin-top:0" { "Last error" }
                pre.error #last-error { (e) }
            }
        }
        section.card #attempts {
            h2 style="margin-top:0" { "Attempts" }
            @if attempts.is_empty() {
                p.muted { "Not attempted yet." }
            } @else {
                table {
                    thead { tr { th.num { "#" } th { "worker" } th { "started" } th { "finished" } th { "outcome" } th { "error" } } }
                    tbody {
                        @for a in &attempts {
                            tr {
                                td.num { (a.attempt) }
                                td { code { (a.worker.as_deref().unwrap_or("—")) } }
                                td { (when(a.started_at)) }
                                td { (when_opt(a.finished_at)) }
                                td {
                                    @match &a.outcome { Some(o) => { (state(o)) } None => { (state("running")) } }
                                    @if let Some(h) = a.http_status { " HTTP " (h) }
                                }
                                td { @if let Some(e) = &a.error { pre.error { (e) } } }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(t) = &task {
            section.card #task {
                h2 style="margin-top:0" { "apalis task" }
                dl.facts {
                    dt { "task" } dd { code { (t.id) } " on " code { (t.queue) } }
                    dt { "status" } dd { (t.status) ", attempt " (t.attempts) " of " (t.max_attempts) }
                    dt { "run at" } dd { (when(t.run_at)) }
                    dt { "locked by" } dd { code { (t.lock_by.as_deref().unwrap_or("—")) } }
                    dt { "done" } dd { (when_opt(t.done_at)) }
                    @if let Some(res) = &t.last_result {
                        dt { "last result" } dd { pre { (serde_json::to_string_pretty(res).unwrap_or_default()) } }
                    }
                }
            }
        }
    };
    Ok(layout::page(&format!("Job {}", glimpse(&job.id, 48)), &session, Nav::Jobs, body).into_response())
}

#[utoipa::path(post, path = "/admin/ui/jobs/{id}/retry", tag = "dashboard",
    params(("id" = String, Path, description = JOB_ID)),
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    security(("dashboard_session" = [])),
    responses(
        (status = 303, description = "On to the job that runs again"),
        (status = 401, description = "No live dashboard session"),
        (status = 403, description = "The form's CSRF token is missing or not this session's"),
        (status = 400, description = "A malformed job id"),
        (status = 404, description = "No such job"),
        (status = 409, description = "The job is not in a state that can be retried"),
    ))]
/// `POST /admin/ui/jobs/:id/retry`: on to the job that runs again.
pub async fn retry(
    State(app): State<AppState>,
    Path(id): Path<String>,
    form: Protected,
) -> Result<Response, PageError> {
    let r = job_ref(&id)?;
    find(&app, &r).await?;
    let retried = control::retry(&app.pool, &r, &form.session.operator).await?;
    Ok(Redirect::to(&format!("/admin/ui/jobs/{}", retried.job_id)).into_response())
}

#[utoipa::path(post, path = "/admin/ui/jobs/{id}/cancel", tag = "dashboard",
    params(("id" = String, Path, description = JOB_ID)),
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    security(("dashboard_session" = [])),
    responses(
        (status = 303, description = "Back to the job, canceled or asked to stop"),
        (status = 401, description = "No live dashboard session"),
        (status = 403, description = "The form's CSRF token is missing or not this session's"),
        (status = 400, description = "A malformed job id"),
        (status = 404, description = "No such job"),
        (status = 409, description = "The job has finished"),
    ))]
/// `POST /admin/ui/jobs/:id/cancel`: back to the job, now canceled.
pub async fn cancel(
    State(app): State<AppState>,
    Path(id): Path<String>,
    form: Protected,
) -> Result<Response, PageError> {
    let r = job_ref(&id)?;
    find(&app, &r).await?;
    control::cancel(&app.pool, &r, &form.session.operator).await?;
    Ok(Redirect::to(&format!("/admin/ui/jobs/{}", r)).into_response())
}
