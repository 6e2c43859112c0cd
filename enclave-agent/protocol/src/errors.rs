//! The one renderer of error chains for logs, Events and status messages.

/// `error: cause: cause…`, each cause once: errors that already print their source in their own
/// message (kube's, hyper's) also return it as their source, and it is not said twice.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("starting")]
        Plain(#[source] std::io::Error),
        #[error("starting: {0}")]
        SaysItsCause(#[source] std::io::Error),
    }

    #[test]
    fn each_cause_is_named_once() {
        let io = || std::io::Error::other("no such file");
        assert_eq!(error_chain(&Outer::Plain(io())), "starting: no such file");
        assert_eq!(
            error_chain(&Outer::SaysItsCause(io())),
            "starting: no such file"
        );
    }
}
