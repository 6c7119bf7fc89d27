//! A bounded queue of work taken by workers started on demand: the one
//! mechanism behind [`crate::hotpath::misses`] and
//! [`crate::hotpath::renewal`].
//!
//! A push that finds fewer workers running than allowed asks its caller to
//! start one; a worker takes batches until it finds the queue empty, and
//! is then counted out, so an idle replica runs no task. A worker that ends
//! any other way (a panic, a cancelled task) is counted out by its
//! [`Worker`] guard all the same: were it not, a dead worker would hold its
//! place for good, and with every place held no new one would ever start.

use std::sync::{Mutex, MutexGuard};

#[derive(Debug)]
struct State<T> {
    items: Vec<T>,
    /// Workers running; each takes what is queued until nothing is.
    workers: usize,
}

/// Work waiting for a worker.
#[derive(Debug)]
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    max_items: usize,
    max_workers: usize,
    /// Whether a queued item is no longer wanted (skipped, not taken).
    abandoned: fn(&T) -> bool,
}

impl<T> WorkQueue<T> {
    /// An empty queue holding at most `max_items`, taken by at most
    /// `max_workers` workers at once; items for which `abandoned` answers
    /// true are dropped instead of taken.
    pub fn new(max_items: usize, max_workers: usize, abandoned: fn(&T) -> bool) -> Self {
        Self {
            state: Mutex::new(State {
                items: Vec::new(),
                workers: 0,
            }),
            max_items,
            max_workers: max_workers.max(1),
            abandoned,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`. `None`: the queue is full, and `item` was dropped.
    /// `Some(true)`: the caller must start a worker (fewer than allowed are
    /// running); it takes them through [`WorkQueue::worker`].
    pub fn push(&self, item: T) -> Option<bool> {
        let mut state = self.lock();
        if state.items.len() >= self.max_items {
            return None;
        }
        state.items.push(item);
        let start_worker = state.workers < self.max_workers;
        if start_worker {
            state.workers += 1;
        }
        Some(start_worker)
    }

    /// The worker a push asked its caller to start.
    pub fn worker(&self) -> Worker<'_, T> {
        Worker {
            queue: self,
            stopped: false,
        }
    }

    /// Items waiting (abandoned ones included until a worker skips them).
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One running worker of a [`WorkQueue`]: counted out when it finds the
/// queue empty, or when dropped before that.
#[derive(Debug)]
pub struct Worker<'a, T> {
    queue: &'a WorkQueue<T>,
    stopped: bool,
}

impl<T> Worker<'_, T> {
    /// Takes up to `max` waiting items, oldest first, skipping abandoned
    /// ones. An empty answer means none was waiting and this worker must
    /// stop: it is no longer counted, and the next push starts another.
    pub fn take(&mut self, max: usize) -> Vec<T> {
        if self.stopped {
            return Vec::new();
        }
        let mut state = self.queue.lock();
        let abandoned = self.queue.abandoned;
        state.items.retain(|item| !abandoned(item));
        if state.items.is_empty() {
            state.workers -= 1;
            self.stopped = true;
            return Vec::new();
        }
        let n = max.min(state.items.len());
        state.items.drain(..n).collect()
    }
}

impl<T> Drop for Worker<'_, T> {
    fn drop(&mut self) {
        if !self.stopped {
            self.queue.lock().workers -= 1;
        }
    }
}
