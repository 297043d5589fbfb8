//! What can go wrong setting up the shim's own listeners (the port-forward
//! relay, the debug shell): each names the file or command involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A file or socket operation on `path`.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Entering the pod's network namespace.
    #[error("enter {}: {source}", path.display())]
    Setns { path: PathBuf, source: nix::Error },
    /// iptables could not be run, or refused the rule.
    #[error("iptables {op} the port-forward redirect in {}: {message}", netns.display())]
    Iptables {
        op: &'static str,
        netns: PathBuf,
        message: String,
    },
    #[error("the thread binding the listener panicked")]
    Thread,
}

impl ListenError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ListenError::Io { what, path, source }
    }
}
