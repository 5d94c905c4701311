//! Keeps a follower's answer from vouching for an append the follower never received.
//!
//! A leader confirms a linearizable read (openraft's `ReadIndex`) once a quorum has
//! acknowledged an RPC *sent after the read arrived*: it stamps every append with its
//! send time and, on each answer, credits the follower with the stamp of the requests
//! that answer covers. openraft 0.10.0-alpha.37 matches an answer to its in-flight
//! appends by log id (`InflightAppendQueue::drain_acked`): an answer accepting up to log
//! id `L` is credited to every in-flight append whose last log id is at most `L`. An
//! append that carries no entries — openraft sends one to deliver a new commit index
//! when there is nothing new to replicate — has `last = prev`, the last log id of the
//! append before it. So the answer to append A, if it is read only after an entry-less
//! append B was queued behind A, is also credited to B, with B's send time, although the
//! follower answered before B even existed.
//!
//! That breaks reads after a pause. A leader frozen by SIGSTOP while A was in flight
//! wakes to find both followers' answers to A in its sockets, and a read waiting. The
//! read is queued to wait for a quorum acknowledgement sent after it. The first answer
//! commits A; the new commit index makes the stream to the other follower queue an
//! entry-less B (stamped now); the other follower's answer to A then counts as an
//! acknowledgement of B. The read is confirmed, by a quorum the leader no longer has:
//! the followers elected a new leader while it slept and committed clicks it never
//! saw. The fault suite caught it as a linearizable count that missed acknowledged
//! clicks (seeds 204 and 506, docs/testing.md), and `sim::tests` reproduces it
//! deterministically.
//!
//! The guard sits between openraft and one append stream and keeps two rules:
//! - An answer is handed to openraft only if it can be credited to no request but its
//!   own: when a later request already sent has a last log id at or below the answer's
//!   (an entry-less one behind it), the answer is withheld. That later request's own
//!   answer covers as much and is credited with a send time the follower really saw.
//! - While openraft is still crediting an answer it was handed (until it asks for the
//!   next one), no new request is taken from openraft, so none can be stamped and
//!   queued in that window.
//!
//! Withholding an answer only delays progress: the later answer reports at least as
//! much, and if the stream breaks first, openraft resends from what it last heard. The
//! gate holds a request back for the time openraft takes to handle one answer.
//!
//! A stream openraft stops reading (after a conflict, a higher vote, a transport error,
//! or when it cancels the session) is closed: the request side ends at once instead of
//! waiting at the gate for a poll that will not come. Otherwise the stream would stay
//! open on both nodes, and openraft's request generator, parked inside it holding the
//! replication session's state, would block the next session to that follower.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use adclick_storage::types::{LogId, TypeConfig};
use futures::Stream;
use openraft::entry::RaftEntry;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};

/// The shared state of one guarded append stream.
#[derive(Debug, Clone, Default)]
pub struct AckGuard {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// `(prev, last)` log ids of every request taken from openraft and not answered
    /// yet, in send order (the order the follower answers in).
    sent: VecDeque<(Option<LogId>, Option<LogId>)>,
    /// An answer was handed to openraft, which has not asked for the next one: it may
    /// still be crediting it to its in-flight requests.
    handed: bool,
    /// The request side, waiting for `handed` to clear.
    waiting: Option<Waker>,
    /// openraft reads no more answers: the request side ends.
    closed: bool,
    /// Answers withheld so far.
    withheld: u64,
}

impl State {
    /// Opens the gate: openraft is done with the answer it was handed.
    fn release(&mut self) {
        self.handed = false;
        if let Some(w) = self.waiting.take() {
            w.wake();
        }
    }
}

impl AckGuard {
    /// A guard for one new stream.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers withheld so far on this stream.
    pub fn withheld(&self) -> u64 {
        self.lock().withheld
    }

