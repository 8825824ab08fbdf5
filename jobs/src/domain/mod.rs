//! The domain: what a workspace and a lifecycle op are, the rules their fields obey, and the
//! request types the api parses into before anything touches the database. Values that are
//! stored are `sqlx::Type`s, so a row whose text the code does not know fails to decode
//! instead of being read as some default.

pub mod agent_url;
pub mod delegation;
pub mod memory;
pub mod op;
pub mod status;
pub mod workspace;

pub use agent_url::{AgentUrl, AgentUrlPolicy};
pub use delegation::{DelegationStatus, Move};
pub use op::{Op, OpKind, OpStatus};
pub use status::Status;
pub use workspace::{CreateRequest, DeliveryMode, Heartbeat, Patch, Registration, Workspace};
