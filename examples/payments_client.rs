//! The retrying consumer of `payments_server`: many payments at once, each
//! under one idempotency key that every retry reuses, some of the server's
//! answers lost on purpose, and a check at the end that the server holds
//! every payment exactly once.
//!
//! ```text
//! cargo run --example payments_client -- \
//!     --server http://127.0.0.1:PORT --payments 200 --concurrency 16 --drop-rate 0.2
//! cargo run --example payments_client -- \
//!     --server http://127.0.0.1:PORT --payments 40 --concurrency 8 --race-rate 0.5
//! ```
//!
//! `scripts/payments-pair.sh` runs it against `payments_server` on SQLite
//! or PostgreSQL, with the server failing some requests.
//!
//! `--payments N` logical payments are sent, `--concurrency C` at a time.
//! Each gets an `Idempotency-Key` (a UUID v4) once, before its first
//! attempt, and sends it again on every retry. Its body is unique to this
//! run (the recipient is `payer-<run id>-<i>@example.com`, with a random
//! run id), so the client recognises its own payments on a server that
//! holds others.
//!
//! What is retried, with exponential backoff and full jitter (a random
//! delay between zero and 100 ms, 200 ms, 400 ms, ... capped at 2 s), up
//! to 30 attempts a payment:
//!
//! - network errors: refused or reset connections, a request or response
//!   cut short, no answer within 30 s;
//! - 5xx answers (the server's `--fail-rate` makes some);
//! - 409, the key's first request still running: the next attempt waits at
//!   least the answer's `Retry-After` (whole seconds).
//!
//! Any other 4xx answer (400 for a missing key or a malformed body, 422 for
//! a key reused with another body) is never retried: the payment fails
//! with the problem's `title` and `detail`. A payment that runs out of
//! attempts fails with its last error.
//!
//! `--drop-rate F` discards that fraction of the 201 answers as if they had
//! been lost on the way and retries. The retry must be a replay: 201, the
//! header `Idempotent-Replayed: true` and a body byte-identical to the
//! discarded one. Anything else fails the payment (the server would have
//! made it twice, or answered differently).
//!
//! `--race-rate F` sends that fraction of the payments twice at once, as a
//! double click or an impatient proxy would: two senders with the same key
//! and body, each retrying as above. While the first request runs (the
//! server's `--processing-delay-ms` widens the window), the other gets 409
//! and waits, or is made to wait by the server and gets the replay; both
//! must end with the same payment.
//!
//! Whoever sent them, all the 201 answers a key gets must be the same
//! bytes, and at most one of them may be an original (no
//! `Idempotent-Replayed: true`).
//!
//! At the end the client reads `GET /payments`, keeps this run's payments,
//! and prints one line on stdout:
//!
//! ```text
//! requested=200 held=200 attempts=291 replays=47 conflicts=0 dropped=47 raced=0 duplicates=0 failed=0
//! ```
//!
//! `held` counts this run's payments on the server (a payment held twice
//! counts twice), `attempts` every request sent, `replays` every answer
//! with `Idempotent-Replayed: true`, `conflicts` every 409, `dropped` the
//! answers discarded by `--drop-rate`, `raced` the payments sent twice at
//! once, `duplicates` the payments held more than once and `failed` the
//! payments that got no answer the client could accept. The client also
//! checks that the `id` each payment was answered with is the one the
//! server holds.
//!
//! Exit codes:
//!
//! - 0: every payment is held exactly once and none failed;
//! - 1: a payment failed, is missing or is held twice, or the list of
//!   payments could not be read (then no summary line is printed); what
//!   went wrong is printed on stderr, in sentences;
//! - 2: bad arguments, or no answer from the server's `GET /healthz` at the
//!   start.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use clap::Parser;
use reqwest::{StatusCode, Url, header::HeaderMap};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Attempts a payment gets, the first one included.
const MAX_ATTEMPTS: usize = 30;
/// The backoff before the first retry; it doubles up to `MAX_DELAY`.
const MIN_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);
/// How long one request may take, from connecting to the last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many failed payments stderr lists one by one.
const LISTED: usize = 10;

