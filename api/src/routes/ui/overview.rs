//! `/admin/ui`: the queues, throughput over the last hour, the live workers and the latest
//! failures; and the queue pause and resume buttons.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use jobs::admin::jobs::{self as admin_jobs, Filter};
use jobs::admin::throughput::{self, Minute};
use jobs::admin::{JobState, control, queues, workers};
use maud::{Markup, html};

use super::layout::{self, Nav, glimpse, human_seconds, state, when};
use super::session::{ActionForm, Protected, UiSession};
use super::{OVERVIEW, PageError};
use crate::routes::admin::pausable;
use crate::state::AppState;

const RECENT_FAILURES: i64 = 10;

/// `GET /admin/ui`.
#[utoipa::path(get, path = "/admin/ui", tag = "dashboard",
    security(("dashboard_session" = [])),
    responses(
        (status = 200, description = "The overview: queues, throughput over the last hour, workers, latest failures", content_type = "text/html", body = String),
        (status = 303, description = "No live dashboard session: on to the login page"),
    ))]
pub async fn page(State(app): State<AppState>, session: UiSession) -> Result<Response, PageError> {
    let queues = queues::stats(&app.pool).await?;
    let minutes = throughput::last_hour(&app.pool).await?;
    let workers = workers::list(&app.pool).await?;
    let failed = Filter { state: Some(JobState::Failed), ..Filter::default() };
    let (failures, _) = admin_jobs::list(&app.pool, &failed, RECENT_FAILURES).await?;

    let queued: i64 = queues.iter().map(|q| q.queued).sum();
    let running: i64 = queues.iter().map(|q| q.running).sum();
    // Lifecycle ops only, like the chart: sweeps succeed every period and would drown them.
    let ops = || queues.iter().filter(|q| queues::pausable(&q.kind).is_some());
    let failed_hour: i64 = ops().map(|q| q.last_hour.failed).sum();
    let succeeded_hour: i64 = ops().map(|q| q.last_hour.succeeded).sum();
    let live = workers.iter().filter(|w| w.alive).count();

    let body = html! {
        div.stats {
            div.stat #stat-queued { b { (queued) } span { "queued" } }
            div.stat #stat-running { b { (running) } span { "running" } }
            div.stat #stat-succeeded { b { (succeeded_hour) } span { "ops succeeded, last hour" } }
            div.stat #stat-failed { b { (failed_hour) } span { "ops failed, last hour" } }
            div.stat #stat-workers { b { (live) } span { "live workers" } }
        }
        section.card.chart {
            h2 style="margin-top:0" { "Lifecycle ops finished per minute, last hour" }
            (chart(&minutes))
        }
        div.grid {
            section.card #queues {
                h2 style="margin-top:0" { "Queues" }
                table {
                    thead { tr {
                        th { "kind" } th.num { "queued" } th.num { "running" } th { "oldest waiting" }
                        th.num title="succeeded in the last hour" { "✓ 1 h" } th.num title="failed in the last hour" { "✗ 1 h" }
                        th.num title="canceled in the last hour" { "⊘ 1 h" } th {}
                    } }
                    tbody {
                        @for q in &queues {
                            tr id={ "queue-" (q.kind.replace(':', "-")) } {
                                td {
                                    a href={ "/admin/ui/jobs?kind=" (q.kind) } { code { (q.kind) } }
                                    @if q.paused { " " (state("paused")) }
                                }
                                td.num { (q.queued) }
                                td.num { (q.running) }
                                td { @match q.oldest_waiting_seconds { Some(s) => { (human_seconds(s)) } None => { span.muted { "—" } } } }
                                td.num.succeeded-hour { (q.last_hour.succeeded) }
                                td.num.failed-hour { (q.last_hour.failed) }
                                td.num.canceled-hour { (q.last_hour.canceled) }
                                td {
                                    @if queues::pausable(&q.kind).is_some() {
                                        @if q.paused {
                                            (layout::action(&session, &format!("/admin/ui/queues/{}/resume", q.kind), "Resume", "primary"))
                                        } @else {
                                            (layout::action(&session, &format!("/admin/ui/queues/{}/pause", q.kind), "Pause", ""))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section.card #workers {
                h2 style="margin-top:0" { "Workers" }
                @if workers.is_empty() {
                    p.muted { "No worker has been heard from in the last hour." }
                } @else {
                    table {
                        thead { tr { th { "worker" } th { "" } th { "backends" } th { "last seen" } th.num { "running" } } }
                        tbody {
                            @for w in &workers {
                                tr {
                                    td { code { (w.id) } br; span.small.muted { (w.host) " pid " (w.pid) } }
                                    td { (state(if w.alive { "alive" } else { "dead" })) }
                                    td { (w.backends.join(", ")) }
                                    td { (when(w.last_seen)) }
                                    td.num { (w.running.as_array().map_or(0, Vec::len)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.card #failures {
            h2 style="margin-top:0" {
                "Latest failures " a.small href="/admin/ui/jobs?state=failed" { "(all failed jobs)" }
            }
            @if failures.is_empty() {
                p.muted { "No failed job." }
            } @else {
                table {
                    thead { tr { th { "job" } th { "kind" } th { "error" } th { "finished" } } }
                    tbody {
                        @for j in &failures {
                            tr {
                                td { a href={ "/admin/ui/jobs/" (j.id) } { code { (glimpse(&j.id, 40)) } } }
                                td { code { (j.kind) } }
                                td { (glimpse(j.last_error.as_deref().unwrap_or_default(), 140)) }
                                td { (layout::when_opt(j.finished_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page("Overview", &session, Nav::Overview, body).into_response())
}

/// Bars of succeeded (green) under failed (red) per minute, scaled to the busiest minute.
fn chart(minutes: &[Minute]) -> Markup {
    const W: usize = 12;
    const H: f64 = 90.0;
    let peak = minutes.iter().map(|m| m.succeeded + m.failed).max().unwrap_or(0).max(1) as f64;
    let width = minutes.len() * W;
    html! {
        svg #throughput viewBox={ "0 0 " (width) " " (H + 14.0) } preserveAspectRatio="none" role="img"
            aria-label="lifecycle ops finished per minute over the last hour" {
            line x1="0" y1=(H) x2=(width) y2=(H) stroke="#d0d7de" stroke-width="1" {}
            @for (i, m) in minutes.iter().enumerate() {
                @let ok = m.succeeded as f64 / peak * H;
                @let bad = m.failed as f64 / peak * H;
                @let x = i * W + 1;
                g {
                    title { (m.minute.format("%H:%M")) ": " (m.succeeded) " succeeded, " (m.failed) " failed" }
                    rect x=(x) y=(H - ok) width=(W - 2) height=(ok) fill="#2da44e" {}
                    rect x=(x) y=(H - ok - bad) width=(W - 2) height=(bad) fill="#cf222e" {}
                    rect x=(x) y="0" width=(W - 2) height=(H) fill="transparent" {}
                }
            }
            text x="0" y=(H + 12.0) font-size="9" fill="#57606a" { "60 min ago" }
            text x=(width) y=(H + 12.0) font-size="9" fill="#57606a" text-anchor="end" { "now" }
        }
        div.legend {
            span { i style="background:#2da44e" {} "succeeded" }
            span { i style="background:#cf222e" {} "failed" }
            span { "peak " (peak as i64) " per minute" }
        }
    }
}

async fn set_paused(app: &AppState, form: &Protected, kind: &str, paused: bool) -> Result<Response, PageError> {
    let kind = pausable(kind)?;
    control::set_paused(&app.pool, kind, paused, &form.session.operator).await?;
    Ok(Redirect::to(OVERVIEW).into_response())
}

#[utoipa::path(post, path = "/admin/ui/queues/{kind}/pause", tag = "dashboard",
    params(("kind" = String, Path, description = "A lifecycle op kind")),
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    security(("dashboard_session" = [])),
    responses(
        (status = 303, description = "Back to the overview"),
        (status = 401, description = "No live dashboard session"),
        (status = 403, description = "The form's CSRF token is missing or not this session's"),
        (status = 400, description = "The kind cannot be paused"),
    ))]
/// `POST /admin/ui/queues/:kind/pause`.
pub async fn pause(
    State(app): State<AppState>,
    Path(kind): Path<String>,
    form: Protected,
) -> Result<Response, PageError> {
    set_paused(&app, &form, &kind, true).await
}

#[utoipa::path(post, path = "/admin/ui/queues/{kind}/resume", tag = "dashboard",
    params(("kind" = String, Path, description = "A lifecycle op kind")),
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    security(("dashboard_session" = [])),
    responses(
        (status = 303, description = "Back to the overview"),
        (status = 401, description = "No live dashboard session"),
        (status = 403, description = "The form's CSRF token is missing or not this session's"),
        (status = 400, description = "The kind cannot be paused"),
    ))]
/// `POST /admin/ui/queues/:kind/resume`.
pub async fn resume(
    State(app): State<AppState>,
    Path(kind): Path<String>,
    form: Protected,
) -> Result<Response, PageError> {
    set_paused(&app, &form, &kind, false).await
}
