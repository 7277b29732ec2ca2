//! openraft's async runtime on glommio.
//!
//! openraft is built with `single-threaded`: its tasks need not be `Send`, so they run as
//! glommio local tasks on the core that owns the Raft group. Timers come from glommio;
//! channels and the mutex are tokio's runtime-agnostic `sync` primitives (no tokio
//! runtime runs). `openraft_rt::testing::Suite` checks the whole contract (see tests).

use std::fmt;
use std::future::Future;
use std::ops::{Add, AddAssign, Deref, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use glommio::timer::Timer;
use openraft_rt::{
    mutex, oneshot, watch, AsyncRuntime, Mpsc, MpscReceiver, MpscSender, MpscWeakSender,
    OptionalSend, OptionalSync, SendError, TryRecvError,
};

/// The runtime type openraft is parameterized with.
pub struct GlommioRuntime {
    /// Only used by `block_on` (tests and tools); the agent runs Raft inside its own
    /// executors.
    io_memory: usize,
}

impl fmt::Debug for GlommioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlommioRuntime").finish()
    }
}

/// A monotonic instant (std's; glommio's timers take std instants too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GInstant(std::time::Instant);

impl Add<Duration> for GInstant {
    type Output = GInstant;
    fn add(self, d: Duration) -> GInstant {
        GInstant(self.0 + d)
    }
}
impl AddAssign<Duration> for GInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}
impl Sub<Duration> for GInstant {
    type Output = GInstant;
    fn sub(self, d: Duration) -> GInstant {
        GInstant(self.0 - d)
    }
}
impl Sub<GInstant> for GInstant {
    type Output = Duration;
    fn sub(self, other: GInstant) -> Duration {
        self.0.saturating_duration_since(other.0)
    }
}
impl SubAssign<Duration> for GInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d;
    }
}
impl openraft_rt::Instant for GInstant {
    fn now() -> GInstant {
        GInstant(std::time::Instant::now())
    }
}

/// A spawned task's handle. Dropping it does not cancel the task (the task is detached),
/// which is what openraft expects of a join handle.
pub struct JoinHandle<T>(glommio::task::JoinHandle<T>);

/// The task was cancelled (its executor shut down) before it finished.
#[derive(Debug)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task cancelled before it finished")
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, Cancelled>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.ok_or(Cancelled))
    }
}

/// A sleep: glommio's timer, with the `()` output openraft wants.
pub struct Sleep(Timer);

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// The future did not finish in time.
#[derive(Debug)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

/// A future with a deadline. The inner future is boxed so the combinator needs no pin
/// projection (one allocation per timeout; Raft uses few).
pub struct Timeout<F> {
    fut: Pin<Box<F>>,
    timer: Timer,
}

impl<R, F: Future<Output = R>> Future for Timeout<F> {
    type Output = Result<R, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn until(deadline: GInstant) -> Duration {
    deadline
        .0
        .saturating_duration_since(std::time::Instant::now())
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = Cancelled;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = GInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = rand010::rngs::ThreadRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        JoinHandle(glommio::spawn_local(future).detach())
    }

    fn sleep(duration: Duration) -> Sleep {
        Sleep(Timer::new(duration))
    }