/// Makes payments against `payments_server`, retrying them under their
/// idempotency keys, and checks that the server holds each exactly once.
#[derive(Debug, Parser)]
#[command(name = "payments_client")]
struct Args {
    /// The server's base URL (plain HTTP), e.g. http://127.0.0.1:3000
    #[arg(long, value_parser = parse_server)]
    server: Url,
    /// How many payments to make (at least 1)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    payments: u32,
    /// How many payments are in progress at once (at least 1)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// The fraction of 201 answers to discard as lost, from 0 up to (not
    /// including) 1
    #[arg(long, default_value_t = 0.0, value_parser = parse_drop_rate)]
    drop_rate: f64,
    /// The fraction of payments sent twice at once under their key (a
    /// double click), from 0 to 1
    #[arg(long, default_value_t = 0.0, value_parser = parse_race_rate)]
    race_rate: f64,
}

fn parse_server(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "the scheme is `{}`, but this client speaks plain http:// only (it is built without TLS)",
            url.scheme()
        ));
    }
    Ok(url)
}

fn parse_drop_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is outside 0 <= F < 1"))
    }
}

fn parse_race_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is outside 0 <= F <= 1"))
    }
}

/// The body of `POST /payments`.
#[derive(Debug, Serialize)]
struct NewPayment {
    amount_cents: i64,
    currency: &'static str,
    recipient: String,
}

/// One logical payment: its body and the key every attempt sends.
struct Payment {
    index: u32,
    key: String,
    body: NewPayment,
}

/// What `problem+json` answers say; both fields are optional in RFC 9457.
#[derive(Debug, Default, Deserialize)]
struct Problem {
    title: Option<String>,
    detail: Option<String>,
}

impl Problem {
    /// The problem's title and detail, or the start of a body that is not
    /// one.
    fn describe(body: &[u8]) -> String {
        match serde_json::from_slice::<Problem>(body) {
            Ok(Problem {
                title: Some(title),
                detail: Some(detail),
            }) => format!("{title}: {detail}"),
            Ok(
                Problem {
                    title: Some(text), ..
                }
                | Problem {
                    detail: Some(text), ..
                },
            ) => text,
            _ if body.is_empty() => "(empty body)".to_owned(),
            _ => format!("body {}", snippet(body)),
        }
    }
}

/// Counters shared by every payment of the run.
#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    replays: AtomicU64,
    conflicts: AtomicU64,
    dropped: AtomicU64,
    raced: AtomicU64,
}

/// Why one attempt did not end the payment with an accepted answer.
#[derive(Debug)]
enum AttemptError {
    /// No answer, or an answer cut short: retried.
    Network(reqwest::Error),
    /// A 5xx answer: retried.
    Server { status: StatusCode, problem: String },
    /// 409, the key's first request still running: retried after
    /// `Retry-After`.
    InFlight { retry_after: Option<Duration> },
    /// A 201 discarded by `--drop-rate`: retried, and must come back as a
    /// replay.
    Dropped,
    /// A 4xx answer other than 409: final.
    Rejected { status: StatusCode, problem: String },
    /// An answer that breaks the server's contract: final.
    Broken(String),
}

