//! Methods, generic connections, every option, `Outcome`, `?` and early return.
use diesel::prelude::*;
use diesel_idempotent::{IdempotentConnection, ManualClock, Outcome, idempotent};

#[derive(Debug)]
pub enum AppError {
    Idempotency(diesel_idempotent::Error),
    Db(diesel::result::Error),
}

impl From<diesel_idempotent::Error> for AppError {
    fn from(e: diesel_idempotent::Error) -> Self {
        AppError::Idempotency(e)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        AppError::Db(e)
    }
}

pub struct Request {
    pub idempotency_key: String,
    pub amount: u32,
}

impl serde::Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.amount)
    }
}

pub struct Service {
    pub clock: ManualClock,
}

impl Service {
    #[idempotent(conn = db, key = req.idempotency_key.as_str(), scope = tenant, clock = self.clock, name = "svc.charge", ttl = "15m")]
    pub fn charge(&self, db: &mut SqliteConnection, tenant: u64, req: Request) -> Result<Outcome<u32>, AppError> {
        let _ = db;
        if req.amount == 0 {
            return Ok(0.into());
        }
        Ok(req.amount.into())
    }

    #[idempotent(conn = db, key = key, skip(verbose))]
    pub(crate) fn generic<C: IdempotentConnection>(&mut self, db: &mut C, key: String, verbose: bool) -> Result<Vec<String>, AppError>
    where
        C: Send,
    {
        let _ = (db, verbose);
        Ok(vec![key.clone()])
    }
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel_idempotent::migrate(&mut conn).unwrap();
    let mut svc = Service { clock: ManualClock::at_unix_seconds(1_700_000_000) };
    let req = || Request { idempotency_key: "k-1".to_owned(), amount: 5 };
    assert!(!svc.charge(&mut conn, 7, req()).unwrap().is_replayed());
    assert!(svc.charge(&mut conn, 7, req()).unwrap().is_replayed());
    assert_eq!(svc.generic(&mut conn, "g".to_owned(), true).unwrap(), ["g"]);
}
