//! The crate's error type.

/// Everything that can go wrong in the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// JSON that does not parse or does not have the expected shape.
    #[error("{what}: {source}")]
    Json {
        /// What was being parsed.
        what: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// An error raised by libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// A checkpoint, config or input that is not what we expect.
    #[error("{0}")]
    Invalid(String),
    /// The tokenizer library failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    /// An I/O error tagged with the path it concerns.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.as_ref().display().to_string(), source }
    }
    /// A JSON error tagged with what was being parsed.
    pub fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        ModelError::Json { what: what.into(), source }
    }
}

/// Shorthand for [`ModelError::Invalid`].
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::ModelError::Invalid(format!($($arg)*)) };
}
