//! A connection's frames in flight, polled inside the connection's own task: a small stand-in
//! for `tokio::task::JoinSet` that spawns no task per frame. With one event per frame the
//! generator handles hundreds of thousands of frames a second on the cores the switch also
//! needs; a task per frame costs an allocation or two, a trip through the scheduler and an
//! extra wake-up (reply → frame task → connection task) for every one of them. Here the reply
//! wakes the connection directly, and a frame's slot — its pinned storage and its waker — is
//! reused by later frames, so a frame in flight allocates nothing of its own.
//!
//! Only the futures that were woken are polled again: each slot has its own waker, which queues
//! the slot and wakes the task that last polled the set.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Slots woken since the set was last polled, and the task to wake when one is.
#[derive(Default)]
struct Ready {
    slots: Vec<usize>,
    /// Per slot: already in `slots` (a slot is queued once however often it is woken).
    queued: Vec<bool>,
    owner: Option<Waker>,
    /// The owner was woken and has not polled the set since: further wakes need not wake it
    /// again (replies often arrive several per read).
    owner_woken: bool,
}

#[derive(Default)]
struct Shared {
    ready: Mutex<Ready>,
}

impl Shared {
    fn ready(&self) -> MutexGuard<'_, Ready> {
        // Every critical section is a few pushes and flag writes: nothing is left half done.
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a slot to be polled; returns the owner to wake, if it needs waking.
    fn queue(&self, slot: usize) -> Option<Waker> {
        let mut ready = self.ready();
        ready.queue(slot);
        if ready.owner_woken {
            return None;
        }
        ready.owner_woken = true;
        ready.owner.clone()
    }
}

impl Ready {
    fn queue(&mut self, slot: usize) {
        if !self.queued[slot] {
            self.queued[slot] = true;
            self.slots.push(slot);
        }
    }
}

/// The waker of one slot: whichever future occupies the slot when it fires gets polled (a late
/// wake of an earlier occupant only polls the current one once more, which futures allow).
struct SlotWaker {
    slot: usize,
    shared: Arc<Shared>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The owner is woken outside the lock: its waker may do anything.
        if let Some(owner) = self.shared.queue(self.slot) {
            owner.wake();
        }
    }
}

struct Slot<F> {
    future: Pin<Box<Option<F>>>,
    waker: Waker,
}

/// Futures of one type polled by their owner; yields each output with the slot it ran in.
pub(crate) struct FutureSet<F: Future> {
    slots: Vec<Slot<F>>,
    free: Vec<usize>,
    len: usize,
    shared: Arc<Shared>,
    /// Reused to take the ready slots out of the lock while polling them.
    polling: Vec<usize>,
}

impl<F: Future> Default for FutureSet<F> {
    fn default() -> Self {
        FutureSet {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            shared: Arc::default(),
            polling: Vec::new(),
        }
    }
}