    /// Ends the request side: openraft reads no more answers.
    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.release();
    }

    /// Wraps openraft's request stream: records each request as it is taken, and takes
    /// none while openraft is handling an answer.
    pub fn requests<S>(&self, inner: S) -> Requests<S> {
        Requests {
            inner,
            guard: self.clone(),
        }
    }

    /// Wraps the follower's answers to the requests of [`AckGuard::requests`], in order:
    /// withholds those openraft would also credit to a later request.
    pub fn answers<R, E>(&self, inner: R) -> Answers<R>
    where
        R: Stream<Item = Result<StreamAppendResult<TypeConfig>, E>>,
    {
        Answers {
            inner,
            guard: self.clone(),
        }
    }
}

/// The request side of an [`AckGuard`].
pub struct Requests<S> {
    inner: S,
    guard: AckGuard,
}

impl<S> Stream for Requests<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    type Item = AppendEntriesRequest<TypeConfig>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // The lock is held while openraft produces the request: it stamps and queues the
        // request inside this poll, and the answer side must see it recorded before
        // deciding whether an answer can be handed over.
        let mut st = this.guard.lock();
        if st.closed {
            // Never poll openraft's stream again: its requests belong to no session now.
            return Poll::Ready(None);
        }
        if st.handed {
            st.waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(req)) = &polled {
            let last = req.entries.last().map(|e| e.log_id()).or(req.prev_log_id);
            st.sent.push_back((req.prev_log_id, last));
        }
        polled
    }
}

/// The answer side of an [`AckGuard`].
pub struct Answers<R> {
    inner: R,
    guard: AckGuard,
}

impl<R, E> Stream for Answers<R>
where
    R: Stream<Item = Result<StreamAppendResult<TypeConfig>, E>> + Unpin,
{
    type Item = Result<StreamAppendResult<TypeConfig>, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // openraft asks for the next answer: it is done with the last one.
        this.guard.lock().release();
        loop {
            let item = match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.guard.close();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(item)) => item,
            };
            let mut st = this.guard.lock();
            match &item {
                Ok(Ok(matching)) => {
                    st.sent.pop_front();
                    // openraft credits an answer accepting up to `matching` to every
                    // queued request ending at or before it, and to one it reaches into.
                    let covers_later = st
                        .sent
                        .iter()
                        .any(|(prev, last)| last <= matching || prev < matching);
                    if covers_later {
                        st.withheld += 1;
                        continue;
                    }
                    st.handed = true;
                }
                // A rejection (conflict, higher vote) or a transport error: openraft ends
                // the session on it and reads no further.
                Ok(Err(_)) | Err(_) => {
                    drop(st);
                    this.guard.close();
                }
            }
            return Poll::Ready(Some(item));
        }
    }
}

impl<R> Drop for Answers<R> {
    fn drop(&mut self) {
        // openraft dropped the stream: it ended or cancelled the session.
        self.guard.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_storage::types::log_id;
    use futures::StreamExt;
    use openraft::raft::StreamAppendError;

    fn req(prev: Option<u64>, entries: &[u64]) -> AppendEntriesRequest<TypeConfig> {
        use adclick_storage::types::{Entry, Vote};
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: prev.map(|i| log_id(1, 1, i)),
            leader_commit: None,
            entries: entries
                .iter()
                .map(|&i| Entry::new_blank(log_id(1, 1, i)))
                .collect(),
        }
    }

    type Answer = Result<StreamAppendResult<TypeConfig>, ()>;

    fn ok(i: u64) -> Answer {
        Ok(Ok(Some(log_id(1, 1, i))))
    }

    /// Takes the guard's requests one at a time and feeds answers, as the test says.
    struct Harness {
        guard: AckGuard,
        requests:
            Requests<futures::channel::mpsc::UnboundedReceiver<AppendEntriesRequest<TypeConfig>>>,
        to_guard: futures::channel::mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
        /// `None` once openraft dropped the answer stream.
        answers: Option<Answers<futures::channel::mpsc::UnboundedReceiver<Answer>>>,
        from_follower: futures::channel::mpsc::UnboundedSender<Answer>,
    }

    impl Harness {
        fn new() -> Self {
            let guard = AckGuard::new();
            let (to_guard, rx) = futures::channel::mpsc::unbounded();
            let (from_follower, arx) = futures::channel::mpsc::unbounded();
            Harness {
                requests: guard.requests(rx),
                answers: Some(guard.answers(arx)),
                guard,
                to_guard,
                from_follower,
            }
        }

