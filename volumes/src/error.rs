use std::path::PathBuf;

/// The one error type of the `volumes` crate. Its text is what the engine
/// shows the user (`Err` in the protocol), so every variant names the
/// volume, option or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid volume name {0:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]{{0,254}}")]
    BadName(String),
    #[error("option {option}={value:?}: {why}")]
    BadOption {
        option: String,
        value: String,
        why: String,
    },
    #[error("volume {0:?} does not exist")]
    NotFound(String),
    #[error("volume {0:?} already exists")]
    Exists(String),
    #[error("volume {name:?} is mounted ({mounts} mount(s) by {ids} ID(s)); unmount it first")]
    InUse {
        name: String,
        mounts: u32,
        ids: usize,
    },
    #[error("volume {name:?} has no mount with ID {id:?}")]
    UnknownMountId { name: String, id: String },
    #[error("bind device {path}: {why}")]
    BindRefused { path: PathBuf, why: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {name:?}: {what}: {why}")]
    Kernel {
        name: String,
        what: String,
        why: String,
    },
    #[error("record {path} is unreadable: {why}")]
    Corrupt { path: PathBuf, why: String },
}

impl Error {
    pub(crate) fn option(option: &str, value: &str, why: &str) -> Error {
        Error::BadOption {
            option: option.to_string(),
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