impl AttemptError {
    fn is_retryable(&self) -> bool {
        match self {
            AttemptError::Network(e) => !e.is_builder(),
            AttemptError::Server { .. } | AttemptError::InFlight { .. } | AttemptError::Dropped => {
                true
            }
            AttemptError::Rejected { .. } | AttemptError::Broken(_) => false,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Network(e) => {
                write!(f, "no answer: {e}")?;
                let mut source = e.source();
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
            AttemptError::Server { status, problem } => {
                write!(f, "the server answered {status}: {problem}")
            }
            AttemptError::InFlight { retry_after } => match retry_after {
                Some(after) => write!(
                    f,
                    "the server answered 409: the first request is still running (Retry-After: {} s)",
                    after.as_secs()
                ),
                None => write!(
                    f,
                    "the server answered 409 without a Retry-After: the first request is still running"
                ),
            },
            AttemptError::Dropped => {
                write!(f, "its 201 answer was discarded as lost (--drop-rate)")
            }
            AttemptError::Rejected { status, problem } => {
                write!(f, "the server rejected it with {status}: {problem}")
            }
            AttemptError::Broken(message) => f.write_str(message),
        }
    }
}

/// How a payment ended.
struct Made {
    index: u32,
    /// The server's `id` of the payment, from the accepted answer.
    result: Result<Value, String>,
}

/// What the run shares between its tasks.
struct Client {
    http: reqwest::Client,
    server: String,
    run_id: String,
    drop_rate: f64,
    race_rate: f64,
    tally: Tally,
}

impl Client {
    fn payment(&self, index: u32) -> Payment {
        Payment {
            index,
            key: uuid::Uuid::new_v4().to_string(),
            body: NewPayment {
                amount_cents: 100 + i64::from(index),
                currency: "BRL",
                recipient: format!("payer-{}-{index}@example.com", self.run_id),
            },
        }
    }

    /// The index of this run's payment to `recipient`, if it is one.
    fn own_index(&self, recipient: &str) -> Option<u32> {
        recipient
            .strip_prefix("payer-")?
            .strip_prefix(self.run_id.as_str())?
            .strip_prefix('-')?
            .strip_suffix("@example.com")?
            .parse()
            .ok()
    }

    /// Makes one payment: sends it until an answer is accepted, a final
    /// error comes, or the attempts run out; with `--duplicate-rate`, some
    /// payments are sent twice at once, and both must end with the same
    /// payment.
    async fn make(&self, payment: &Payment) -> Made {
        let key = KeyAnswers::default();
        let result = if self.race_rate > 0.0 && fastrand::f64() < self.race_rate {
            self.tally.raced.fetch_add(1, Ordering::Relaxed);
            match tokio::join!(self.send(payment, &key), self.send(payment, &key)) {
                (Ok(id), Ok(twin)) if id == twin => Ok(id),
                (Ok(id), Ok(twin)) => Err(format!(
                    "the two requests sent at once got different payments, ids {id} and {twin}"
                )),
                (Err(e), Ok(_)) | (Ok(_), Err(e)) => {
                    Err(format!("one of the two requests sent at once: {e}"))
                }
                (Err(e), Err(twin)) => Err(format!(
                    "both requests sent at once failed: {e}; and {twin}"
                )),
            }
        } else {
            self.send(payment, &key).await
        };
        Made {
            index: payment.index,
            result: result
                .map_err(|e| format!("payment {} (key {}): {e}", payment.index, payment.key)),
        }
    }

    /// Sends a payment, retrying, until an answer is accepted; returns the
    /// payment's `id`.
    async fn send(&self, payment: &Payment, key: &KeyAnswers) -> Result<Value, String> {
        // This sender's discarded 201 answer: its next answer must replay
        // it byte for byte.
        let lost = Mutex::new(None);
        let mut attempts = 0;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(MAX_DELAY)
            .with_factor(2.0)
            .with_max_times(MAX_ATTEMPTS - 1);
        let outcome = (|| {
            attempts += 1;
            self.attempt(payment, key, &lost)
        })
        .retry(backoff)
        .when(AttemptError::is_retryable)
        .adjust(|error, delay| {
            // Full jitter: anywhere between zero and the backoff's delay;
            // after a 409, never sooner than the server asked.
            let delay = delay?.mul_f64(fastrand::f64());
            match error {
                AttemptError::InFlight {
                    retry_after: Some(after),
                } => Some(delay.max(*after)),
                _ => Some(delay),
            }
        })
        .await;
        match outcome {
            Ok(id) => Ok(id),
            Err(e) if e.is_retryable() => Err(format!(
                "gave up after {attempts} attempts; the last one: {e}"
            )),
            Err(e) => Err(format!("attempt {attempts}: {e}")),
        }
    }