        /// openraft produces `r` and the transport takes it; `false` if the gate held it.
        fn send(&mut self, r: AppendEntriesRequest<TypeConfig>) -> bool {
            self.to_guard.unbounded_send(r).expect("open");
            self.take_request()
        }

        /// The follower answers `a`; what openraft gets, if anything.
        fn answer(&mut self, a: Answer) -> Option<Answer> {
            self.from_follower.unbounded_send(a).expect("open");
            self.next_answer()
        }

        /// openraft asks for the next answer; what it gets, if anything has arrived.
        fn next_answer(&mut self) -> Option<Answer> {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let answers = self.answers.as_mut().expect("the answer stream is open");
            match Pin::new(answers).poll_next(&mut cx) {
                Poll::Ready(Some(a)) => Some(a),
                _ => None,
            }
        }

        /// The transport asks for the next request; whether it got one.
        fn take_request(&mut self) -> bool {
            self.next_request() == Poll::Ready(true)
        }

        /// The transport polls the request side: pending, a request (`true`) or the end.
        fn next_request(&mut self) -> Poll<bool> {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            Pin::new(&mut self.requests)
                .poll_next(&mut cx)
                .map(|r| r.is_some())
        }
    }

    #[test]
    fn pipelined_answers_pass_in_order() {
        let mut h = Harness::new();
        assert!(h.send(req(Some(0), &[1, 2])));
        assert!(h.send(req(Some(2), &[3])));
        assert_eq!(h.answer(ok(2)), Some(ok(2)));
        assert_eq!(h.answer(ok(3)), Some(ok(3)));
        assert_eq!(h.guard.withheld(), 0);
    }

    #[test]
    fn an_answer_that_would_cover_a_later_entryless_request_is_withheld() {
        let mut h = Harness::new();
        assert!(h.send(req(Some(0), &[1, 2])));
        // A new commit index and nothing new to send: an entry-less request, last = 2.
        assert!(h.send(req(Some(2), &[])));
        // The answer to the first covers the second in openraft's matching: withheld.
        assert_eq!(h.answer(ok(2)), None);
        // The second's own answer reports as much.
        assert_eq!(h.answer(ok(2)), Some(ok(2)));
        assert_eq!(h.guard.withheld(), 1);
    }

    #[test]
    fn no_request_is_taken_while_openraft_credits_an_answer() {
        let mut h = Harness::new();
        assert!(h.send(req(Some(0), &[1])));
        assert_eq!(h.answer(ok(1)), Some(ok(1)));
        // openraft has the answer and has not asked for the next: the gate is shut.
        assert!(!h.send(req(Some(1), &[])));
        // It asks for the next answer (none yet): the held request goes out.
        assert_eq!(h.next_answer(), None);
        assert!(h.take_request());
    }

    #[test]
    fn a_conflict_passes_and_ends_the_requests() {
        let mut h = Harness::new();
        assert!(h.send(req(Some(4), &[5])));
        let conflict: Answer = Ok(Err(StreamAppendError::Conflict(log_id(1, 1, 4))));
        assert_eq!(h.answer(conflict.clone()), Some(conflict));
        // openraft ends the session on a conflict and reads no further: the request side
        // must end rather than wait at the gate for a poll that never comes.
        assert_eq!(h.next_request(), Poll::Ready(false));
    }

    #[test]
    fn dropping_the_answers_ends_the_requests() {
        let mut h = Harness::new();
        assert!(h.send(req(Some(0), &[1])));
        assert_eq!(h.answer(ok(1)), Some(ok(1)));
        // The gate is shut while openraft handles the answer...
        assert!(!h.send(req(Some(1), &[])));
        // ...and openraft drops the stream instead (its session was cancelled).
        h.answers = None;
        assert_eq!(h.next_request(), Poll::Ready(false));
    }

    #[tokio::test]
    async fn a_closed_answer_stream_ends() {
        let guard = AckGuard::new();
        let answers = guard.answers(futures::stream::iter(Vec::<Answer>::new()));
        assert_eq!(answers.collect::<Vec<_>>().await, vec![]);
    }
}
