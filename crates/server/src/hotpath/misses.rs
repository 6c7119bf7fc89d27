//! Authorize's cache misses, queued to be read from storage together.
//!
//! A miss is cheap to cause: the key checksum is public, so anyone can make
//! well-formed keys no one owns, each a miss. Read one query each, a flood
//! of them cost the database a query per forged key, a load that made its
//! queries slow enough on a busy machine to be taken for an outage, and
//! queued every real key's first use behind the whole flood. Gathered here,
//! the misses that arrive while reads are in flight wait for the next free
//! reader, which reads them all in one query
//! ([`keygate_persistence::Store::find_by_lookup_ids`]): a flood costs a
//! query per batch, and a real key waits for at most the reads in flight
//! and its own.
//!
//! Readers are tasks, started by the push that finds fewer running than
//! allowed and ending when they find the queue empty, so an idle replica
//! runs none, and a caller that goes away abandons its answer, not a read
//! others wait on.

use keygate_domain::ApiKey;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::hotpath::workers::{WorkQueue, Worker};

/// Misses waiting at most; beyond it a miss is refused at once (UNAVAILABLE)
/// rather than queued behind a backlog no reader will reach in time.
const MAX_WAITING: usize = 65_536;

/// What a read found for one lookup id: its key, or `None` when no key
/// owns it.
pub type Found = Result<Option<ApiKey>, ApiError>;

/// A lookup id waiting to be read, with where its answer goes.
#[derive(Debug)]
pub struct Miss {
    /// The lookup id.
    pub lookup_id: Box<str>,
    answer: oneshot::Sender<Found>,
}

impl Miss {
    /// Sends this miss its answer (dropped when its caller went away).
    pub fn answer(self, found: Found) {
        let _ = self.answer.send(found);
    }
}

/// What [`MissQueue::push`] tells its caller.
#[derive(Debug)]
pub enum Queued {
    /// The answer will arrive here; `start_reader` asks the caller to
    /// start a reader (fewer than allowed are running).
    Waiting {
        /// Where the answer arrives.
        answer: oneshot::Receiver<Found>,
        /// Whether the caller must start a reader.
        start_reader: bool,
    },
    /// The queue is full: refused.
    Full,
}

/// One running reader of a [`MissQueue`] (counted out when it ends, even by
/// a panic: [`crate::hotpath::workers`]).
pub type Reader<'a> = Worker<'a, Miss>;

/// Cache misses waiting for a reader.
#[derive(Debug)]
pub struct MissQueue {
    queue: WorkQueue<Miss>,
}

impl MissQueue {
    /// An empty queue read by at most `max_readers` readers at once.
    pub fn new(max_readers: usize) -> Self {
        Self {
            queue: WorkQueue::new(MAX_WAITING, max_readers, |miss| miss.answer.is_closed()),
        }
    }

    /// Queues `lookup_id` to be read.
    pub fn push(&self, lookup_id: &str) -> Queued {
        let (answer, receiver) = oneshot::channel();
        let miss = Miss {
            lookup_id: lookup_id.into(),
            answer,
        };
        match self.queue.push(miss) {
            Some(start_reader) => Queued::Waiting {
                answer: receiver,
                start_reader,
            },
            None => Queued::Full,
        }
    }

