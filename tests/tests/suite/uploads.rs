//! Chat uploads: files staged for an agent in the database, announced in its inbox, fetched
//! with its token and acked; refusals that leave nothing behind; the api's memory while a
//! large file streams through it; and the sweep that deletes done files once per period.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tests::{ADMIN, Resp, Stack, eventually};

const LONG: Duration = Duration::from_secs(90);
const MIB: usize = 1024 * 1024;

/// A poll-mode external workspace (no container needed) and its token.
async fn poll_workspace(stack: &Stack, name: &str) -> (String, String) {
    let r = stack.post("/workspaces", json!({"name": name, "external": true, "delivery_mode": "poll"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let token = r.body["connection"]["auth_token"].as_str().expect("token at create").to_string();
    (id, token)
}

/// Bytes that are not all alike, so a misplaced chunk changes the hash.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i % 251) as u8).wrapping_mul(7).wrapping_add(seed ^ (i / 4096) as u8)).collect()
}

fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn file(data: Vec<u8>, name: &str, mime: &str) -> Part {
    Part::bytes(data).file_name(name.to_string()).mime_str(mime).expect("mime")
}

async fn upload(stack: &Stack, ws: &str, token: &str, form: Form) -> Resp {
    let resp = stack
        .client
        .post(format!("{}/workspaces/{ws}/chat/uploads", stack.url))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    Resp { status, body: serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status} body is not JSON: {text}")) }
}

fn content_path(ws: &str, file_id: &str) -> String {
    format!("/workspaces/{ws}/pending-uploads/{file_id}/content")
}

fn ack_path(ws: &str, file_id: &str) -> String {
    format!("/workspaces/{ws}/pending-uploads/{file_id}/ack")
}

async fn content(stack: &Stack, ws: &str, file_id: &str, token: &str) -> reqwest::Response {
    stack
        .client
        .get(format!("{}{}", stack.url, content_path(ws, file_id)))
        .bearer_auth(token)
        .send()
        .await
        .expect("get")
}

async fn count(stack: &Stack, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&stack.pool).await.expect(sql)
}

/// The chat uploads announced in a workspace's inbox, read with its own token.
async fn announced(stack: &Stack, ws: &str, token: &str) -> Vec<Value> {
    let r =
        stack.raw("GET", &format!("/workspaces/{ws}/activity?type=a2a_receive&since_id=0"), Some(token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body.as_array().expect("rows").iter().filter(|row| row["method"] == "chat_upload_receive").cloned().collect()
}

#[tokio::test]
async fn an_upload_reaches_the_poll_agent_which_fetches_and_acks_it() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let (ws, token) = poll_workspace(&stack, "uploads").await;
    let (other, other_token) = poll_workspace(&stack, "other").await;
    // Several stored chunks, and a name that needs sanitising.
    let big = pattern(3 * MIB + 12_345, 1);
    let small = b"hello, agent\n".to_vec();
    let form = Form::new()
        .part("files", file(big.clone(), "../../reports/Q3 résumé (final).pdf", "application/pdf"))
        .part("files", file(small.clone(), "note.txt", "text/plain"));
    let r = upload(&stack, &ws, ADMIN, form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let files = r.body["files"].as_array().expect("files").clone();
    assert_eq!(files.len(), 2, "{}", r.body);
    assert_eq!(files[0]["name"], "Q3_r_sum___final_.pdf");
    assert_eq!(files[0]["mimeType"], "application/pdf");
    assert_eq!(files[0]["size"], big.len());
    assert_eq!(files[1]["name"], "note.txt");
    let uri = files[0]["uri"].as_str().expect("uri");
    assert!(uri.starts_with(&format!("platform-pending:{ws}/")), "{uri}");
    let chunks = count(&stack, "SELECT count(*) FROM pending_upload_chunks").await;
    assert_eq!(chunks, 5, "four for 3 MiB and a bit, one for the small file");

    // The agent finds both in its inbox, with its own token.
    let items = announced(&stack, &ws, &token).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let item = items.iter().find(|i| i["request_body"]["uri"] == uri).expect("the big file's item");
    assert_eq!(item["summary"], "chat_upload_receive: Q3_r_sum___final_.pdf");
    assert_eq!(item["activity_type"], "a2a_receive");
    let body = &item["request_body"];
    assert_eq!(body["name"], files[0]["name"]);
    assert_eq!(body["mimeType"], "application/pdf");
    assert_eq!(body["size"], big.len());
    let file_id = body["file_id"].as_str().expect("file_id").to_string();
    assert_eq!(uri, format!("platform-pending:{ws}/{file_id}"));
    let sizes: Vec<i32> =
        sqlx::query_scalar("SELECT length(data) FROM pending_upload_chunks WHERE file_id = $1::uuid ORDER BY seq")
            .bind(&file_id)
            .fetch_all(&stack.pool)
            .await
            .unwrap();
    assert_eq!(sizes, [MIB as i32, MIB as i32, MIB as i32, 12_345], "whole 1 MiB chunks, then the rest");

    // It fetches the bytes, whole and unchanged.
    let resp = content(&stack, &ws, &file_id, &token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(header("content-type"), "application/pdf");
    assert_eq!(
        header("content-disposition"),
        "attachment; filename=\"Q3_r_sum___final_.pdf\"; filename*=UTF-8''Q3_r_sum___final_.pdf"
    );
    assert_eq!(header("content-length"), big.len().to_string());
    let got = resp.bytes().await.expect("content");
    assert_eq!(got.len(), big.len());
    assert_eq!(sha256(&got), sha256(&big));
    let fetched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pending_uploads WHERE file_id = $1::uuid AND fetched_at IS NOT NULL AND acked_at IS NULL",
    )
    .bind(&file_id)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(fetched, 1, "the fetch is stamped");
    // The admin may read it too; the small file is served as sent.
    let small_id =
        items.iter().find(|i| i["request_body"]["name"] == "note.txt").expect("note")["request_body"]["file_id"]
            .as_str()
            .unwrap()
            .to_string();
    let resp = content(&stack, &ws, &small_id, ADMIN).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), small.as_slice());

    // Another workspace learns nothing: its token gets 404, through its own path or this one.
    for (path_ws, t) in [(&ws, &other_token), (&other, &other_token)] {
        let resp = content(&stack, path_ws, &file_id, t).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path_ws}");
        let r = stack.raw("POST", &ack_path(path_ws, &file_id), Some(t), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = stack.raw("GET", &content_path(&ws, &unknown), Some(&token), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(r.error().contains(&unknown), "{}", r.body);
    let r = stack.raw("GET", &content_path(&ws, "not-a-uuid"), Some(&token), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("file id"), "{}", r.body);
    let r = stack.raw("GET", &content_path(&ws, &file_id), None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // Acked, the file is gone for good.
    let r = stack.raw("POST", &ack_path(&ws, &file_id), Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"acked": true}));
    let r = stack.raw("GET", &content_path(&ws, &file_id), Some(&token), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = stack.raw("POST", &ack_path(&ws, &file_id), Some(&token), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // The other file is untouched.
    assert_eq!(content(&stack, &ws, &small_id, &token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_refused_upload_writes_nothing() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let (ws, token) = poll_workspace(&stack, "refusals").await;
    let (_, other_token) = poll_workspace(&stack, "other").await;
    let nothing_written = || async {
        let staged = count(&stack, "SELECT count(*) FROM pending_uploads").await;
        let chunks = count(&stack, "SELECT count(*) FROM pending_upload_chunks").await;
        let items = count(&stack, "SELECT count(*) FROM activity_logs WHERE method = 'chat_upload_receive'").await;
        assert_eq!((staged, chunks, items), (0, 0, 0), "nothing staged, no chunk, no inbox item");
    };

    // A good file first, then one over 25 MiB: the whole upload is refused, the first too.
    let too_big = 26 * MIB;
    let form = Form::new()
        .part("files", file(b"fine".to_vec(), "ok.txt", "text/plain"))
        .part("files", file(vec![7u8; too_big], "huge.bin", "application/octet-stream"));
    let r = upload(&stack, &ws, &token, form).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert_eq!(r.body["filename"], "huge.bin");
    assert_eq!(r.body["max"], 26_214_400);
    assert_eq!(r.body["size"], too_big);
    assert!(r.error().contains("huge.bin"), "{}", r.body);
    nothing_written().await;

    let r = upload(&stack, &ws, &token, Form::new()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = upload(&stack, &ws, &token, Form::new().text("files", "")).await;
    assert_eq!(r.status, StatusCode::OK, "an empty file is a file: {}", r.body);
    assert_eq!(r.body["files"][0]["name"], "file");
    assert_eq!(r.body["files"][0]["size"], 0);
    sqlx::query("DELETE FROM pending_uploads").execute(&stack.pool).await.unwrap();
    sqlx::query("DELETE FROM activity_logs").execute(&stack.pool).await.unwrap();

    let form = Form::new().part("files", file(b"x".to_vec(), "a.txt", "text/plain")).text("comment", "hi");
    let r = upload(&stack, &ws, &token, form).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("\"comment\""), "names the field: {}", r.body);
    let form = (0..65).fold(Form::new(), |f, i| f.part("files", file(vec![b'x'], &format!("{i}.txt"), "text/plain")));
    let r = upload(&stack, &ws, &token, form).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("64"), "{}", r.body);
    let r = stack.raw("POST", &format!("/workspaces/{ws}/chat/uploads"), Some(&token), Some("{}")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let resp = stack
        .client
        .post(format!("{}/workspaces/{ws}/chat/uploads", stack.url))
        .bearer_auth(&token)
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\"\r\n\r\ntrunc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "a truncated body");
    let r = upload(&stack, &ws, &other_token, Form::new().part("files", file(b"x".to_vec(), "a", "text/plain"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let unknown = uuid::Uuid::new_v4();
    let r =
        upload(&stack, &unknown.to_string(), ADMIN, Form::new().part("files", file(b"x".to_vec(), "a", "text/plain")))
            .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let (gone, _) = poll_workspace(&stack, "gone").await;
    let r = stack.delete(&format!("/workspaces/{gone}")).await;
    assert_eq!(r.body["status"], "removed", "{}", r.body);
    let r = upload(&stack, &gone, ADMIN, Form::new().part("files", file(b"x".to_vec(), "a", "text/plain"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a removed workspace: {}", r.body);
    nothing_written().await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the process' RSS until stopped; returns the peak seen.
fn sample_peak(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
    let task = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(5));
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
            }
            peak.load(Ordering::Relaxed)
        })
    };
    (stop, task)
}

#[tokio::test]
async fn a_25_mib_file_streams_through_the_api_in_flat_memory() {
    let stack = Stack::builder().env("DOCKER_ENABLED", "false").workers(0).start().await;
    let (ws, token) = poll_workspace(&stack, "memory").await;
    let pid = stack.api.as_ref().expect("api").pid();
    // A first small upload and fetch warm the api's pool and statement caches.
    let r =
        upload(&stack, &ws, &token, Form::new().part("files", file(pattern(2 * MIB, 3), "warm", "text/plain"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let warm = r.body["files"][0]["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    assert_eq!(content(&stack, &ws, &warm, &token).await.bytes().await.unwrap().len(), 2 * MIB);

    // The client streams too: 64 KiB pieces made on the fly, hashed as they go.
    let size = 25 * MIB;
    let piece = 64 * 1024;
    let sent = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let pieces = {
        let sent = sent.clone();
        futures::stream::iter(0..size / piece).map(move |i| {
            let data = pattern(piece, i as u8);
            sent.lock().unwrap().update(&data);
            Ok::<_, std::io::Error>(data)
        })
    };
    let part = Part::stream_with_length(reqwest::Body::wrap_stream(pieces), size as u64)
        .file_name("big.bin")
        .mime_str("application/octet-stream")
        .unwrap();
    let before = rss_kib(pid);
    let (stop, sampler) = sample_peak(pid);
    let r = upload(&stack, &ws, &token, Form::new().part("files", part)).await;
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["files"][0]["size"], size);
    let growth = peak.saturating_sub(before);
    println!("upload of 25 MiB: api RSS before {before} KiB, peak {peak} KiB, growth {growth} KiB");
    assert!(growth < 12 * 1024, "the api held {growth} KiB more while a 25 MiB file streamed in");

    // And out again, read piece by piece on this side.
    let file_id = r.body["files"][0]["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    let before = rss_kib(pid);
    let (stop, sampler) = sample_peak(pid);
    let resp = content(&stack, &ws, &file_id, &token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (mut got, mut hash) = (0usize, Sha256::new());
    let mut body = resp.bytes_stream();
    while let Some(bytes) = body.next().await {
        let bytes = bytes.expect("content");
        got += bytes.len();
        hash.update(&bytes);
    }
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    let growth = peak.saturating_sub(before);
    println!("download of 25 MiB: api RSS before {before} KiB, peak {peak} KiB, growth {growth} KiB");
    assert_eq!(got, size);
    assert_eq!(format!("{:x}", hash.finalize()), format!("{:x}", sent.lock().unwrap().clone().finalize()));
    assert!(growth < 12 * 1024, "the api held {growth} KiB more while a 25 MiB file streamed out");
}

#[tokio::test]
async fn the_sweep_deletes_acked_and_expired_files_once_per_period() {
    let stack = Stack::builder()
        .env("DOCKER_ENABLED", "false")
        .env("SWEEP_PENDING_UPLOADS_SECONDS", "1")
        .workers(3)
        .start()
        .await;
    let (ws, token) = poll_workspace(&stack, "swept").await;
    let form = ["expired", "acked", "live", "fetched"]
        .into_iter()
        .fold(Form::new(), |f, name| f.part("files", file(pattern(MIB + 10, 9), name, "text/plain")));
    let r = upload(&stack, &ws, &token, form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id_of = |name: &str| {
        let f = r.body["files"].as_array().unwrap().iter().find(|f| f["name"] == name).expect(name);
        f["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string()
    };
    let (expired, acked, live, fetched) = (id_of("expired"), id_of("acked"), id_of("live"), id_of("fetched"));
    sqlx::query("UPDATE pending_uploads SET expires_at = now() - interval '1 second' WHERE file_id = $1::uuid")
        .bind(&expired)
        .execute(&stack.pool)
        .await
        .unwrap();
    assert_eq!(content(&stack, &ws, &expired, &token).await.status(), StatusCode::NOT_FOUND, "expired");
    let r = stack.raw("POST", &ack_path(&ws, &acked), Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(content(&stack, &ws, &fetched, &token).await.bytes().await.unwrap().len(), MIB + 10);

    let mut kept = vec![live.clone(), fetched.clone()];
    kept.sort();
    eventually(LONG, "the acked and the expired file to be deleted, chunks too", || async {
        let left: Vec<String> = sqlx::query_scalar("SELECT file_id::text FROM pending_uploads ORDER BY file_id")
            .fetch_all(&stack.pool)
            .await
            .unwrap();
        let chunks = count(&stack, "SELECT count(*) FROM pending_upload_chunks").await;
        (left == kept && chunks == 4).then_some(())
    })
    .await;
    let finished =
        || count(&stack, "SELECT count(*) FROM sweep_runs WHERE sweep = 'pending-uploads' AND finished_at IS NOT NULL");
    let runs_now = finished().await;
    eventually(LONG, "three more sweep periods", || async { (finished().await >= runs_now + 3).then_some(()) }).await;
    // Live files stay, fetched or not.
    for id in [&live, &fetched] {
        assert_eq!(content(&stack, &ws, id, &token).await.status(), StatusCode::OK, "{id}");
    }

    // Three workers tick every period, yet each period ran once, without error, and one of
    // them deleted what was done.
    let (runs, periods, errors, deleted): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT period_start), count(*) FILTER (WHERE outcome LIKE 'error%'),
                count(*) FILTER (WHERE outcome SIMILAR TO 'deleted [12] staged upload%')
           FROM sweep_runs WHERE sweep = 'pending-uploads'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(runs, periods, "one run per period");
    assert_eq!(errors, 0);
    assert!(deleted >= 1, "a run reports what it deleted");
    let dup = count(
        &stack,
        "SELECT count(*) FROM (SELECT job FROM apalis.jobs WHERE job_type = 'sweeps' GROUP BY job HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(dup, 0, "no period enqueued twice");
}
