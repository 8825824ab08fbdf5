//! `POST /org/import`: a template tree becomes workspaces once, however often it is
//! imported; bad templates write nothing; a node refused part way leaves what came before.
//! No worker runs: provisioning need not finish, the queued ops are what is checked.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{Resp, Stack};

async fn count(stack: &Stack, table_sql: &'static str) -> i64 {
    sqlx::query_scalar(table_sql).fetch_one(&stack.pool).await.expect("count rows")
}

async fn live_workspaces(stack: &Stack) -> i64 {
    count(stack, "SELECT count(*) FROM workspaces WHERE status <> 'removed'").await
}

fn entries(r: &Resp) -> Vec<Value> {
    r.body["workspaces"].as_array().cloned().unwrap_or_else(|| panic!("no workspaces in {}", r.body))
}

fn names(r: &Resp) -> Vec<String> {
    entries(r).iter().map(|e| e["name"].as_str().expect("name").to_string()).collect()
}

fn ids(r: &Resp) -> Vec<String> {
    entries(r).iter().map(|e| e["id"].as_str().expect("id").to_string()).collect()
}

/// ceo → (eng → dev1, dev2), (partner [external] → liaison), with keys the server ignores.
fn org_chart() -> Value {
    json!({"template": {
        "name": "acme",
        "description": "ignored",
        "defaults": {"runtime": "claude-code", "tier": 3, "plugins": ["ignored"]},
        "workspaces": [{
            "name": "ceo",
            "role": "runs the company",
            "schedules": [{"name": "daily", "cron_expr": "0 9 * * *"}],
            "children": [
                {"name": "eng", "runtime": "langgraph", "files_dir": "eng", "children": [
                    {"name": "dev1"},
                    {"name": "dev2", "tier": 4, "model": "opus"},
                ]},
                {"name": "partner", "external": true, "url": "https://partner.example.com/a2a", "children": [
                    {"name": "liaison"},
                ]},
            ],
        }],
    }})
}

#[tokio::test]
async fn importing_a_template_twice_creates_its_workspaces_once() {
    let stack = Stack::builder().workers(0).start().await;

    let first = stack.post("/org/import", org_chart()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["org"], "acme");
    assert_eq!(first.body["count"], 6);
    assert_eq!(names(&first), ["ceo", "eng", "dev1", "dev2", "partner", "liaison"], "depth-first, in template order");
    assert!(entries(&first).iter().all(|e| e.get("skipped").is_none()), "{}", first.body);
    let id = |name: &str| {
        let e = entries(&first).into_iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name}"));
        e["id"].as_str().expect("id").to_string()
    };

    // Tree, defaults cascade (node, then defaults, then the built-in rule).
    let ceo = stack.workspace(&id("ceo")).await;
    assert_eq!((ceo["parent_id"].clone(), ceo["runtime"].clone()), (Value::Null, json!("claude-code")));
    assert_eq!((ceo["tier"].clone(), ceo["model"].clone()), (json!(3), json!("sonnet")));
    let eng = stack.workspace(&id("eng")).await;
    assert_eq!(eng["parent_id"], id("ceo").as_str());
    assert_eq!(
        (eng["runtime"].clone(), eng["model"].clone()),
        (json!("langgraph"), json!("anthropic:claude-opus-4-7"))
    );
    let dev2 = stack.workspace(&id("dev2")).await;
    assert_eq!(dev2["parent_id"], id("eng").as_str());
    assert_eq!(
        (dev2["tier"].clone(), dev2["model"].clone(), dev2["runtime"].clone()),
        (json!(4), json!("opus"), json!("claude-code"))
    );
    let partner = stack.workspace(&id("partner")).await;
    assert_eq!((partner["external"].clone(), partner["status"].clone()), (json!(true), json!("online")));
    assert_eq!(partner["url"], "https://partner.example.com/a2a");
    let liaison = stack.workspace(&id("liaison")).await;
    assert_eq!(
        (liaison["parent_id"].clone(), liaison["status"].clone()),
        (json!(id("partner")), json!("provisioning"))
    );

    let provisioned = ["ceo", "eng", "dev1", "dev2", "liaison"];
    for name in provisioned {
        let ops = stack.ops(&id(name)).await;
        assert_eq!(ops.len(), 1, "{name}: {ops:?}");
        assert_eq!((ops[0]["kind"].as_str(), ops[0]["status"].as_str()), (Some("provision"), Some("queued")), "{name}");
        assert_eq!(ops[0]["requested_by"], "admin");
    }
    assert!(stack.ops(&id("partner")).await.is_empty(), "an external workspace is never provisioned");

    let second = stack.post("/org/import", org_chart()).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.body["count"], 6);
    assert_eq!(ids(&second), ids(&first), "the same workspaces, in the same order");
    assert!(entries(&second).iter().all(|e| e["skipped"] == true), "{}", second.body);
    assert_eq!(entries(&second)[3]["tier"], 4, "skipped entries report the existing workspace");
    for name in provisioned {
        assert_eq!(stack.ops(&id(name)).await.len(), 1, "{name} was not provisioned again");
    }
    assert_eq!(live_workspaces(&stack).await, 6);
    assert_eq!(count(&stack, "SELECT count(*) FROM workspace_ops").await, 5);
}

#[tokio::test]
async fn concurrent_imports_of_one_template_create_each_workspace_once() {
    let stack = Stack::builder().workers(0).start().await;
    let (a, b) = tokio::join!(stack.post("/org/import", org_chart()), stack.post("/org/import", org_chart()));
    assert_eq!((a.status, b.status), (StatusCode::CREATED, StatusCode::CREATED), "{} {}", a.body, b.body);
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(live_workspaces(&stack).await, 6);
    let skipped = |r: &Resp| entries(r).iter().filter(|e| e["skipped"] == true).count();
    assert_eq!(skipped(&a) + skipped(&b), 6, "each node was created by exactly one of them");
}

