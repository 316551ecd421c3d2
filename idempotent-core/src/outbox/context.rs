//! The idempotent call whose body is running on this thread, so that
//! [`super::push`], which gets only the connection, can derive its effect's
//! id from the call's record.
//!
//! The call procedure wraps the body's future with [`within`]: each poll of
//! the body makes its call the current one on the polling thread and puts
//! the previous one back after it (as task-locals do). That holds for the
//! blocking driver (the body runs inside the first poll), for an async body
//! that a multi-threaded runtime polls on several threads, and for nested
//! calls: the innermost call's body is the one being polled.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::ops::Range;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::NaiveDateTime;

/// One running call: its record's id, its clock's time and how many
/// effects its body pushed.
#[derive(Debug)]
pub(crate) struct Frame {
    /// `namespace`, `scope` and `key`, one after the other.
    text: String,
    namespace: Range<usize>,
    scope: Range<usize>,
    key: Range<usize>,
    now: NaiveDateTime,
    pushed: AtomicU32,
}

impl Frame {
    pub(crate) fn new(namespace: &str, scope: &str, key: &str, now: NaiveDateTime) -> Self {
        let mut text = String::with_capacity(namespace.len() + scope.len() + key.len());
        let mut part = |s: &str| {
            let start = text.len();
            text.push_str(s);
            start..text.len()
        };
        let namespace = part(namespace);
        let scope = part(scope);
        let key = part(key);
        Frame {
            text,
            namespace,
            scope,
            key,
            now,
            pushed: AtomicU32::new(0),
        }
    }

    fn part(&self, range: &Range<usize>) -> &str {
        self.text.get(range.clone()).unwrap_or_default()
    }

    /// The call's namespace.
    pub(crate) fn namespace(&self) -> &str {
        self.part(&self.namespace)
    }

    /// The call's scope.
    pub(crate) fn scope(&self) -> &str {
        self.part(&self.scope)
    }

    /// The call's key.
    pub(crate) fn key(&self) -> &str {
        self.part(&self.key)
    }

    /// The time the call's clock gave when the call began.
    pub(crate) fn now(&self) -> NaiveDateTime {
        self.now
    }

    /// The number of this call's next effect: 1, 2, ...
    pub(crate) fn next_effect(&self) -> u32 {
        self.pushed
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Frame>>> = const { RefCell::new(None) };
}

/// The call whose body this thread is running, if any.
pub(crate) fn current() -> Option<Arc<Frame>> {
    CURRENT
        .try_with(|current| current.borrow().clone())
        .ok()
        .flatten()
}

/// Makes a frame current until dropped, then puts back the one before.
struct Entered {
    previous: Option<Arc<Frame>>,
}

impl Entered {
    fn enter(frame: &Arc<Frame>) -> Self {
        let previous = CURRENT
            .try_with(|current| current.replace(Some(Arc::clone(frame))))
            .ok()
            .flatten();
        Entered { previous }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = CURRENT.try_with(|current| current.replace(previous));
    }
}

/// Awaits `future` with `frame` current on whichever thread polls it.
pub(crate) async fn within<F: Future>(frame: Frame, future: F) -> F::Output {
    let frame = Arc::new(frame);
    let mut future = pin!(future);
    poll_fn(|cx| {
        let _entered = Entered::enter(&frame);
        future.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::driver::block_on;

    fn at() -> NaiveDateTime {
        chrono::DateTime::from_timestamp(1_700_000_000, 0)
            .unwrap()
            .naive_utc()
    }

    #[test]
    fn the_innermost_call_is_current_and_the_outer_one_comes_back() {
        assert!(current().is_none());
        let seen = block_on(within(Frame::new("outer", "s", "k1", at()), async {
            let outer = current().unwrap();
            assert_eq!(outer.next_effect(), 1);
            let inner = within(Frame::new("inner", "", "k2", at()), async {
                let inner = current().unwrap();
                (inner.namespace().to_owned(), inner.next_effect())
            })
            .await;
            let back = current().unwrap();
            (
                inner,
                back.namespace().to_owned(),
                back.scope().to_owned(),
                back.key().to_owned(),
                back.next_effect(),
            )
        }));
        assert_eq!(
            seen,
            (
                ("inner".to_owned(), 1),
                "outer".to_owned(),
                "s".to_owned(),
                "k1".to_owned(),
                2
            )
        );
        assert!(current().is_none());
    }

    #[test]
    fn a_panicking_body_leaves_no_call_current() {
        let caught = std::panic::catch_unwind(|| {
            block_on(within(Frame::new("n", "", "k", at()), async {
                assert!(current().is_some());
                panic!("body");
            }))
        });
        assert!(caught.is_err());
        assert!(current().is_none());
    }
}