    /// One `POST /payments`; returns the payment's `id` when the answer is
    /// accepted.
    async fn attempt(
        &self,
        payment: &Payment,
        key: &KeyAnswers,
        lost: &Mutex<Option<Vec<u8>>>,
    ) -> Result<Value, AttemptError> {
        self.tally.attempts.fetch_add(1, Ordering::Relaxed);
        let response = self
            .http
            .post(format!("{}/payments", self.server))
            .header("Idempotency-Key", &payment.key)
            .json(&payment.body)
            .send()
            .await
            .map_err(AttemptError::Network)?;
        let status = response.status();
        let replayed = is_replay(response.headers());
        if replayed {
            self.tally.replays.fetch_add(1, Ordering::Relaxed);
        }
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(AttemptError::Network)?;
        match status {
            StatusCode::CREATED => self.accept(payment, key, lost, replayed, &body),
            StatusCode::CONFLICT => {
                self.tally.conflicts.fetch_add(1, Ordering::Relaxed);
                Err(AttemptError::InFlight { retry_after })
            }
            s if s.is_server_error() => Err(AttemptError::Server {
                status: s,
                problem: Problem::describe(&body),
            }),
            s if s.is_client_error() => Err(AttemptError::Rejected {
                status: s,
                problem: Problem::describe(&body),
            }),
            s => Err(AttemptError::Broken(format!(
                "the server answered {s} where 201 was expected: {}",
                Problem::describe(&body)
            ))),
        }
    }

    /// Checks a 201 answer, and discards it as lost when `--drop-rate`
    /// says so.
    fn accept(
        &self,
        payment: &Payment,
        key: &KeyAnswers,
        lost: &Mutex<Option<Vec<u8>>>,
        replayed: bool,
        body: &[u8],
    ) -> Result<Value, AttemptError> {
        let mut lost = lost.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(earlier) = lost.as_deref() {
            if !replayed {
                return Err(AttemptError::Broken(
                    "the retry after a lost 201 answered 201 without `Idempotent-Replayed: true`: \
                     the server made the payment again instead of replaying it"
                        .to_owned(),
                ));
            }
            if earlier != body {
                return Err(AttemptError::Broken(format!(
                    "the replay after a lost 201 differs from the lost answer: {} was lost, {} replayed",
                    snippet(earlier),
                    snippet(body)
                )));
            }
        }
        key.check(replayed, body).map_err(AttemptError::Broken)?;
        let id = check_payment(payment, body).map_err(AttemptError::Broken)?;
        if self.drop_rate > 0.0 && fastrand::f64() < self.drop_rate {
            self.tally.dropped.fetch_add(1, Ordering::Relaxed);
            lost.get_or_insert_with(|| body.to_vec());
            return Err(AttemptError::Dropped);
        }
        Ok(id)
    }
}

/// Every 201 answer one key got, whoever sent it and whether it was
/// discarded: they must all be the same bytes, and at most one may be the
/// original (not `Idempotent-Replayed`). Unlike the per-sender check
/// after a lost answer, this does not depend on the order in which the
/// answers of two concurrent senders arrive.
#[derive(Default)]
struct KeyAnswers {
    first: Mutex<Option<Vec<u8>>>,
    originals: AtomicUsize,
}

impl KeyAnswers {
    fn check(&self, replayed: bool, body: &[u8]) -> Result<(), String> {
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        match first.as_deref() {
            Some(earlier) if earlier != body => {
                return Err(format!(
                    "two 201 answers for the same key differ: {} and {}",
                    snippet(earlier),
                    snippet(body)
                ));
            }
            Some(_) => {}
            None => *first = Some(body.to_vec()),
        }
        if !replayed && self.originals.fetch_add(1, Ordering::Relaxed) > 0 {
            return Err(
                "the server answered 201 without `Idempotent-Replayed: true` twice for the same key: \
                 it made the payment twice"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// The `id` of the payment in a 201 body, after checking that it is the
/// payment sent.
fn check_payment(payment: &Payment, body: &[u8]) -> Result<Value, String> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the 201 body is not JSON ({e}): {}", snippet(body)))?;
    let sent = &payment.body;
    let same = json["recipient"] == sent.recipient.as_str()
        && json["amount_cents"] == sent.amount_cents
        && json["currency"] == sent.currency;
    match json.get("id") {
        Some(id) if same && !id.is_null() => Ok(id.clone()),
        _ => Err(format!(
            "the 201 body is not the payment sent ({} to {}): {}",
            sent.amount_cents,
            sent.recipient,
            snippet(body)
        )),
    }
}

fn is_replay(headers: &HeaderMap) -> bool {
    headers
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// `Retry-After` in whole seconds (the HTTP-date form is not used by the
/// server).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// The start of a body, for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("`{}...`", &text[..cut]),
        None => format!("`{text}`"),
    }
}

/// The run's result: its summary line and what went wrong.
struct Report {
    summary: String,
    problems: Vec<String>,
}

/// Makes the payments, `concurrency` at a time, and returns how each
/// ended, in order.
async fn make_all(client: &Arc<Client>, payments: u32, concurrency: u32) -> Vec<Made> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(payments) {
        let client = Arc::clone(client);
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut made = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Ok(index) = u32::try_from(index) else {
                    break;
                };
                if index >= payments {
                    break;
                }
                let payment = client.payment(index);
                made.push(client.make(&payment).await);
            }
            made
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(made) => all.extend(made),
            // A worker panicked: its payments are missing from `all` and
            // the check reports them.
            Err(e) => eprintln!("a worker task failed: {e}"),
        }
    }
    all.sort_by_key(|made| made.index);
    all
}