#[tokio::test]
async fn a_node_refused_part_way_answers_207_and_keeps_what_came_before() {
    let stack = Stack::builder().workers(0).start().await;
    // A private address passes the URL's syntax check but not the deployment's policy
    // (AGENT_URL_ALLOW_PRIVATE is off), which is judged when the node's turn comes.
    let template = |url: &str| {
        json!({"template": {"name": "partial", "workspaces": [
            {"name": "hq", "children": [
                {"name": "ops"},
                {"name": "vendor", "external": true, "url": url, "children": [{"name": "vendor-bot"}]},
            ]},
            {"name": "lab"},
        ]}})
    };
    let r = stack.post("/org/import", template("http://10.9.8.7:8000/a2a")).await;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{}", r.body);
    assert_eq!(names(&r), ["hq", "ops"]);
    assert_eq!(r.body["count"], 2);
    let error = r.error();
    assert!(error.contains("vendor") && error.contains("private"), "{error}");
    assert_eq!(r.body["failed"]["name"], "vendor");
    assert_eq!(r.body["failed"]["parent_id"], ids(&r)[0].as_str());
    for id in ids(&r) {
        assert_eq!(stack.status_of(&id).await, "provisioning");
    }
    assert_eq!(live_workspaces(&stack).await, 2, "nothing after the refused node was created");

    // Fixed and imported again, the import carries on where it stopped.
    let again = stack.post("/org/import", template("https://vendor.example.com/a2a")).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    let flags: Vec<(String, bool)> = entries(&again)
        .iter()
        .map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e["skipped"] == true))
        .collect();
    let want = [("hq", true), ("ops", true), ("vendor", false), ("vendor-bot", false), ("lab", false)];
    assert_eq!(flags, want.map(|(n, s)| (n.to_string(), s)));
    assert_eq!(ids(&again)[..2], ids(&r)[..]);
    assert_eq!(live_workspaces(&stack).await, 5);
}

fn nested(depth: usize) -> Value {
    let mut node = json!({"name": format!("level{depth}")});
    for level in (1..depth).rev() {
        node = json!({"name": format!("level{level}"), "children": [node]});
    }
    node
}

#[tokio::test]
async fn bad_templates_are_refused_before_anything_is_written() {
    let stack = Stack::builder().workers(0).start().await;
    let many: Vec<Value> = (0..1001).map(|i| json!({"name": format!("w{i}")})).collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("more than 1000 nodes", json!({"template": {"name": "big", "workspaces": many}}), "more than 1000"),
        (
            "a duplicate name under one parent",
            json!({"template": {"name": "dup", "workspaces": [
                {"name": "root", "children": [{"name": "a"}, {"name": "b"}, {"name": " a "}]},
            ]}}),
            "must be unique under one parent",
        ),
        (
            "duplicate roots",
            json!({"template": {"name": "dup", "workspaces": [{"name": "x"}, {"name": "x"}]}}),
            "template.workspaces[1]",
        ),
        (
            "a node without a name",
            json!({"template": {"name": "n", "workspaces": [{"name": "r", "children": [{"role": "nameless"}]}]}}),
            "name",
        ),
        ("a template without a name", json!({"template": {"workspaces": [{"name": "r"}]}}), "name"),
        ("an empty template name", json!({"template": {"name": " ", "workspaces": [{"name": "r"}]}}), "template.name"),
        (
            "an invalid tier deep down",
            json!({"template": {"name": "t", "workspaces": [
                {"name": "r", "children": [{"name": "c", "children": [{"name": "g", "tier": 9}]}]},
            ]}}),
            "template.workspaces[0].children[0].children[0] (\"g\"): tier must be between 1 and 4",
        ),
        (
            "an invalid default tier",
            json!({"template": {"name": "t", "defaults": {"tier": 0}, "workspaces": [{"name": "r"}]}}),
            "tier must be between 1 and 4",
        ),
        (
            "an unknown runtime",
            json!({"template": {"name": "t", "workspaces": [{"name": "r", "runtime": "cobol"}]}}),
            "runtime",
        ),
        (
            "a url on a provisioned node",
            json!({"template": {"name": "t", "workspaces": [{"name": "r", "url": "https://x.example.com"}]}}),
            "url is only accepted for external workspaces",
        ),
        (
            "a metadata url",
            json!({"template": {"name": "t", "workspaces": [
                {"name": "r", "external": true, "url": "http://169.254.169.254/"},
            ]}}),
            "cloud metadata",
        ),
        ("too deep", json!({"template": {"name": "deep", "workspaces": [nested(33)]}}), "deeper than 32 levels"),
        ("no workspaces", json!({"template": {"name": "empty", "workspaces": []}}), "at least one workspace"),
        ("a template directory", json!({"dir": "acme"}), "only inline templates are supported"),
        ("no template", json!({}), "template is required"),
    ];
    for (what, body, says) in cases {
        let r = stack.post("/org/import", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.body);
        assert!(r.error().contains(says), "{what}: {:?} does not say {says:?}", r.error());
    }
    assert_eq!(count(&stack, "SELECT count(*) FROM workspaces").await, 0, "nothing was written");
    assert_eq!(count(&stack, "SELECT count(*) FROM workspace_ops").await, 0);

    // The depth bound is inclusive.
    let r = stack.post("/org/import", json!({"template": {"name": "deep", "workspaces": [nested(32)]}})).await;
    assert_eq!((r.status, r.body["count"].clone()), (StatusCode::CREATED, json!(32)), "{}", r.body);

    let r = stack.raw("POST", "/org/import", Some("not-a-token"), Some(&org_chart().to_string())).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
