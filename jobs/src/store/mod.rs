//! SQL, one module per table. Functions take a connection so callers choose the
//! transaction; nothing here decides policy.

pub mod tokens;
pub mod workers;
pub mod workspaces;
