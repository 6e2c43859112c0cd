//! How the agent prints an error with its causes, for logs and for `BootRefused`: one place,
//! so that the control link and a user's challenge (which the link calls) need not import
//! each other.

/// `error: cause: cause…` for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors already print their source; do not say it twice.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