impl<F: Future> FutureSet<F> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a future; it is first polled by the next `join_next` or `try_join_next`. Returns its
    /// slot, which the output comes back with (and which is free again from then on).
    pub(crate) fn push(&mut self, future: F) -> usize {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.slots.len();
                self.slots.push(Slot {
                    future: Box::pin(None),
                    waker: Waker::from(Arc::new(SlotWaker { slot, shared: self.shared.clone() })),
                });
                self.shared.ready().queued.push(false);
                slot
            }
        };
        self.slots[slot].future.set(Some(future));
        self.len += 1;
        // A new future has never been polled: queue it as if woken (the owner is the caller,
        // so it needs no wake).
        self.shared.ready().queue(slot);
        slot
    }

    /// Polls the woken futures until one completes; wakes `cx` when another is woken.
    pub(crate) fn poll_join_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(usize, F::Output)>> {
        self.poll_ready(Some(cx.waker()))
    }

    /// Polls the woken futures until one completes. With an `owner`, it is the waker to wake
    /// from now on; without, the last one stays (a spurious wake at worst).
    fn poll_ready(&mut self, owner: Option<&Waker>) -> Poll<Option<(usize, F::Output)>> {
        if self.len == 0 {
            return Poll::Ready(None);
        }
        let mut polling = std::mem::take(&mut self.polling);
        {
            let mut ready = self.shared.ready();
            if let Some(owner) = owner {
                if !ready.owner.as_ref().is_some_and(|known| known.will_wake(owner)) {
                    ready.owner = Some(owner.clone());
                }
                // From here on, a wake must reach the owner again.
                ready.owner_woken = false;
            }
            std::mem::swap(&mut polling, &mut ready.slots);
            for &slot in &polling {
                ready.queued[slot] = false;
            }
        }
        let mut done = None;
        let mut index = 0;
        while index < polling.len() {
            let slot = polling[index];
            index += 1;
            let entry = &mut self.slots[slot];
            let Some(future) = entry.future.as_mut().as_pin_mut() else {
                // A stale wake of a slot that is free now.
                continue;
            };
            if let Poll::Ready(output) = future.poll(&mut Context::from_waker(&entry.waker)) {
                entry.future.set(None);
                self.free.push(slot);
                self.len -= 1;
                done = Some((slot, output));
                break;
            }
        }
        // Woken slots not polled yet stay queued for the next call (which every caller makes
        // before it waits: returning an output is not a promise to wake).
        if index < polling.len() {
            let mut ready = self.shared.ready();
            for &slot in &polling[index..] {
                ready.queue(slot);
            }
        }
        polling.clear();
        self.polling = polling;
        match done {
            Some(done) => Poll::Ready(Some(done)),
            None => Poll::Pending,
        }
    }

    /// The next output; `None` when the set is empty. Cancel-safe: an output is only taken out
    /// of the set when it is returned.
    pub(crate) async fn join_next(&mut self) -> Option<(usize, F::Output)> {
        std::future::poll_fn(|cx| self.poll_join_next(cx)).await
    }

    /// An output that is ready now, without waiting.
    pub(crate) fn try_join_next(&mut self) -> Option<(usize, F::Output)> {
        match self.poll_ready(None) {
            Poll::Ready(done) => done,
            Poll::Pending => None,
        }
    }

    /// Drops every future still running; returns their slots.
    pub(crate) fn abort_all(&mut self) -> Vec<usize> {
        let mut aborted = Vec::new();
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            if entry.future.is_some() {
                entry.future.set(None);
                self.free.push(slot);
                aborted.push(slot);
            }
        }
        self.len = 0;
        aborted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    /// A waker that counts its wakes.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn outputs_come_back_in_completion_order_with_their_slots() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut set = FutureSet::default();
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..3).map(|_| oneshot::channel::<u32>()).unzip();
        let slots: Vec<usize> = receivers.into_iter().map(|receiver| set.push(receiver)).collect();
        assert_eq!(slots, vec![0, 1, 2]);
        assert_eq!(set.len(), 3);
        assert!(set.poll_join_next(&mut cx).is_pending());
        let mut senders: Vec<Option<oneshot::Sender<u32>>> =
            senders.into_iter().map(Some).collect();
        senders[2].take().expect("sender").send(20).expect("sent");
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "the reply woke the owner");
        senders[0].take().expect("sender").send(0).expect("sent");
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "one wake until the owner polls");
        let first = set.poll_join_next(&mut cx);
        assert!(matches!(first, Poll::Ready(Some((2, Ok(20))))), "{first:?}");
        // The other woken future is still queued and comes next, without a new wake.
        assert!(matches!(set.try_join_next(), Some((0, Ok(0)))));
        assert!(set.try_join_next().is_none());
        assert_eq!(set.len(), 1);
        // Polled by its owner since: the next reply wakes it again.
        assert!(set.poll_join_next(&mut cx).is_pending());
        // Freed slots are reused.
        let (sender, receiver) = oneshot::channel::<u32>();
        assert_eq!(set.push(receiver), 0);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "pushing wakes nobody");
        assert!(set.poll_join_next(&mut cx).is_pending());
        sender.send(5).expect("sent");
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert!(matches!(set.try_join_next(), Some((0, Ok(5)))));
        // Aborting drops the rest: the sender sees its receiver gone.
        let aborted = set.abort_all();
        assert_eq!(aborted, vec![1]);
        assert!(set.is_empty());
        assert!(senders[1].take().expect("sender").send(1).is_err());
        assert!(matches!(set.poll_join_next(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn futures_that_finish_at_once_finish_on_the_first_poll() {
        let mut set = FutureSet::default();
        for value in 0..4u32 {
            set.push(std::future::ready(value));
        }
        let mut outputs: Vec<(usize, u32)> = std::iter::from_fn(|| set.try_join_next()).collect();
        outputs.sort_unstable();
        assert_eq!(outputs, vec![(0, 0), (1, 1), (2, 2), (3, 3)]);
        assert!(set.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn join_next_waits_for_a_wake() {
        let mut set = FutureSet::default();
        let (sender, receiver) = oneshot::channel::<u32>();
        set.push(receiver);
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = sender.send(7);
        });
        assert!(matches!(set.join_next().await, Some((0, Ok(7)))));
        assert!(set.join_next().await.is_none());
    }
}
