//! How the agent prints an error with its causes, for logs and for `BootRefused`: the one
//! renderer of the workspace ([`nautilus_protocol::error_chain`]), named here so that the
//! control link and a user's challenge (which the link calls) need not import each other.

pub use nautilus_protocol::error_chain;
