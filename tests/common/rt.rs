//! What a conformance test needs besides the connection, in its two
//! flavours: [`blocking`] (threads, `std` channels, Diesel's blocking
//! connections) and [`nonblocking`] (tokio tasks and channels,
//! diesel-async connections). The two modules have the same names and
//! shapes, so a test written against `nonblocking` as async code reads the
//! same with `.await` and `async` removed (`#[dual::blocking]`).
//!
//! A deferred piece of work is a closure: `spawn(move || async move { .. })`
//! and `catch_panic(|| async { .. })` are, in the blocking copy,
//! `spawn(move || { .. })` and `catch_panic(|| { .. })`.

use std::time::Duration;

/// How long a test waits for a signal from another thread or task before
/// failing: a generous bound that only a call blocked for good reaches.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Threads and Diesel's blocking connections.
pub mod blocking {
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::mpsc;
    use std::time::Duration;

    use diesel::connection::{
        AnsiTransactionManager, Connection, InstrumentationEvent, TransactionManager,
    };

    pub use super::DEADLINE;
    pub use std::sync::Barrier;

    use super::super::{AppError, Isolation, TestConn};

    /// Whether this is the async flavour.
    pub const ASYNC: bool = false;

    /// A thread's handle.
    pub type Task<T> = std::thread::JoinHandle<T>;

    /// The transaction depth of `conn` (0 outside a transaction).
    pub fn depth<C: Connection<TransactionManager = AnsiTransactionManager>>(conn: &mut C) -> u32 {
        AnsiTransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth()
            .expect("a usable transaction manager")
            .map_or(0, std::num::NonZeroU32::get)
    }

    /// Pauses this thread (only for polling a condition another session
    /// must reach).
    pub fn sleep(pause: Duration) {
        std::thread::sleep(pause);
    }

    /// Runs `f` on a new thread.
    pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Task<T> {
        std::thread::spawn(f)
    }

    /// Waits for a thread; its panic is this thread's.
    pub fn join<T>(task: Task<T>) -> T {
        task.join()
            .unwrap_or_else(|panic| panic::resume_unwind(panic))
    }

    /// Runs `f`, catching a panic.
    pub fn catch_panic<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
        panic::catch_unwind(AssertUnwindSafe(f))
    }

    /// The sending half of [`channel`].
    pub type Sender<T> = mpsc::Sender<T>;

    /// The receiving half of [`channel`].
    pub struct Receiver<T>(mpsc::Receiver<T>);

    impl<T> Receiver<T> {
        /// The next message; `None` once every sender is gone.
        pub fn recv(&self) -> Option<T> {
            self.0.recv().ok()
        }

        /// The next message within `limit`.
        pub fn recv_timeout(&self, limit: Duration) -> Option<T> {
            self.0.recv_timeout(limit).ok()
        }
    }

    /// A channel between threads.
    pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let (tx, rx) = mpsc::channel();
        (tx, Receiver(rx))
    }

    /// Runs `f` in a transaction: committed on `Ok`, rolled back on `Err`.
    pub fn transaction<C: Connection, R, E: From<diesel::result::Error>>(
        conn: &mut C,
        f: impl FnOnce(&mut C) -> Result<R, E>,
    ) -> Result<R, E> {
        conn.transaction(f)
    }

    /// Runs `f` in a transaction at `level`.
    pub fn transaction_at<C: TestConn, R>(
        conn: &mut C,
        level: Isolation,
        f: impl FnOnce(&mut C) -> Result<R, AppError>,
    ) -> Result<R, AppError> {
        conn.transaction_at(level, f)
    }

    /// The statements `conn` sends while `f` runs.
    pub fn statements<C: Connection, R>(
        conn: &mut C,
        f: impl FnOnce(&mut C) -> R,
    ) -> (Vec<String>, R) {
        let log = super::Log::default();
        let sink = log.clone();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| sink.record(&event));
        let result = f(conn);
        conn.set_instrumentation(diesel::connection::get_default_instrumentation());
        (log.take(), result)
    }
}

/// tokio tasks and diesel-async connections.
#[cfg(feature = "async")]
pub mod nonblocking {
    use std::future::Future;
    use std::panic::{self, AssertUnwindSafe};
    use std::pin::pin;
    use std::task::Poll;
    use std::time::Duration;

    use diesel::connection::InstrumentationEvent;
    use diesel_async::{AsyncConnection, TransactionManager};
    use tokio::sync::{Mutex, mpsc};

