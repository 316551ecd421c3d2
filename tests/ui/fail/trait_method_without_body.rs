use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

trait Payments {
    #[idempotent(key = key)]
    fn create(&self, conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError>;
}

fn main() {}
