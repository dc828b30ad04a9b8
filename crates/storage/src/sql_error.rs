//! sqlx errors as [`BackendError`]s, for both SQL backends: a refusal (the
//! database would refuse the same statement again, so the history writer sets
//! the message aside) or a passing failure (retried).

use next_chat_core::BackendError;

/// `error` as a `BackendError` of `backend`; `refuses` decides for a database's
/// own error, with that backend's codes.
pub(crate) fn classified(
    backend: &'static str,
    context: &str,
    error: sqlx::Error,
    refuses: impl FnOnce(&dyn sqlx::error::DatabaseError) -> bool,
) -> BackendError {
    let refused = match &error {
        sqlx::Error::Database(database) => refuses(database.as_ref()),
        // A value sqlx could not encode will not encode next time either.
        sqlx::Error::Encode(_) => true,
        _ => false,
    };
    let detail = format!("{context}: {error}");
    if refused {
        BackendError::refused(backend, detail)
    } else {
        BackendError::new(backend, detail)
    }
}