    /// The reader a push asked its caller to start: it takes the waiting
    /// misses (oldest first, skipping those whose caller went away) until
    /// none is left.
    pub fn reader(&self) -> Reader<'_> {
        self.queue.worker()
    }

    /// Misses waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no miss is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(queued: Queued) -> (oneshot::Receiver<Found>, bool) {
        match queued {
            Queued::Waiting {
                answer,
                start_reader,
            } => (answer, start_reader),
            Queued::Full => panic!("refused"),
        }
    }

    fn ids(misses: &[Miss]) -> Vec<&str> {
        misses.iter().map(|m| &*m.lookup_id).collect()
    }

    #[test]
    fn readers_start_up_to_the_limit_and_stop_when_the_queue_is_empty() {
        let queue = MissQueue::new(2);
        let (_a, first) = waiting(queue.push("aaaaaaaa"));
        let (_b, second) = waiting(queue.push("bbbbbbbb"));
        let (_c, third) = waiting(queue.push("cccccccc"));
        assert_eq!((first, second, third), (true, true, false));
        let (mut one, mut two) = (queue.reader(), queue.reader());
        assert_eq!(
            ids(&one.take(8)),
            ["aaaaaaaa", "bbbbbbbb", "cccccccc"],
            "one read takes everything waiting, oldest first"
        );
        assert!(one.take(8).is_empty(), "the first reader stops");
        let (_d, fourth) = waiting(queue.push("dddddddd"));
        assert!(fourth, "one running: the push starts another");
        let mut three = queue.reader();
        let (_e, fifth) = waiting(queue.push("eeeeeeee"));
        assert!(!fifth, "two running");
        assert_eq!(ids(&two.take(8)), ["dddddddd", "eeeeeeee"]);
        assert!(two.take(8).is_empty());
        assert!(three.take(8).is_empty(), "both readers stopped");
        drop((one, two, three));
        let (_f, sixth) = waiting(queue.push("ffffffff"));
        let (_g, seventh) = waiting(queue.push("gggggggg"));
        let (_h, eighth) = waiting(queue.push("hhhhhhhh"));
        assert_eq!((sixth, seventh, eighth), (true, true, false));
    }

    #[test]
    fn a_reader_that_ends_early_is_counted_out() {
        let queue = MissQueue::new(1);
        let (_a, started) = waiting(queue.push("aaaaaaaa"));
        assert!(started);
        let (_b, _) = {
            let mut reader = queue.reader();
            assert_eq!(ids(&reader.take(1)), ["aaaaaaaa"]);
            let (b, started) = waiting(queue.push("bbbbbbbb"));
            assert!(!started, "one running");
            // Dropped before finding the queue empty, as by a panic.
            (b, started)
        };
        let (_c, started) = waiting(queue.push("cccccccc"));
        assert!(started, "counted out: the next push starts another");
        let mut reader = queue.reader();
        assert_eq!(ids(&reader.take(8)), ["bbbbbbbb", "cccccccc"]);
        assert!(reader.take(8).is_empty());
    }

    #[test]
    fn a_read_takes_at_most_its_batch() {
        let queue = MissQueue::new(1);
        let answers: Vec<_> = (0..5)
            .map(|i| waiting(queue.push(&format!("miss{i:04}"))).0)
            .collect();
        let mut reader = queue.reader();
        assert_eq!(ids(&reader.take(3)), ["miss0000", "miss0001", "miss0002"]);
        assert_eq!(ids(&reader.take(3)), ["miss0003", "miss0004"]);
        assert!(reader.take(3).is_empty());
        drop(answers);
    }

    #[tokio::test]
    async fn answers_reach_their_callers_and_abandoned_misses_are_not_read() {
        let queue = MissQueue::new(1);
        let (kept, _) = waiting(queue.push("keptkept"));
        let (gone, _) = waiting(queue.push("gonegone"));
        drop(gone);
        let misses = queue.reader().take(8);
        assert_eq!(ids(&misses), ["keptkept"], "its caller went away");
        for miss in misses {
            miss.answer(Ok(None));
        }
        assert!(matches!(kept.await, Ok(Ok(None))));
    }

    #[test]
    fn a_full_queue_refuses() {
        let queue = MissQueue::new(1);
        let answers: Vec<_> = (0..MAX_WAITING)
            .map(|_| waiting(queue.push("aaaaaaaa")).0)
            .collect();
        assert!(matches!(queue.push("zzzzzzzz"), Queued::Full));
        assert_eq!(queue.len(), MAX_WAITING);
        drop(answers);
    }
}
