//! A payment processor over real HTTP, for the phased-call tests: an axum
//! server on 127.0.0.1 in a runtime of its own. `POST /charges` with an
//! `Idempotency-Key` header creates a charge, or answers the charge that
//! key created before without creating another, as Stripe does. It can be
//! told to fail the next requests (503) or to hold its next answer until
//! the test releases it, and it counts what it created.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::rt::DEADLINE;

/// The header the processor deduplicates by.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

#[derive(Debug, Serialize, Deserialize)]
struct ChargeRequest {
    amount: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChargeAnswer {
    id: String,
}

/// Why a charge request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the processor answered {status}: {message}")]
pub struct ProcessorError {
    /// The HTTP status (0 when no answer came).
    pub status: u16,
    /// The answer's body, or the transport error.
    pub message: String,
}

/// An answer held until the test releases it.
struct Held {
    entered: mpsc::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

#[derive(Default)]
struct Books {
    /// Charge id per idempotency key.
    charges: Mutex<HashMap<String, String>>,
    /// Every key received, in order (failed and repeated requests too).
    keys: Mutex<Vec<String>>,
    fail_next: AtomicUsize,
    hold_next: Mutex<Option<Held>>,
}

/// What the test does with a held answer: wait until the charge was made,
/// then let the answer go.
pub struct Hold {
    entered: mpsc::Receiver<()>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Hold {
    /// Returns once the held request made (or found) its charge.
    pub fn wait_entered(&self) {
        self.entered
            .recv_timeout(DEADLINE)
            .expect("the held charge request reached the processor");
    }

    /// Sends the held answer.
    pub fn release(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

/// The running processor; stopped when dropped.
pub struct Processor {
    addr: SocketAddr,
    books: Arc<Books>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn create_charge(
    State(books): State<Arc<Books>>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<ChargeRequest>,
) -> Response {
    let Some(key) = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
    else {
        return (
            StatusCode::BAD_REQUEST,
            "an Idempotency-Key header is required",
        )
            .into_response();
    };
    books.keys.lock().unwrap().push(key.clone());
    if books
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the processor is unavailable",
        )
            .into_response();
    }
    let id = {
        let mut charges = books.charges.lock().unwrap();
        let next = format!("ch_{}_{}", charges.len() + 1, request.amount);
        charges.entry(key).or_insert(next).clone()
    };
    let held = books.hold_next.lock().unwrap().take();
    if let Some(held) = held {
        let _ = held.entered.send(());
        let _ = held.release.await;
    }
    axum::Json(ChargeAnswer { id }).into_response()
}

impl Processor {
    /// Starts the processor on a free port of 127.0.0.1.
    pub fn start() -> Processor {
        let books = Arc::new(Books::default());
        let app = axum::Router::new()
            .route("/charges", post(create_charge))
            .with_state(Arc::clone(&books));
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the processor's runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("a free port");
                addr_tx
                    .send(listener.local_addr().expect("the bound address"))
                    .expect("the test waits for the address");
                tokio::select! {
                    served = axum::serve(listener, app) => served.expect("the processor serves"),
                    _ = stopped => {}
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(DEADLINE)
            .expect("the processor started");
        Processor {
            addr,
            books,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/charges", self.addr)
    }

    /// Charges `amount` with `key` as the idempotency key; the charge's id.
    pub fn charge(&self, key: &str, amount: i64) -> Result<String, ProcessorError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("an HTTP client");
        let answer = client
            .post(self.url())
            .header(IDEMPOTENCY_KEY, key)
            .json(&ChargeRequest { amount })
            .send()
            .map_err(transport)?;
        let status = answer.status();
        if !status.is_success() {
            return Err(ProcessorError {
                status: status.as_u16(),
                message: answer.text().unwrap_or_default(),
            });
        }
        Ok(answer.json::<ChargeAnswer>().map_err(transport)?.id)
    }

    /// [`Processor::charge`] from async code.
    pub async fn charge_async(&self, key: &str, amount: i64) -> Result<String, ProcessorError> {
        let client = reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("an HTTP client");
        let answer = client
            .post(self.url())
            .header(IDEMPOTENCY_KEY, key)
            .json(&ChargeRequest { amount })
            .send()
            .await
            .map_err(transport)?;
        let status = answer.status();
        if !status.is_success() {
            return Err(ProcessorError {
                status: status.as_u16(),
                message: answer.text().await.unwrap_or_default(),
            });
        }
        Ok(answer.json::<ChargeAnswer>().await.map_err(transport)?.id)
    }

    /// Fails the next `n` requests with 503, creating nothing.
    pub fn fail_next(&self, n: usize) {
        self.books.fail_next.store(n, Ordering::SeqCst);
    }

    /// Holds the answer of the next request that creates or finds a charge.
    pub fn hold_next(&self) -> Hold {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        *self.books.hold_next.lock().unwrap() = Some(Held {
            entered: entered_tx,
            release: release_rx,
        });
        Hold {
            entered,
            release: Some(release),
        }
    }

    /// How many charges it created.
    pub fn charges(&self) -> usize {
        self.books.charges.lock().unwrap().len()
    }

    /// The charge created for `key`, if any.
    pub fn charge_for(&self, key: &str) -> Option<String> {
        self.books.charges.lock().unwrap().get(key).cloned()
    }

    /// The idempotency keys of every request received, in order.
    pub fn keys_received(&self) -> Vec<String> {
        self.books.keys.lock().unwrap().clone()
    }
}

fn transport(error: reqwest::Error) -> ProcessorError {
    ProcessorError {
        status: error.status().map_or(0, |status| status.as_u16()),
        message: error.to_string(),
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
