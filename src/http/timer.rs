//! hyper's timer ([`hyper::rt::Timer`]) on glommio, for `header_read_timeout`.
//!
//! hyper wants its sleeps `Send + Sync`, and glommio's timers are neither (they belong to
//! their executor). So a sleep is plain data (a deadline and a slot number) and the
//! wakers wait in a per-thread [`Wheel`], which one glommio task per executor
//! ([`drive`]) fires as deadlines pass. A sleep leaves the wheel when it is dropped, so
//! the many sleeps hyper starts and drops (one per request header) cost a map insert and
//! remove each, not a task. A sleep is only ever polled on the executor thread serving
//! its connection, which is the thread whose wheel holds it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Deadlines and the wakers waiting for them. Pure: time is passed in.
#[derive(Default)]
pub(crate) struct Wheel {
    waiting: BTreeMap<(Instant, u64), Waker>,
    next_slot: u64,
}

impl Wheel {
    /// Registers (or re-registers) a waker for a deadline; returns its slot.
    pub fn wait(&mut self, deadline: Instant, slot: Option<u64>, waker: &Waker) -> u64 {
        let slot = slot.unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot
        });
        match self.waiting.get_mut(&(deadline, slot)) {
            Some(w) if w.will_wake(waker) => {}
            Some(w) => w.clone_from(waker),
            None => {
                self.waiting.insert((deadline, slot), waker.clone());
            }
        }
        slot
    }

    pub fn cancel(&mut self, deadline: Instant, slot: u64) {
        self.waiting.remove(&(deadline, slot));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.keys().next().map(|(d, _)| *d)
    }

    /// Removes and returns the wakers whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Waker> {
        let mut due = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        due
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.len()
    }
}

thread_local! {
    static WHEEL: RefCell<Wheel> = RefCell::new(Wheel::default());
    /// Wakes [`drive`] when a sleep earlier than everything else arrives.
    static EARLIER: Rc<tokio::sync::Notify> = Rc::new(tokio::sync::Notify::new());
}

/// How long the driver sleeps when nothing waits (it is woken by the first sleep).
const IDLE: Duration = Duration::from_secs(3600);

/// Fires this thread's due sleeps; run once per executor that serves HTTP.
pub(crate) async fn drive() {
    let earlier = EARLIER.with(Rc::clone);
    loop {
        let next = WHEEL.with(|w| w.borrow().next_deadline());
        let wait = next.map_or(IDLE, |d| d.saturating_duration_since(Instant::now()));
        futures_lite::future::or(glommio::timer::sleep(wait), earlier.notified()).await;
        let due = WHEEL.with(|w| w.borrow_mut().expire(Instant::now()));
        for w in due {
            w.wake();
        }
    }
}

/// A sleep until a deadline, woken by [`drive`].
pub(crate) struct Sleep {
    deadline: Instant,
    slot: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            if let Some(slot) = this.slot.take() {
                let _ = WHEEL.try_with(|w| w.borrow_mut().cancel(this.deadline, slot));
            }
            return Poll::Ready(());
        }
        let first = WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            let new = this.slot.is_none();
            this.slot = Some(w.wait(this.deadline, this.slot, cx.waker()));
            new && w.next_deadline() == Some(this.deadline)
        });
        if first {
            EARLIER.with(|n| n.notify_one());
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            // During thread teardown the wheel may be gone already: nothing to remove.
            let _ = WHEEL.try_with(|w| w.borrow_mut().cancel(self.deadline, slot));
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

/// hyper's timer on this executor's wheel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GlommioTimer;

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep {
            deadline,
            slot: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn the_wheel_fires_due_deadlines_in_order_and_keeps_the_rest() {
        let t0 = Instant::now();
        let mut w = Wheel::default();
        let (c1, w1) = waker();
        let (c2, w2) = waker();
        let s1 = w.wait(t0 + Duration::from_secs(2), None, &w1);
        w.wait(t0 + Duration::from_secs(1), None, &w2);
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(1)));
        // Re-registering the same slot does not add a second entry.
        assert_eq!(w.wait(t0 + Duration::from_secs(2), Some(s1), &w1), s1);
        assert_eq!(w.len(), 2);
        for due in w.expire(t0 + Duration::from_millis(1500)) {
            due.wake();
        }
        assert_eq!(c2.0.load(Ordering::SeqCst), 1);
        assert_eq!(c1.0.load(Ordering::SeqCst), 0);
        assert_eq!(w.len(), 1);
        w.cancel(t0 + Duration::from_secs(2), s1);
        assert_eq!(w.len(), 0);
        assert!(w.expire(t0 + Duration::from_secs(9)).is_empty());
    }

    #[test]
    fn a_dropped_sleep_leaves_the_wheel() {
        let (_, wk) = waker();
        let mut cx = Context::from_waker(&wk);
        let before = WHEEL.with(|w| w.borrow().len());
        let mut s = Box::pin(Sleep {
            deadline: Instant::now() + Duration::from_secs(60),
            slot: None,
        });
        assert!(s.as_mut().poll(&mut cx).is_pending());
        assert!(s.as_mut().poll(&mut cx).is_pending());
        assert_eq!(WHEEL.with(|w| w.borrow().len()), before + 1);
        drop(s);
        assert_eq!(WHEEL.with(|w| w.borrow().len()), before);
        let mut past = Box::pin(Sleep {
            deadline: Instant::now(),
            slot: None,
        });
        assert!(past.as_mut().poll(&mut cx).is_ready());
    }
}