    pub use super::DEADLINE;
    pub use tokio::sync::Barrier;

    use super::super::async_backends::AsyncTestConn;
    use super::super::{AppError, Isolation};

    /// Whether this is the async flavour.
    pub const ASYNC: bool = true;

    /// A task's handle.
    pub type Task<T> = tokio::task::JoinHandle<T>;

    /// The transaction depth of `conn` (0 outside a transaction).
    pub fn depth<C: AsyncConnection>(conn: &mut C) -> u32 {
        C::TransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth()
            .expect("a usable transaction manager")
            .map_or(0, std::num::NonZeroU32::get)
    }

    /// Pauses this task (only for polling a condition another session
    /// must reach).
    pub async fn sleep(pause: Duration) {
        tokio::time::sleep(pause).await;
    }

    /// Runs the future `f` makes as a new task.
    pub fn spawn<T, F>(f: impl FnOnce() -> F) -> Task<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        tokio::spawn(f())
    }

    /// Waits for a task; its panic is this task's.
    pub async fn join<T>(task: Task<T>) -> T {
        match tokio::time::timeout(super::DEADLINE * 4, task).await {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => panic::resume_unwind(error.into_panic()),
            Err(_) => panic!("a task still runs after {:?}", super::DEADLINE * 4),
        }
    }

    /// Runs the future `f` makes, catching a panic while it is polled.
    pub async fn catch_panic<T, F: Future<Output = T>>(
        f: impl FnOnce() -> F,
    ) -> std::thread::Result<T> {
        let mut future = pin!(f());
        std::future::poll_fn(|cx| {
            match panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
                Err(panic) => Poll::Ready(Err(panic)),
            }
        })
        .await
    }

    /// The sending half of [`channel`].
    pub type Sender<T> = mpsc::UnboundedSender<T>;

    /// The receiving half of [`channel`].
    pub struct Receiver<T>(Mutex<mpsc::UnboundedReceiver<T>>);

    impl<T> Receiver<T> {
        /// The next message; `None` once every sender is gone.
        pub async fn recv(&self) -> Option<T> {
            self.0.lock().await.recv().await
        }

        /// The next message within `limit`.
        pub async fn recv_timeout(&self, limit: Duration) -> Option<T> {
            tokio::time::timeout(limit, self.recv())
                .await
                .ok()
                .flatten()
        }
    }

    /// A channel between tasks.
    pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Receiver(Mutex::new(rx)))
    }

    /// Runs `f` in a transaction: committed on `Ok`, rolled back on `Err`
    /// (diesel-async's own `transaction` wants a boxed `Send` closure).
    pub async fn transaction<C: AsyncConnection, R, E: From<diesel::result::Error>>(
        conn: &mut C,
        f: impl AsyncFnOnce(&mut C) -> Result<R, E>,
    ) -> Result<R, E> {
        C::TransactionManager::begin_transaction(conn).await?;
        match f(conn).await {
            Ok(value) => {
                C::TransactionManager::commit_transaction(conn).await?;
                Ok(value)
            }
            Err(error) => {
                C::TransactionManager::rollback_transaction(conn).await?;
                Err(error)
            }
        }
    }

    /// Runs `f` in a transaction at `level` (the session's level from now
    /// on, which the library reads as the blocking suite sets it).
    pub async fn transaction_at<C: AsyncTestConn, R>(
        conn: &mut C,
        level: Isolation,
        f: impl AsyncFnOnce(&mut C) -> Result<R, AppError>,
    ) -> Result<R, AppError> {
        conn.use_isolation(level).await?;
        transaction(conn, f).await
    }

    /// The statements `conn` sends while `f` runs.
    pub async fn statements<C: AsyncConnection, R>(
        conn: &mut C,
        f: impl AsyncFnOnce(&mut C) -> R,
    ) -> (Vec<String>, R) {
        let log = super::Log::default();
        let sink = log.clone();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| sink.record(&event));
        let result = f(conn).await;
        conn.set_instrumentation(diesel::connection::get_default_instrumentation());
        (log.take(), result)
    }
}

/// The statements a connection started, as its instrumentation saw them.
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Log {
    fn record(&self, event: &diesel::connection::InstrumentationEvent<'_>) {
        if let diesel::connection::InstrumentationEvent::StartQuery { query, .. } = event {
            self.0.lock().unwrap().push(query.to_string());
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}