/// The ids the server holds for this run's payments, by payment index.
async fn held_payments(client: &Client) -> Result<BTreeMap<u32, Vec<Value>>, String> {
    let url = format!("{}/payments", client.server);
    let fail = |e: &dyn fmt::Display| format!("could not read the payments back (GET {url}): {e}");
    let response = client.http.get(&url).send().await.map_err(|e| fail(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| fail(&e))?;
    if status != StatusCode::OK {
        return Err(fail(&format!(
            "the server answered {status}: {}",
            Problem::describe(&body)
        )));
    }
    let list: Vec<Value> = serde_json::from_slice(&body)
        .map_err(|e| fail(&format!("the body is not a JSON array of payments: {e}")))?;
    let mut held: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    for payment in list {
        let Some(index) = payment["recipient"]
            .as_str()
            .and_then(|r| client.own_index(r))
        else {
            continue;
        };
        held.entry(index)
            .or_default()
            .push(payment.get("id").cloned().unwrap_or(Value::Null));
    }
    Ok(held)
}

/// What the payments' ends and the server's list say together.
struct Check {
    /// This run's payments on the server, a payment held twice counted
    /// twice.
    held: usize,
    /// Payments held more than once.
    duplicates: usize,
    /// Payments that got no answer the client could accept, or never
    /// finished.
    failed: usize,
    problems: Vec<String>,
}

/// Compares how each payment ended with what the server holds.
fn check(made: &[Made], held: &BTreeMap<u32, Vec<Value>>, requested: usize) -> Check {
    let mut problems = Vec::new();
    let unfinished = requested - made.len();
    if unfinished > 0 {
        problems.push(format!(
            "{unfinished} payments never finished (a worker task failed)."
        ));
    }
    let failures: Vec<String> = made
        .iter()
        .filter_map(|m| m.result.as_ref().err())
        .map(|failure| format!("{failure}."))
        .collect();
    let mut unheld = Vec::new();
    let mut duplicated = Vec::new();
    for m in made {
        match (held.get(&m.index).map(Vec::as_slice), &m.result) {
            (None, Ok(id)) => unheld.push(format!(
                "payment {} was answered 201 with id {id}, but the server does not hold it.",
                m.index
            )),
            (Some([stored]), Ok(id)) if stored != id => unheld.push(format!(
                "payment {} was answered 201 with id {id}, but the server holds it with id {stored}.",
                m.index
            )),
            (Some(ids), _) if ids.len() > 1 => {
                let ids: Vec<String> = ids.iter().map(Value::to_string).collect();
                duplicated.push(format!(
                    "payment {} is held {} times, with the ids {}.",
                    m.index,
                    ids.len(),
                    ids.join(", ")
                ));
            }
            _ => {}
        }
    }
    list(&mut problems, &failures, "failed payments");
    list(
        &mut problems,
        &unheld,
        "payments answered but not held as answered",
    );
    list(&mut problems, &duplicated, "payments held more than once");
    let held_count = held.values().map(Vec::len).sum();
    if held_count != requested {
        problems.push(format!(
            "{requested} payments were requested, but the server holds {held_count} of this run."
        ));
    }
    Check {
        held: held_count,
        duplicates: duplicated.len(),
        failed: failures.len() + unfinished,
        problems,
    }
}

/// Appends the first `LISTED` of `items` to `problems`, and how many more
/// there are.
fn list(problems: &mut Vec<String>, items: &[String], what: &str) {
    problems.extend(items.iter().take(LISTED).cloned());
    if items.len() > LISTED {
        problems.push(format!("... and {} more {what}.", items.len() - LISTED));
    }
}

async fn run(args: Args, http: reqwest::Client) -> Result<Report, String> {
    let client = Arc::new(Client {
        http,
        server: args.server.as_str().trim_end_matches('/').to_owned(),
        run_id: format!("{:08x}", fastrand::u32(..)),
        drop_rate: args.drop_rate,
        race_rate: args.race_rate,
        tally: Tally::default(),
    });

    let started = Instant::now();
    let made = make_all(&client, args.payments, args.concurrency).await;
    let elapsed = started.elapsed();
    let held = held_payments(&client).await?;

    let requested = args.payments as usize;
    let check = check(&made, &held, requested);

    let tally = &client.tally;
    let summary = format!(
        "requested={} held={} attempts={} replays={} conflicts={} dropped={} raced={} duplicates={} failed={}",
        args.payments,
        check.held,
        tally.attempts.load(Ordering::Relaxed),
        tally.replays.load(Ordering::Relaxed),
        tally.conflicts.load(Ordering::Relaxed),
        tally.dropped.load(Ordering::Relaxed),
        tally.raced.load(Ordering::Relaxed),
        check.duplicates,
        check.failed,
    );
    eprintln!(
        "{} payments, {} at a time, in {:.1} s (run id {}).",
        args.payments,
        args.concurrency.min(args.payments),
        elapsed.as_secs_f64(),
        client.run_id
    );
    Ok(Report {
        summary,
        problems: check.problems,
    })
}

/// `GET /healthz`, once: a server that does not answer is a usage error.
async fn check_reachable(http: &reqwest::Client, server: &Url) -> Result<(), String> {
    let url = format!("{}/healthz", server.as_str().trim_end_matches('/'));
    let answer = http.get(&url).timeout(CONNECT_TIMEOUT).send().await;
    match answer {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!(
            "the server at {server} is not healthy: GET {url} answered {}.",
            response.status()
        )),
        Err(e) => Err(format!(
            "cannot reach the server at {server}: {}.",
            AttemptError::Network(e)
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let http = match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            eprintln!("could not build the HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(message) = check_reachable(&http, &args.server).await {
        eprintln!("{message}");
        return ExitCode::from(2);
    }
    match run(args, http).await {
        Ok(report) => {
            println!("{}", report.summary);
            if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("Not every payment was made exactly once:");
                for problem in &report.problems {
                    eprintln!("  - {problem}");
                }
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
