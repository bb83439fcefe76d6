//! Cancellation: Ctrl-C (or SIGTERM) sets a flag that operators poll; the executor stops
//! scheduling, commits no partial output, and flushes memos so finished work is kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared cancellation flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

/// The error an operator returns when it stops because of cancellation.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once cancellation was requested; call it between records.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() { Err(Cancelled) } else { Ok(()) }
    }

    /// Cancels this token on Ctrl-C or SIGTERM. A second Ctrl-C exits at once (130).
    pub fn install_signal_handler(&self) -> Result<(), ctrlc::Error> {
        let token = self.clone();
        ctrlc::set_handler(move || {
            if token.is_cancelled() {
                crate::progress::log_line(format_args!(
                    "\nfleming: interrupted again; exiting now (finished work is kept)"
                ));
                std::process::exit(130);
            }
            crate::progress::log_line(format_args!(
                "\nfleming: interrupted; stopping running stages (press Ctrl-C again to exit now)"
            ));
            token.cancel();
        })
    }
}
