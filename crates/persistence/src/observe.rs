//! Lets whoever embeds the store count its operations (the server exports
//! them as Prometheus metrics) without this crate knowing how they are
//! exported: every public [`Store`] operation reports its name, how long it
//! took and whether it failed to the observer, if one is set.

use std::{fmt::Debug, future::Future, time::Duration, time::Instant};

use crate::{Store, StoreError};

/// Told of every storage operation once it ends.
pub trait StoreObserver: Send + Sync + Debug {
    /// `operation` (a [`Store`] method's name) ended after `elapsed`;
    /// `failed` when it returned an error.
    fn operation_done(&self, operation: &'static str, elapsed: Duration, failed: bool);
}

impl Store {
    /// Runs one public operation, reporting it to the observer.
    pub(crate) async fn observed<T>(
        &self,
        operation: &'static str,
        run: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(observer) = &self.observer else {
            return run.await;
        };
        let started = Instant::now();
        let result = run.await;
        observer.operation_done(operation, started.elapsed(), result.is_err());
        result
    }
}
