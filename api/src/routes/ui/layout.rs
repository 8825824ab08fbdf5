//! The page shell, its style and the small pieces every page uses: state badges, relative
//! times, action buttons carrying the CSRF token.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::session::UiSession;
use super::{LOGIN, OVERVIEW};

/// Seconds between a page's reloads.
const REFRESH_SECONDS: u32 = 5;

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#f6f8fa}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
header{display:flex;align-items:center;gap:18px;padding:8px 20px;background:#24292f;color:#fff}
header .brand{font-weight:600;margin-right:12px}
header nav a{color:#d0d7de;padding:4px 8px;border-radius:6px}
header nav a.on{background:#57606a;color:#fff}
header .who{margin-left:auto;display:flex;gap:10px;align-items:center;color:#d0d7de;font-size:13px}
main{max-width:1400px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:20px;margin:4px 0 12px}h2{font-size:15px;margin:22px 0 8px}
section.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 14px;margin-bottom:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:14px}
.stats{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:14px}
.stat{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:8px 14px;min-width:130px}
.stat b{display:block;font-size:22px}.stat span{color:#57606a;font-size:12px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{font-size:12px;color:#57606a;font-weight:600;background:#f6f8fa}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word;margin:0}
pre.error{background:#fff1f0;border:1px solid #ffcecb;border-radius:6px;padding:8px;color:#82071e}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap;background:#eaeef2;color:#57606a}
.s-queued,.s-dispatched,.s-provisioning,.s-awaiting_agent{background:#ddf4ff;color:#0550ae}
.s-running,.s-in_progress{background:#fff8c5;color:#7d4e00}
.s-succeeded,.s-online,.s-completed,.s-alive{background:#dafbe1;color:#116329}
.s-failed,.s-stuck,.s-dead{background:#ffebe9;color:#a40e26}
.s-degraded,.s-paused{background:#fff1e5;color:#953800}
.s-canceled,.s-offline,.s-removed{background:#eaeef2;color:#57606a}
.muted{color:#57606a}.small{font-size:12px}
.flash{padding:8px 12px;border-radius:6px;margin-bottom:12px}
.flash.err{background:#ffebe9;border:1px solid #ffcecb;color:#82071e}
form.inline{display:inline}
button{font:inherit;font-size:13px;padding:3px 12px;border-radius:6px;border:1px solid #d0d7de;background:#f6f8fa;cursor:pointer}
button.primary{background:#1f883d;border-color:#1a7f37;color:#fff}
button.danger{background:#cf222e;border-color:#a40e26;color:#fff}
header button{background:transparent;color:#d0d7de;border-color:#57606a}
.filters{display:flex;gap:10px;align-items:end;flex-wrap:wrap;margin-bottom:12px}
.filters label{display:flex;flex-direction:column;font-size:12px;color:#57606a;gap:2px}
input,select{font:inherit;font-size:13px;padding:3px 6px;border:1px solid #d0d7de;border-radius:6px}
dl.facts{display:grid;grid-template-columns:160px 1fr;gap:4px 12px;margin:0}
dl.facts dt{color:#57606a}dl.facts dd{margin:0}
.actions{display:flex;gap:8px;margin:8px 0}
.chart svg{width:100%;height:auto;display:block}
.legend{font-size:12px;color:#57606a;display:flex;gap:14px;margin-top:4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
footer{color:#57606a;font-size:12px;margin-top:20px}
.login{max-width:380px;margin:12vh auto;background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:20px 24px}
.login input{width:100%;padding:6px 8px;margin:6px 0 12px}
"#;

/// Reloads the page, unless the operator is typing into a field or the tab is hidden.
const REFRESH_SCRIPT: &str = "(function(){var s=+document.body.dataset.refresh;if(!s)return;\
setInterval(function(){var a=document.activeElement;\
if(document.hidden||(a&&a.matches('input,select,textarea')))return;location.reload();},s*1000);})();";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Jobs,
    Workspaces,
    Delegations,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · workspace-server" }
            style { (PreEscaped(STYLE)) }
        }
    }
}

/// A signed-in page, reloading itself.
pub fn page(title: &str, session: &UiSession, nav: Nav, body: Markup) -> Markup {
    let link = |href: &str, label: &str, n: Nav| {
        html! { a href=(href) class=[(nav == n).then_some("on")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-refresh=(REFRESH_SECONDS) {
                header {
                    span.brand { "workspace-server" }
                    nav {
                        (link(OVERVIEW, "Overview", Nav::Overview))
                        (link("/admin/ui/jobs", "Jobs", Nav::Jobs))
                        (link("/admin/ui/workspaces", "Workspaces", Nav::Workspaces))
                        (link("/admin/ui/delegations", "Delegations", Nav::Delegations))
                    }
                    div.who {
                        span { (session.operator) }
                        form.inline method="post" action="/admin/ui/logout" {
                            (csrf_field(session))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                    footer {
                        "Rendered " (Utc::now().format("%Y-%m-%d %H:%M:%S UTC"))
                        "; reloads every " (REFRESH_SECONDS) " s while no field has focus."
                    }
                }
                script { (PreEscaped(REFRESH_SCRIPT)) }
            }
        }
    }
}

/// The login form; never reloads, since the operator types into it.
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body {
                div.login {
                    h1 { "workspace-server operators" }
                    @if let Some(e) = error {
                        div.flash.err #login-error { (e) }
                    }
                    form method="post" action=(LOGIN) {
                        label for="token" { "Admin token (or an org API token)" }
                        input #token type="password" name="token" autocomplete="current-password" autofocus;
                        button.primary type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

pub fn error(status: StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Error"))
            body {
                main {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("error")) }
                    div.flash.err #error { (message) }
                    p { a href=(OVERVIEW) { "Back to the overview" } }
                }
            }
        }
    }
}

pub fn csrf_field(session: &UiSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A one-button form posting to `action`.
pub fn action(session: &UiSession, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(session))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A state, coloured by what it means (job, workspace, delegation and worker states share
/// one palette).
pub fn state(s: &str) -> Markup {
    html! { span class={ "badge s-" (s) } { (s) } }
}

pub fn when(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S%.3f UTC")) { (relative(t, Utc::now())) } }
}

pub fn when_opt(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => when(t),
        None => html! { span.muted { "—" } },
    }
}

/// "3 min ago", "in 2 h": coarse on purpose; the exact time is in the `title`.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let span = human_seconds(secs.unsigned_abs() as f64);
    if secs.abs() < 5 {
        "just now".into()
    } else if secs > 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

pub fn human_seconds(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 60.0 {
        format!("{} s", s.round() as u64)
    } else if s < 3600.0 {
        format!("{} min", (s / 60.0).floor() as u64)
    } else if s < 86400.0 {
        format!("{} h", (s / 3600.0).floor() as u64)
    } else {
        format!("{} d", (s / 86400.0).floor() as u64)
    }
}

/// The first line of a text, cut to `max` characters: lists show a glimpse, the detail
/// page shows it whole.
pub fn glimpse(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    let cut: String = line.chars().take(max).collect();
    if cut.len() < text.len() { format!("{cut}…") } else { cut }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn relative_times_read_at_a_glance() {
        let now = Utc::now();
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now - Duration::seconds(42), now), "42 s ago");
        assert_eq!(relative(now - Duration::seconds(3 * 60 + 59), now), "3 min ago");
        assert_eq!(relative(now - Duration::hours(5), now), "5 h ago");
        assert_eq!(relative(now - Duration::days(2), now), "2 d ago");
        assert_eq!(relative(now + Duration::minutes(10), now), "in 10 min");
    }

    #[test]
    fn glimpses_keep_the_first_line_and_mark_a_cut() {
        assert_eq!(glimpse("short", 10), "short");
        assert_eq!(glimpse("first\nsecond", 10), "first…");
        assert_eq!(glimpse("abcdefghijkl", 5), "abcde…");
    }

    #[test]
    fn markup_is_escaped() {
        let m = state("<script>").into_string();
        assert!(m.contains("&lt;script&gt;") && !m.contains("<script>"), "{m}");
    }
}
