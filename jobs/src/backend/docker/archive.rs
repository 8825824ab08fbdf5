//! The tar archives exchanged with the engine's copy API and the account files read back
//! through it. Pure functions over bytes and text, so they are tested without an engine.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use super::token::{CONFIG_DIR, TOKEN_FILE};

/// Cap on account files read back out of an image, so a strange image cannot make us
/// buffer without limit while we only want a uid.
pub(super) const MAX_ACCOUNT_FILE: usize = 1 << 20;

/// A tar archive, extracted at `/`, holding `configs/` and `configs/.auth_token` (0600),
/// both owned by the image's user.
pub(super) fn token_archive(token: &str, uid: u64, gid: u64) -> std::io::Result<Vec<u8>> {
    let mtime = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir_name = CONFIG_DIR.trim_start_matches('/');
    let mut builder = tar::Builder::new(Vec::new());

    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_uid(uid);
    dir.set_gid(gid);
    dir.set_mtime(mtime);
    dir.set_size(0);
    builder.append_data(&mut dir, format!("{dir_name}/"), std::io::empty())?;

    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o600);
    file.set_uid(uid);
    file.set_gid(gid);
    file.set_mtime(mtime);
    file.set_size(token.len() as u64);
    builder.append_data(&mut file, format!("{dir_name}/{TOKEN_FILE}"), token.as_bytes())?;

    builder.into_inner()
}

/// The contents of the first entry of a (copy API) tar archive, if it is a regular file.
pub(super) fn first_regular_file(archive: &[u8]) -> Option<String> {
    let mut archive = tar::Archive::new(archive);
    let mut entries = archive.entries().ok()?;
    let mut entry = entries.next()?.ok()?;
    if entry.header().entry_type() != tar::EntryType::Regular {
        return None;
    }
    let mut text = String::new();
    entry.by_ref().take(MAX_ACCOUNT_FILE as u64).read_to_string(&mut text).ok()?;
    Some(text)
}

/// `(uid, primary gid)` of the passwd entry whose name, or uid, is `user`.
pub(super) fn find_account(passwd: &str, user: &str) -> Option<(u64, u64)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid = fields.nth(1)?;
        let gid = fields.next()?;
        if name == user || uid == user { Some((uid.parse().ok()?, gid.parse().ok()?)) } else { None }
    })
}

pub(super) fn find_group(groups: &str, group: &str) -> Option<u64> {
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid = fields.nth(1)?;
        if name == group { gid.parse().ok() } else { None }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_archive_holds_dir_and_private_file() {
        let bytes = token_archive("secret-token", 1000, 1001).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.push((
                path,
                header.entry_type(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                body,
            ));
        }
        assert_eq!(
            seen,
            vec![
                ("configs/".to_owned(), tar::EntryType::Directory, 0o755, 1000, 1001, String::new()),
                (
                    "configs/.auth_token".to_owned(),
                    tar::EntryType::Regular,
                    0o600,
                    1000,
                    1001,
                    "secret-token".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn accounts_resolve_by_name_or_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n# comment\nagent:x:1001:1002::/home/agent:/bin/sh\n";
        assert_eq!(find_account(passwd, "agent"), Some((1001, 1002)));
        assert_eq!(find_account(passwd, "1001"), Some((1001, 1002)));
        assert_eq!(find_account(passwd, "nobody"), None);
        let groups = "root:x:0:\nagents:x:1002:agent\n";
        assert_eq!(find_group(groups, "agents"), Some(1002));
        assert_eq!(find_group(groups, "staff"), None);
    }
}
