//! Round trips, counted on the wire: a TCP proxy in front of the PostgreSQL
//! server counts how often the client speaks after having heard from the
//! server. Statements sent together (pipelined) before any answer came
//! back are one round trip; a statement sent after waiting for the
//! previous one's answer is another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use diesel::Connection;
use diesel_async::AsyncConnection;
use diesel_idempotent::{Call, ManualClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{AppError, Backend, DatabaseUrl, Postgres};

/// How long the proxy holds each answer of the server before passing it
/// on: statements a client writes together, before reading, land within
/// microseconds of each other, far inside this window, so they are never
/// mistaken for an answer's consequence. (A client thread preempted for
/// longer between two such writes would count one round trip too many:
/// each path is measured [`ATTEMPTS`] times and the fewest counts.)
const ANSWER_DELAY: Duration = Duration::from_millis(50);

/// How often each path is measured.
const ATTEMPTS: usize = 3;

/// A proxy between one test and the PostgreSQL server.
pub struct TurnCounter {
    url: String,
    turns: Arc<AtomicUsize>,
}

impl TurnCounter {
    /// Listens on a free loopback port; connections go to `url`'s server.
    pub async fn start(url: &str) -> TurnCounter {
        let (before, server, after) = split_authority(url);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let proxied = format!(
            "{before}{}{after}",
            listener.local_addr().expect("its address")
        );
        let turns = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&turns);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&server).await.expect("the server");
                tokio::spawn(relay(client, server, Arc::clone(&counted)));
            }
        });
        TurnCounter {
            url: proxied,
            turns,
        }
    }

    /// The database URL through the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The round trips clients began since the last call.
    pub fn take(&self) -> usize {
        self.turns.swap(0, Ordering::SeqCst)
    }
}

/// `(before, host:port, after)` of a `postgres://user@host:port/db` URL.
fn split_authority(url: &str) -> (&str, String, &str) {
    let start = url
        .find('@')
        .map_or(url.find("//").expect("a URL") + 2, |at| at + 1);
    let end = url[start..]
        .find('/')
        .map_or(url.len(), |slash| start + slash);
    (&url[..start], url[start..end].to_owned(), &url[end..])
}

/// Copies both ways; a client write after the server's answer reached the
/// client is a new round trip.
async fn relay(client: TcpStream, server: TcpStream, turns: Arc<AtomicUsize>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Whether the client has heard from the server since it last spoke.
    let heard = Arc::new(AtomicBool::new(true));
    let answered = Arc::clone(&heard);
    let upstream = async move {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            if heard.swap(false, Ordering::SeqCst) {
                turns.fetch_add(1, Ordering::SeqCst);
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            tokio::time::sleep(ANSWER_DELAY).await;
            answered.store(true, Ordering::SeqCst);
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(upstream, downstream);
}

/// The key's call (its body sends nothing), under `abandon_after` when
/// given.
fn call<'a>(clock: &'a ManualClock, key: &'a str, after: Option<Duration>) -> Call<'a> {
    let call = Call::new("tests.round_trips", key)
        .clock(clock)
        .request(&1_i64);
    match after {
        Some(after) => call.abandon_after(after),
        None => call,
    }
}

/// Round trips of a first call and of a replay, blocking and async, on
/// PostgreSQL, each on a connection whose statements are already prepared:
/// the async driver sends the `BEGIN` (with `abandon_after`'s `SET LOCAL`)
/// and the claim in one round trip, one fewer than the blocking driver.
pub async fn postgres_begin_travels_with_the_claim() {
    let db = Postgres::fresh();
    let proxy = TurnCounter::start(&db.url()).await;
    let clock = Arc::new(super::clock());

    // [first call, replay]: Diesel's blocking connection on its own thread.
    let blocking_turns = {
        let (url, turns, clock) = (
            proxy.url().to_owned(),
            Arc::clone(&proxy.turns),
            Arc::clone(&clock),
        );
        tokio::task::spawn_blocking(move || {
            let mut conn =
                diesel::PgConnection::establish(&url).expect("a connection through the proxy");
            let mut measure = |key: &str| {
                turns.swap(0, Ordering::SeqCst);
                call(&clock, key, None)
                    .run(&mut conn, |_| -> Result<i64, AppError> { Ok(1) })
                    .expect("a blocking call");
                turns.swap(0, Ordering::SeqCst)
            };
            // Every statement prepared and cached, as after a connection's
            // first call.
            measure("blocking-warm-up");
            let mut fewest = [usize::MAX; 2];
            for attempt in 0..ATTEMPTS {
                let key = format!("blocking-{attempt}");
                fewest[0] = fewest[0].min(measure(&key));
                fewest[1] = fewest[1].min(measure(&key));
            }
            fewest
        })
        .await
        .expect("the blocking calls")
    };

    // [first call, replay, first call with abandon_after, its replay].
    let mut nonblocking = diesel_async::AsyncPgConnection::establish(proxy.url())
        .await
        .expect("a connection through the proxy");
    let mut measure = async |key: &str, after: Option<Duration>| {
        proxy.take();
        call(&clock, key, after)
            .run_async(
                &mut nonblocking,
                async |_: &mut diesel_async::AsyncPgConnection| -> Result<i64, AppError> { Ok(1) },
            )
            .await
            .expect("an async call");
        proxy.take()
    };
    measure("warm-up", None).await;
    let mut async_turns = [usize::MAX; 4];
    for attempt in 0..ATTEMPTS {
        for (i, after) in [None, Some(Duration::from_secs(30))]
            .into_iter()
            .enumerate()
        {
            let key = format!("async-{i}-{attempt}");
            async_turns[2 * i] = async_turns[2 * i].min(measure(&key, after).await);
            async_turns[2 * i + 1] = async_turns[2 * i + 1].min(measure(&key, after).await);
        }
    }

    println!(
        "[postgres] round trips [first call, replay, first call with abandon_after, its replay]: \
         async {async_turns:?}; [first call, replay]: blocking {blocking_turns:?}"
    );
    // Blocking: BEGIN | claim | result | COMMIT (the body sends nothing),
    // and BEGIN | claim | ROLLBACK.
    assert_eq!(blocking_turns, [4, 3], "blocking round trips");
    // Async: the BEGIN (with abandon_after's SET LOCAL) goes with the claim.
    assert_eq!(async_turns, [3, 2, 3, 2], "async round trips");
}
