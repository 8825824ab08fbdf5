//! Redaction of secrets from text an agent asks the platform to keep. Memories are read
//! back into other agents' prompts, so a credential pasted into one would travel further
//! than whoever pasted it meant. Each match becomes `[REDACTED:<LABEL>]`; the patterns lean
//! towards redacting, but leave ordinary prose (plain words, short identifiers) alone.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

use crate::{Error, Result};

struct Pattern {
    label: &'static str,
    regex: Regex,
    /// Whether a match is a secret after all (the regex alone cannot say, having no lookaround).
    keep_if: fn(&Captures) -> bool,
    /// Environment-style assignments keep their name; the rest is replaced whole.
    keeps_name: bool,
}

fn never(_: &Captures) -> bool {
    false
}

/// "Bearer authentication": a plain word after `Bearer` is prose, not a token.
fn plain_word(c: &Captures) -> bool {
    let t = &c["value"];
    t.len() < 24 && t.bytes().all(|b| b.is_ascii_alphabetic())
}

/// A long path or word run (`/home/user/projects/...`) has no digit; an encoded secret of 33
/// characters or more almost surely has one and a letter.
fn not_encoded(c: &Captures) -> bool {
    let t = &c[0];
    !(t.bytes().any(|b| b.is_ascii_digit()) && t.bytes().any(|b| b.is_ascii_alphabetic()))
}

/// A value as written after `=`: quoted (spaces allowed inside), or up to whitespace.
const VALUE: &str = r#"(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s"']+)"#;

fn assignment(label: &'static str, suffix: &str) -> Result<Pattern, regex::Error> {
    let regex = Regex::new(&format!(r"(?i)\b(?P<name>[A-Z0-9_]*[A-Z0-9]_{suffix})[ \t]*=[ \t]*{VALUE}"))?;
    Ok(Pattern { label, regex, keep_if: never, keeps_name: true })
}

fn pattern(label: &'static str, regex: &str, keep_if: fn(&Captures) -> bool) -> Result<Pattern, regex::Error> {
    Ok(Pattern { label, regex: Regex::new(regex)?, keep_if, keeps_name: false })
}

/// In order: named assignments first, so their values carry the most telling label, and
/// the catch-all for encoded runs last. The patterns are constants, so a failure to compile
/// them is a bug the unit tests catch; it still refuses the write rather than store text
/// unredacted.
static PATTERNS: LazyLock<Result<Vec<Pattern>, regex::Error>> = LazyLock::new(|| {
    Ok(vec![
        assignment("API_KEY", "API_KEY")?,
        assignment("TOKEN", "TOKEN")?,
        assignment("SECRET", "SECRET")?,
        pattern("BEARER", r"\bBearer[ \t]+(?P<value>[A-Za-z0-9\-._~+/]{8,}=*)", plain_word)?,
        pattern("SK_KEY", r"\bsk-[A-Za-z0-9_\-]{16,}", never)?,
        pattern("CTX7_KEY", r"\bctx7_[A-Za-z0-9_\-]{8,}", never)?,
        pattern("BASE64", r"[A-Za-z0-9+/]{33,}={0,2}", not_encoded)?,
    ])
});

/// `text` with every secret it holds replaced by `[REDACTED:<LABEL>]`.
pub fn redact_secrets(text: &str) -> Result<String> {
    let patterns = PATTERNS.as_ref().map_err(|e| Error::Internal(format!("secret patterns: {e}")))?;
    let mut out = Cow::Borrowed(text);
    for p in patterns {
        let replaced = p.regex.replace_all(&out, |c: &Captures| {
            if (p.keep_if)(c) {
                c[0].to_string()
            } else if p.keeps_name {
                format!("{}=[REDACTED:{}]", &c["name"], p.label)
            } else {
                format!("[REDACTED:{}]", p.label)
            }
        });
        if let Cow::Owned(s) = replaced {
            out = Cow::Owned(s);
        }
    }
    Ok(out.into_owned())
}

#[cfg(test)]
mod tests {
    fn redact_secrets(text: &str) -> String {
        super::redact_secrets(text).expect("the patterns compile")
    }

    #[test]
    fn env_style_api_key_keeps_its_name_and_loses_its_value() {
        let r = redact_secrets("set OPENAI_API_KEY=abc123def456 then run");
        assert_eq!(r, "set OPENAI_API_KEY=[REDACTED:API_KEY] then run");
    }

    #[test]
    fn env_style_token_is_redacted_even_quoted_with_spaces() {
        let r = redact_secrets(r#"export GITHUB_TOKEN="ghp one two""#);
        assert_eq!(r, "export GITHUB_TOKEN=[REDACTED:TOKEN]");
        assert_eq!(redact_secrets("slack_bot_token = xoxb-1"), "slack_bot_token=[REDACTED:TOKEN]");
    }

    #[test]
    fn env_style_secret_is_redacted() {
        let r = redact_secrets("CLIENT_SECRET=hunter2");
        assert_eq!(r, "CLIENT_SECRET=[REDACTED:SECRET]");
    }

    #[test]
    fn bearer_tokens_are_redacted() {
        let r = redact_secrets("curl -H 'Authorization: Bearer eyJhbGciOi.J9x-y_z' now");
        assert_eq!(r, "curl -H 'Authorization: [REDACTED:BEARER]' now");
    }

    #[test]
    fn sk_keys_of_sixteen_or_more_characters_are_redacted() {
        let r = redact_secrets("key sk-proj-ABCDEFGHijklmnop1234 here");
        assert_eq!(r, "key [REDACTED:SK_KEY] here");
    }

    #[test]
    fn ctx7_tokens_are_redacted() {
        let r = redact_secrets("use ctx7_a1b2c3d4e5f6 for docs");
        assert_eq!(r, "use [REDACTED:CTX7_KEY] for docs");
    }

    #[test]
    fn base64_like_runs_of_33_or_more_are_redacted() {
        let run = "QWxhZGRpbjpvcGVuIHNlc2FtZQ0123456789abc==";
        assert_eq!(redact_secrets(&format!("blob {run} end")), "blob [REDACTED:BASE64] end");
        // A 40-character hex digest is base64-like too.
        let sha = "77fed58a0c1b2d3e4f5a6b7c8d9e0f1a2b3c4d5e";
        assert_eq!(redact_secrets(sha), "[REDACTED:BASE64]");
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in [
            "We deployed the service on Tuesday; the rollout went fine.",
            "the sk-abc flag is short",
            "Bearer authentication is configured in the gateway",
            "ctx7_ is a prefix",
            "TOKEN_LIMIT is 4096 and MAX_TOKENS=2048 is set",
            "see /home/user/projects/workspace/server/source/tree",
            "a run of 32 chars: QWxhZGRpbjpvcGVuIHNlc2FtZQ012345",
            "supercalifragilisticexpialidocious antidisestablishmentarianism",
            "[REDACTED:TOKEN] stays as it is",
        ] {
            assert_eq!(redact_secrets(text), text, "{text}");
        }
    }

    #[test]
    fn redaction_is_idempotent() {
        let once = redact_secrets("A_API_KEY=x B_TOKEN=y Bearer abcdefgh1234 sk-0123456789abcdefgh");
        assert_eq!(redact_secrets(&once), once);
    }
}
