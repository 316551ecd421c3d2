//! An HTTP answer stored and replayed whole: status and body.

use ::axum::http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::Problem;
use crate::pattern::key::Response;

/// The answer of an idempotent HTTP handler: a status and a JSON body,
/// stored together under the key, so that a replay answers with the same
/// status and the same bytes as the first answer (with
/// `Idempotent-Replayed: true`). The handler says once what the response
/// is; the first answer and its replays cannot drift.
///
/// - [`Reply::created`], [`Reply::ok`], [`Reply::new`]: a value; the
///   body's database effects are committed with the record.
/// - [`Reply::terminal`]: a terminal error (a declined card): the problem
///   and its status are stored and replayed, while everything the body did
///   in the database is rolled back (the body runs in a savepoint: two
///   statements more per first call). A retry gets the same answer and
///   never runs the body again.
///
/// Any error the handler returns as `Err` instead is transient: nothing is
/// stored and a retry with the same key runs again.
///
/// Return `Result<Reply<T>, E>` from a function under `#[idempotent]`;
/// `Reply<T>` is an axum response (feature `axum`).
#[derive(Debug, Clone)]
pub struct Reply<T> {
    status: StatusCode,
    answer: Answer<T>,
    /// The stored body of a replay, served byte for byte.
    stored: Option<Box<RawValue>>,
}

#[derive(Debug, Clone)]
enum Answer<T> {
    Value(T),
    Terminal(Problem),
}

impl<T> Reply<T> {
    /// `body` with `status`.
    pub fn new(status: StatusCode, body: T) -> Self {
        Reply {
            status,
            answer: Answer::Value(body),
            stored: None,
        }
    }

    /// `200 OK` with `body`.
    pub fn ok(body: T) -> Self {
        Reply::new(StatusCode::OK, body)
    }

    /// `201 Created` with `body`.
    pub fn created(body: T) -> Self {
        Reply::new(StatusCode::CREATED, body)
    }

    /// A terminal error, answered as `problem` with its status, stored and
    /// replayed; the body's database effects roll back. Give it a 4xx or
    /// 5xx status: whatever the status, the effects roll back.
    pub fn terminal(problem: Problem) -> Self {
        Reply {
            status: problem.status_code(),
            answer: Answer::Terminal(problem),
            stored: None,
        }
    }

    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The value, unless this is a terminal error.
    pub fn value(&self) -> Option<&T> {
        match &self.answer {
            Answer::Value(value) => Some(value),
            Answer::Terminal(_) => None,
        }
    }

    /// The problem of a terminal error.
    pub fn problem(&self) -> Option<&Problem> {
        match &self.answer {
            Answer::Value(_) => None,
            Answer::Terminal(problem) => Some(problem),
        }
    }

    /// Whether this is a terminal error.
    pub fn is_terminal(&self) -> bool {
        matches!(self.answer, Answer::Terminal(_))
    }

    /// Whether this answer was stored by an earlier request with the same
    /// key, and the handler's body did not run this time.
    pub fn is_replayed(&self) -> bool {
        self.stored.is_some()
    }

    /// The JSON body: the stored bytes on a replay.
    pub(crate) fn body_json(&self) -> Result<String, serde_json::Error>
    where
        T: Serialize,
    {
        match (&self.stored, &self.answer) {
            (Some(stored), _) => Ok(stored.get().to_owned()),
            (None, Answer::Value(value)) => serde_json::to_string(value),
            (None, Answer::Terminal(problem)) => serde_json::to_string(problem),
        }
    }
}

/// How a [`Reply`] is stored.
#[derive(Serialize)]
struct StoredRef<'a, T> {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    terminal: Option<&'a Problem>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    status: u16,
    /// Present whenever the member is, `null` included (a body of `()` or
    /// `None`): a plain `Option` would read `"body":null` as no body.
    #[serde(default, deserialize_with = "present")]
    body: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "present")]
    terminal: Option<Box<RawValue>>,
}

/// A member that is present, whatever its JSON (`null` too).
fn present<'de, D>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <Box<RawValue> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

impl<T: Serialize + DeserializeOwned> Response for Reply<T> {
    const MAY_BE_TERMINAL: bool = true;

    fn to_stored_json(&self) -> Result<String, serde_json::Error> {
        let (body, terminal) = match &self.answer {
            Answer::Value(value) => (Some(value), None),
            Answer::Terminal(problem) => (None, Some(problem)),
        };
        serde_json::to_string(&StoredRef {
            status: self.status.as_u16(),
            body,
            terminal,
        })
    }

    fn from_stored_json(json: &str) -> Result<Self, serde_json::Error> {
        use serde::de::Error as _;
        let stored: Stored = serde_json::from_str(json)?;
        let status = StatusCode::from_u16(stored.status).map_err(serde_json::Error::custom)?;
        let (answer, raw) = match (stored.body, stored.terminal) {
            (Some(body), None) => (Answer::Value(serde_json::from_str(body.get())?), body),
            (None, Some(problem)) => (
                Answer::Terminal(serde_json::from_str(problem.get())?),
                problem,
            ),
            _ => {
                return Err(serde_json::Error::custom(
                    "a stored reply holds either `body` or `terminal`",
                ));
            }
        };
        Ok(Reply {
            status,
            answer,
            stored: Some(raw),
        })
    }

    fn is_terminal(&self) -> bool {
        Reply::is_terminal(self)
    }
}
