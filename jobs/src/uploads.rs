//! Files uploaded into a chat for a workspace's agent. The api stages each file in the
//! database (`store::pending_uploads`) and announces it with an inbox item; the agent
//! fetches the bytes, then acks. Poll and push mode stage identically: only the way the
//! inbox item reaches the agent differs.

use serde_json::json;
use uuid::Uuid;

use crate::inbox;
use crate::store::activity_logs::NewActivity;

/// The largest file accepted (25 MiB).
pub const MAX_FILE_BYTES: u64 = 25 * 1024 * 1024;
/// The most files one upload may carry.
pub const MAX_FILES: usize = 64;
/// The multipart field every file must come in.
pub const FIELD: &str = "files";
/// The inbox item's method.
pub const METHOD: &str = "chat_upload_receive";
/// Bytes per stored chunk: large enough that a 25 MiB file is a couple dozen rows, small
/// enough that holding one in memory (on the way in or out) is cheap.
pub const CHUNK_BYTES: usize = 1024 * 1024;

const MAX_NAME_CHARS: usize = 100;
const MAX_KEPT_EXTENSION_CHARS: usize = 16;

/// A name safe to store, serve in a header and write on the agent's disk: the last path
/// component, with every character outside `[A-Za-z0-9._-]` (spaces included) replaced by
/// one `_`, cut to 100 characters (keeping a short extension), never empty, `.` or `..`.
pub fn sanitize_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let safe: Vec<char> =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let name = if safe.len() > MAX_NAME_CHARS {
        // Only ASCII is left, so byte and character positions agree from here on.
        let ext = safe
            .iter()
            .rposition(|c| *c == '.')
            .filter(|dot| safe.len() - dot <= MAX_KEPT_EXTENSION_CHARS)
            .map_or(&[][..], |dot| &safe[dot..]);
        let mut cut: Vec<char> = safe[..MAX_NAME_CHARS - ext.len()].to_vec();
        cut.extend_from_slice(ext);
        cut
    } else {
        safe
    };
    let name: String = name.into_iter().collect();
    match name.as_str() {
        "" | "." | ".." => "file".into(),
        _ => name,
    }
}

/// How an agent names a staged file until it has fetched it.
pub fn pending_uri(workspace_id: Uuid, file_id: Uuid) -> String {
    format!("platform-pending:{workspace_id}/{file_id}")
}

/// A staged file, as the uploader is told about it and the agent's inbox item carries it.
#[derive(Debug, Clone)]
pub struct Staged {
    pub workspace_id: Uuid,
    pub file_id: Uuid,
    pub name: String,
    pub mimetype: String,
    pub size: u64,
}

/// One staged file as the upload's answer names it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FileSummary {
    /// Where the agent fetches it: `platform-pending:<workspace id>/<file id>`.
    pub uri: String,
    pub name: String,
    #[serde(rename = "mimeType")]
    pub mimetype: String,
    pub size: u64,
}

impl Staged {
    pub fn uri(&self) -> String {
        pending_uri(self.workspace_id, self.file_id)
    }

    /// The upload's answer for this file.
    pub fn summary(&self) -> FileSummary {
        FileSummary { uri: self.uri(), name: self.name.clone(), mimetype: self.mimetype.clone(), size: self.size }
    }

    /// The inbox item announcing the file to the workspace's agent.
    pub fn inbox_item(&self, source_id: Option<Uuid>) -> NewActivity {
        NewActivity {
            workspace_id: self.workspace_id,
            activity_type: inbox::INBOX_TYPE.into(),
            method: Some(METHOD.into()),
            source_id,
            target_id: Some(self.workspace_id),
            summary: Some(format!("{METHOD}: {}", self.name)),
            request_body: Some(json!({
                "file_id": self.file_id,
                "name": self.name,
                "mimeType": self.mimetype,
                "size": self.size,
                "uri": self.uri(),
            })),
            status: "ok".into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components_are_dropped() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("..\\..\\windows\\system.ini"), "system.ini");
        assert_eq!(sanitize_filename("/abs/dir/report.pdf"), "report.pdf");
        assert_eq!(sanitize_filename("a/"), "file");
        assert_eq!(sanitize_filename("dir/.."), "file");
    }

    #[test]
    fn empty_dot_and_dotdot_become_file() {
        assert_eq!(sanitize_filename(""), "file");
        assert_eq!(sanitize_filename("."), "file");
        assert_eq!(sanitize_filename(".."), "file");
        assert_eq!(sanitize_filename("..."), "...");
    }

    #[test]
    fn every_unsafe_character_becomes_one_underscore() {
        assert_eq!(sanitize_filename("my report.pdf"), "my_report.pdf");
        assert_eq!(sanitize_filename("weird;$name`.txt"), "weird__name_.txt");
        assert_eq!(sanitize_filename("résumé.pdf"), "r_sum_.pdf");
        assert_eq!(sanitize_filename("日本.txt"), "__.txt");
        assert_eq!(sanitize_filename("nul\0inside.txt"), "nul_inside.txt");
        assert_eq!(sanitize_filename("tab\there\nnl"), "tab_here_nl");
        assert_eq!(sanitize_filename("ok-Name_1.tar.gz"), "ok-Name_1.tar.gz");
    }

    #[test]
    fn a_long_name_is_cut_to_100_keeping_a_short_extension() {
        let long = format!("{}.pdf", "a".repeat(496));
        let s = sanitize_filename(&long);
        assert_eq!(s.len(), 100);
        assert_eq!(s, format!("{}.pdf", "a".repeat(96)));

        let no_ext = "b".repeat(500);
        assert_eq!(sanitize_filename(&no_ext), "b".repeat(100));

        // 16 characters with the dot are kept; 17 are not.
        let ext16 = format!(".{}", "e".repeat(15));
        let s = sanitize_filename(&format!("{}{ext16}", "c".repeat(485)));
        assert_eq!(s, format!("{}{ext16}", "c".repeat(84)));
        let ext17 = format!(".{}", "e".repeat(16));
        let s = sanitize_filename(&format!("{}{ext17}", "c".repeat(484)));
        assert_eq!(s, "c".repeat(100));

        let long_ext = format!("{}.{}", "d".repeat(50), "x".repeat(449));
        let s = sanitize_filename(&long_ext);
        assert_eq!(s.len(), 100);
        assert_eq!(s, format!("{}.{}", "d".repeat(50), "x".repeat(49)));

        // Non-ASCII counts one character each, once replaced.
        let s = sanitize_filename(&format!("{}.txt", "é".repeat(200)));
        assert_eq!(s, format!("{}.txt", "_".repeat(96)));
        assert_eq!(sanitize_filename(&"x".repeat(100)), "x".repeat(100));
    }

    #[test]
    fn the_inbox_item_names_the_file_and_its_pending_uri() {
        let (ws, file) = (Uuid::new_v4(), Uuid::new_v4());
        let s =
            Staged { workspace_id: ws, file_id: file, name: "a.txt".into(), mimetype: "text/plain".into(), size: 3 };
        let item = s.inbox_item(None);
        assert_eq!(item.activity_type, "a2a_receive");
        assert_eq!(item.method.as_deref(), Some("chat_upload_receive"));
        assert_eq!(item.summary.as_deref(), Some("chat_upload_receive: a.txt"));
        let body = item.request_body.unwrap();
        assert_eq!(body["uri"], format!("platform-pending:{ws}/{file}"));
        assert_eq!(body["file_id"], file.to_string());
        assert_eq!(body["mimeType"], "text/plain");
        assert_eq!(body["size"], 3);
        assert_eq!(serde_json::json!(s.summary())["uri"], body["uri"]);
    }
}
