//! The one place where scute errors become ttrpc statuses.

use containerd_shim_protos::ttrpc::{self, Code};
use scute_protocol::ErrorCode;
use scute_runtime::Error;

/// What the task service and the sandbox answer containerd with.
pub type TResult<T> = ttrpc::Result<T>;

pub fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

pub fn not_found(what: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what}: not found"))
}

/// Maps a runtime error, prefixed with the ids it concerns.
pub fn map(context: &str, e: Error) -> ttrpc::Error {
    let code = match &e {
        Error::Agent(a) => match a.code {
            ErrorCode::InvalidArgument => Code::INVALID_ARGUMENT,
            ErrorCode::NotFound => Code::NOT_FOUND,
            ErrorCode::AlreadyExists => Code::ALREADY_EXISTS,
            ErrorCode::FailedPrecondition
            | ErrorCode::ExecutableNotFound
            | ErrorCode::PermissionDenied => Code::FAILED_PRECONDITION,
            ErrorCode::Internal => Code::INTERNAL,
        },
        Error::Config { .. }
        | Error::BundleNotFound(_)
        | Error::InvalidSpec { .. }
        | Error::InvalidId(_) => Code::INVALID_ARGUMENT,
        Error::AlreadyRunning { .. } => Code::ALREADY_EXISTS,
        Error::AssetMissing { .. } | Error::VirtiofsdMissing | Error::Hypervisor(_) => {
            Code::FAILED_PRECONDITION
        }
        Error::Boot { .. }
        | Error::VmLost { .. }
        | Error::Protocol(_)
        | Error::ChannelClosed(_) => Code::UNAVAILABLE,
        Error::UnexpectedReply { .. } => Code::INTERNAL,
        Error::RequestTooLarge { .. } => Code::INVALID_ARGUMENT,
        Error::Deadline { .. } | Error::TooManyPending { .. } => Code::DEADLINE_EXCEEDED,
        Error::Io { .. } | Error::HostTool { .. } | Error::Host(_) => Code::INTERNAL,
    };
    status(code, format!("{context}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scute_protocol::AgentError;

    fn code_of(e: ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            _ => panic!("not a status"),
        }
    }

    #[test]
    fn codes_are_meaningful() {
        let agent = |c| Error::Agent(AgentError::new(c, "x"));
        assert_eq!(
            code_of(map("c", agent(ErrorCode::NotFound))),
            Code::NOT_FOUND
        );
        assert_eq!(
            code_of(map("c", agent(ErrorCode::ExecutableNotFound))),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            code_of(map("c", Error::InvalidId("..".into()))),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code_of(map("c", Error::VirtiofsdMissing)),
            Code::FAILED_PRECONDITION
        );
        let msg = match map("sandbox s1 container c1", Error::VirtiofsdMissing) {
            ttrpc::Error::RpcStatus(s) => s.message().to_owned(),
            _ => unreachable!(),
        };
        assert!(msg.starts_with("sandbox s1 container c1: virtiofsd not found"));
    }
}