    fn sleep_until(deadline: GInstant) -> Sleep {
        Sleep(Timer::new(until(deadline)))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Timeout<F> {
        Timeout {
            fut: Box::pin(future),
            timer: Timer::new(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: GInstant,
        future: F,
    ) -> Timeout<F> {
        Self::timeout(until(deadline), future)
    }

    fn is_panic(_: &Cancelled) -> bool {
        false
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand010::rng()
    }

    type Mpsc = TokioMpsc;
    type Watch = TokioWatch;
    type Oneshot = TokioOneshot;
    type Mutex<T: OptionalSend + 'static> = TokioMutex<T>;

    fn new(_threads: usize) -> GlommioRuntime {
        // One executor: openraft's tasks for a group all run on one core.
        let io_memory =
            crate::runtime::io_memory_per_executor(1).unwrap_or(crate::runtime::MIN_IO_MEMORY);
        GlommioRuntime { io_memory }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(self.io_memory)
            .make()
            .expect("a glommio executor (is RLIMIT_MEMLOCK at least 512 KiB?)");
        ex.run(future)
    }
}

// ---- channels and the mutex: tokio's runtime-agnostic sync primitives ----------------

pub struct TokioMpsc;
pub struct MpscTx<T>(tokio::sync::mpsc::Sender<T>);
pub struct MpscRx<T>(tokio::sync::mpsc::Receiver<T>);
pub struct MpscWeakTx<T>(tokio::sync::mpsc::WeakSender<T>);

impl<T> Clone for MpscTx<T> {
    fn clone(&self) -> Self {
        MpscTx(self.0.clone())
    }
}
impl<T> Clone for MpscWeakTx<T> {
    fn clone(&self) -> Self {
        MpscWeakTx(self.0.clone())
    }
}

impl Mpsc for TokioMpsc {
    type Sender<T: OptionalSend> = MpscTx<T>;
    type Receiver<T: OptionalSend> = MpscRx<T>;
    type WeakSender<T: OptionalSend> = MpscWeakTx<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (MpscTx<T>, MpscRx<T>) {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
        (MpscTx(tx), MpscRx(rx))
    }
}

impl<T: OptionalSend> MpscSender<TokioMpsc, T> for MpscTx<T> {
    async fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.0.send(msg).await.map_err(|e| SendError(e.0))
    }

    fn downgrade(&self) -> MpscWeakTx<T> {
        MpscWeakTx(self.0.downgrade())
    }
}

impl<T> MpscReceiver<T> for MpscRx<T> {
    async fn recv(&mut self) -> Option<T> {
        self.0.recv().await
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|e| match e {
            tokio::sync::mpsc::error::TryRecvError::Empty => TryRecvError::Empty,
            tokio::sync::mpsc::error::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }
}

impl<T: OptionalSend> MpscWeakSender<TokioMpsc, T> for MpscWeakTx<T> {
    fn upgrade(&self) -> Option<MpscTx<T>> {
        self.0.upgrade().map(MpscTx)
    }
}

pub struct TokioOneshot;
pub struct OneshotTx<T>(tokio::sync::oneshot::Sender<T>);

impl oneshot::Oneshot for TokioOneshot {
    type Sender<T: OptionalSend> = OneshotTx<T>;
    type Receiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type ReceiverError = tokio::sync::oneshot::error::RecvError;

    fn channel<T: OptionalSend>() -> (OneshotTx<T>, tokio::sync::oneshot::Receiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (OneshotTx(tx), rx)
    }
}

impl<T: OptionalSend> oneshot::OneshotSender<T> for OneshotTx<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

pub struct TokioWatch;
pub struct WatchTx<T>(tokio::sync::watch::Sender<T>);
pub struct WatchRx<T>(tokio::sync::watch::Receiver<T>);
pub struct WatchRef<'a, T>(tokio::sync::watch::Ref<'a, T>);

impl<T> Clone for WatchTx<T> {
    fn clone(&self) -> Self {
        WatchTx(self.0.clone())
    }
}
impl<T> Clone for WatchRx<T> {
    fn clone(&self) -> Self {
        WatchRx(self.0.clone())
    }
}
impl<T> Deref for WatchRef<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl watch::Watch for TokioWatch {
    type Sender<T: OptionalSend + OptionalSync> = WatchTx<T>;
    type Receiver<T: OptionalSend + OptionalSync> = WatchRx<T>;
    type Ref<'a, T: OptionalSend + 'a> = WatchRef<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (WatchTx<T>, WatchRx<T>) {
        let (tx, rx) = tokio::sync::watch::channel(init);
        (WatchTx(tx), WatchRx(rx))
    }
}

impl<T: OptionalSend + OptionalSync> watch::WatchSender<TokioWatch, T> for WatchTx<T> {
    fn send(&self, value: T) -> Result<(), watch::SendError<T>> {
        self.0.send(value).map_err(|e| watch::SendError(e.0))
    }

    fn send_if_modified<F: FnOnce(&mut T) -> bool>(&self, modify: F) -> bool {
        self.0.send_if_modified(modify)
    }

    fn borrow_watched(&self) -> WatchRef<'_, T> {
        WatchRef(self.0.borrow())
    }

    fn subscribe(&self) -> WatchRx<T> {
        WatchRx(self.0.subscribe())
    }
}

impl<T: OptionalSend + OptionalSync> watch::WatchReceiver<TokioWatch, T> for WatchRx<T> {
    async fn changed(&mut self) -> Result<(), watch::RecvError> {
        self.0.changed().await.map_err(|_| watch::RecvError(()))
    }

    fn borrow_watched(&self) -> WatchRef<'_, T> {
        WatchRef(self.0.borrow())
    }

    fn borrow_and_update(&mut self) -> WatchRef<'_, T> {
        WatchRef(self.0.borrow_and_update())
    }
}

pub struct TokioMutex<T>(tokio::sync::Mutex<T>);

impl<T: OptionalSend + 'static> mutex::Mutex<T> for TokioMutex<T> {
    type Guard<'a> = tokio::sync::MutexGuard<'a, T>;

    fn new(value: T) -> Self {
        TokioMutex(tokio::sync::Mutex::new(value))
    }

    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> + OptionalSend {
        self.0.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::GlommioRuntime;

    #[test]
    fn the_glommio_runtime_passes_openraft_runtime_suite() {
        openraft_rt::testing::Suite::<GlommioRuntime>::test_all();
    }
}
